"""Generate-time tripwires (evalkit.tripwires): non-finite values in the final latents and in the decoded pixels,
and a near-constant image, measured on the tensors before the PNG (where a NaN becomes 0).

The latents come from diffusers' `callback_on_step_end`, the least invasive hook every supported pipeline has: the
callback only keeps a reference to the step's latents (no computation per step); after the call, one reduction per
image counts the last step's non-finite values. A pipeline without the callback gets `latents: null` and the
record says why; the pixels are still counted.
"""

from __future__ import annotations

import inspect
from typing import Any

from evalkit import tripwires


class LatentsProbe:
    """Keeps the last denoising step's latents of a pipeline call."""

    def __init__(self, pipe: Any) -> None:
        self.last: Any = None
        self.reason: str | None = None
        try:
            params = inspect.signature(pipe.__call__).parameters
        except (TypeError, ValueError) as e:
            params, self.reason = {}, f"cannot read the pipeline's signature ({e})"
        inputs = getattr(pipe, "_callback_tensor_inputs", None) or []
        if self.reason is None and "callback_on_step_end" not in params:
            self.reason = f"{type(pipe).__name__} has no callback_on_step_end: final latents not checked"
        elif self.reason is None and "latents" not in inputs:
            self.reason = f"{type(pipe).__name__} does not pass latents to its step callback: final latents not checked"

    def kwargs(self) -> dict[str, Any]:
        if self.reason is not None:
            return {}
        return {"callback_on_step_end": self._callback, "callback_on_step_end_tensor_inputs": ["latents"]}

    def _callback(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self.last = callback_kwargs.get("latents")
        return callback_kwargs

    def take(self, n: int) -> list[int | None]:
        """Non-finite counts of the last call's final latents, per image (None each when not available)."""
        lat, self.last = self.last, None
        if lat is None or self.reason is not None:
            return [None] * n
        try:
            if lat.shape[0] != n:  # not one row per image: the whole count goes to every image of the call
                total = tripwires.count_nonfinite(lat)
                return [total] * n
            bad = (~lat.isfinite()).reshape(n, -1).sum(dim=1).tolist()
            return [int(x) for x in bad]
        except Exception:  # noqa: BLE001 - a tripwire must not kill the run
            return [None] * n


def image_checks(arr: Any, u8: Any, latents_nonfinite: int | None, *, prompt_id: str, seed: int,
                 file: str) -> dict[str, Any]:
    """The image entry's additions: `nonfinite` {latents, pixels} and `broken` [entry] (empty when healthy).

    Non-finite values are counted on the decoded float pixels `arr` (the PNG turns NaN into 0); the near-constant
    test reads `u8`, the 8-bit pixels the PNG is written from (exact per-channel histograms: ~13 ms at 1024²)."""
    pixels = tripwires.count_nonfinite(arr)
    results = [tripwires.nonfinite_result(latents_nonfinite, pixels), tripwires.constant(u8)]
    entry = tripwires.entry_from(results, prompt_id=prompt_id, seed=seed, file=file, when="generate")
    return {"nonfinite": {"latents": latents_nonfinite, "pixels": pixels}, "broken": [entry] if entry else []}


def record_section(probe: LatentsProbe, record: dict[str, Any], reference: bool) -> dict[str, Any]:
    """The generation record's `tripwires`: version, how latents were checked, the backend-level census tripwire."""
    nq = tripwires.not_quantized(record, reference) if "quantization" in record else None
    return {"version": tripwires.TRIPWIRES_VERSION,
            "latents": "callback_on_step_end (last step)" if probe.reason is None else probe.reason,
            "broken_backend": [nq] if nq else [], **tripwires.image_counts(record.get("images") or [])}
