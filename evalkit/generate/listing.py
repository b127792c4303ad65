"""What `evalkit backends` and `evalkit.list_backends` report: every backend and modifier, and whether it can run
for a model's family on a device (present, or a hypothetical GPU named by its compute capability). One function
for the command and the API, so that they cannot judge differently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.generate.options import BackendsOptions


def backend_listing(opts: BackendsOptions) -> dict[str, Any]:
    """{"device", "capability", "family" (its key), "backends": rows of evalkit.quantizers.registry.backend_rows}."""
    from evalkit.families.registry import default_family, family_of_pipeline_dir, family_of_spec, resolve_model
    from evalkit.quantizers.registry import backend_rows

    device, capability = probe_device(opts.device, opts.capability)
    family = default_family()
    if opts.model:
        family = family_of_spec(opts.model) or family_of_pipeline_dir(Path(resolve_model(opts.model, build=False).path))
    return {"device": device, "capability": capability, "family": family,
            "backends": backend_rows(device, capability, family)}


def probe_device(requested: str, capability: str | None = None) -> tuple[str, tuple[int, int] | None]:
    """(device, compute capability) to judge for: `capability` ("9.0") names a CUDA GPU that need not be here."""
    if capability is not None:  # a hypothetical GPU: nothing is probed
        major, _, minor = capability.partition(".")
        if requested == "cpu" or not (major.isdigit() and minor.isdigit()):
            raise EvalkitError(f"--capability {capability!r}: expected MAJOR.MINOR of a CUDA GPU, e.g. 9.0")
        return "cuda", (int(major), int(minor))
    from evalkit.device import device_capability

    return device_capability(requested, hint="; judge a GPU that is not here with --capability, e.g. --capability "
                                             "9.0 for an H200")
