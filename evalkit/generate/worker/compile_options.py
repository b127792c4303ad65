"""Settings of the `+compile` modifier: read from `--config`, validated, applied in the worker, recorded.

The options file takes a `[compile]` table and, per backend, a `[backends.<name>.compile]` table that overrides it:

    [compile]
    preset = "seed"            # or "regional" (the default); explicit keys below override the preset's
    mode = "max-autotune"      # torch.compile mode
    fullgraph = true
    dynamic = false            # omit to let torch decide
    component = "transformer"  # which pipeline component is compiled (default: the model family's denoiser)
    regional = false           # true: only the repeated blocks (diffusers' compile_repeated_blocks)
    coordinate_descent_tuning = true   # inductor tunes each kernel's launch config (slow to compile; torchao's advice)
    woq_int8pack = false       # inductor's rewrite of int8 weight-only matmuls into aten._weight_int8pack_mm on CUDA

    [backends.bnb-nf4.compile]
    fullgraph = false          # bnb's tensor subclasses graph-break

This module imports no torch at import time; `apply_compile` and `prepare_compile_cache` run in the worker.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from evalkit.errors import EvalkitError, suggest

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileSettings:
    """How `+compile` compiles: the arguments of torch.compile and what it is applied to."""

    preset: str
    mode: str = "default"
    fullgraph: bool = False
    dynamic: bool | None = None  # None: torch decides (recompiles once shapes vary)
    component: str | None = None  # None: the model family's denoiser (resolve_compile fills it in)
    regional: bool = True  # compile only the repeated blocks (diffusers 0.42 `compile_repeated_blocks`)
    # inductor's coordinate-descent tuning of every Triton kernel (in all directions), which torchao's
    # `recommended_inductor_config_setter` turns on; minutes of extra compile at full size, so off unless asked for
    coordinate_descent_tuning: bool = False
    # inductor (torch >= 2.9) rewrites `mm(x, w_int8.to(bf16)) * scale`, torchao's int8 weight-only matmul, into
    # aten._weight_int8pack_mm on CUDA as well as CPU. That kernel is built for a few rows (decoding); Flux at 1024²
    # multiplies 4,608 rows. Off by default on CUDA; see `woq_int8pack_guard` and benchmarks/woq_mm_probe.py.
    woq_int8pack: bool = False

    def torch_kwargs(self) -> dict[str, Any]:
        return {"mode": self.mode, "fullgraph": self.fullgraph, "dynamic": self.dynamic}

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


# Named starting points. "seed" is the seed study's torchao setting (whole transformer, max-autotune, one graph).
# Regional compilation compiles each repeated block once and reuses it, so cold compiles take a fraction of the
# whole-model time (a whole-model torchao compile at full size took many minutes on an H200:
# benchmarks/results/compile-probe-h200-2026-11-29.md).
PRESETS: Mapping[str, CompileSettings] = {
    "regional": CompileSettings(preset="regional", mode="default", fullgraph=False, regional=True),
    "whole": CompileSettings(preset="whole", mode="default", fullgraph=False, regional=False),
    # torchao's quantize_ ran its recommended inductor settings in the seed study: coordinate-descent tuning on.
    # woq_int8pack stays False: the seed study's torch did not yet apply that rewrite on CUDA (torch 2.9 does).
    "seed": CompileSettings(preset="seed", mode="max-autotune", fullgraph=True, regional=False,
                            coordinate_descent_tuning=True),
}
# The one place the default is chosen (the GPU measurements of regional vs whole decide it).
DEFAULT_PRESET = "regional"

_KEYS = ("preset", "mode", "fullgraph", "dynamic", "component", "regional", "coordinate_descent_tuning", "woq_int8pack")
_BOOL_KEYS = ("fullgraph", "regional", "coordinate_descent_tuning", "woq_int8pack")


def _check_table(table: Any, where: str) -> dict[str, Any]:
    """One validated `[compile]`-style table; `where` names the file and table for errors."""
    if not isinstance(table, dict):
        raise EvalkitError(f"{where}: expected a table of compile settings, got {type(table).__name__}")
    for key, value in table.items():
        if key not in _KEYS:
            raise EvalkitError(f"{where}.{key}: unknown compile setting.{suggest(key, list(_KEYS))} "
                               f"Settings: {', '.join(_KEYS)}")
        if key == "preset" and value not in PRESETS:
            raise EvalkitError(f"{where}.preset = {value!r}: unknown preset; choose from {', '.join(PRESETS)}")
        if key == "mode" and value not in MODES:
            raise EvalkitError(f"{where}.mode = {value!r}: expected one of {', '.join(MODES)}")
        if key in _BOOL_KEYS and not isinstance(value, bool):
            raise EvalkitError(f"{where}.{key} = {value!r}: expected true or false")
        if key == "dynamic" and not isinstance(value, bool):
            raise EvalkitError(f"{where}.dynamic = {value!r}: expected true or false (omit it to let torch decide)")
        if key == "component" and not (isinstance(value, str) and value.isidentifier()):
            raise EvalkitError(f"{where}.component = {value!r}: expected a pipeline component's name, e.g. "
                               "\"transformer\" (the stage checks it against the model family)")
    return dict(table)


def validate_compile_config(global_table: Any, per_backend: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check the `[compile]` table and each `[backends.<name>.compile]` table of `source`; returns the JSON-able
    description the manifest stores (`{"file", "global", "backends"}`), from which `resolve_compile` works."""
    out: dict[str, Any] = {"file": source, "global": {}, "backends": {}}
    if global_table is not None:
        out["global"] = _check_table(global_table, f"{source}: [compile]")
    for name, table in per_backend.items():
        out["backends"][name] = _check_table(table, f"{source}: [backends.{name}.compile]")
    return out


def compile_components(config: Mapping[str, Any] | None) -> set[str]:
    """Every component a `[compile]` or `[backends.*.compile]` table names (for the stage to check)."""
    config = config or {}
    tables = [config.get("global") or {}, *((config.get("backends") or {}).values())]
    return {t["component"] for t in tables if isinstance(t, Mapping) and t.get("component")}


def resolve_compile(config: Mapping[str, Any] | None, backend: str, denoiser: str) -> CompileSettings:
    """The settings for `backend` (its base name): preset, then `[compile]`, then the backend's own table; the
    component defaults to the family's `denoiser`."""
    config = config or {}
    merged: dict[str, Any] = dict(config.get("global") or {})
    own = (config.get("backends") or {}).get(backend) or {}
    if "preset" in own:
        # A backend naming its own preset starts from it; the global keys are not mixed into another preset.
        merged = {}
    merged.update(own)
    base = PRESETS[merged.pop("preset", DEFAULT_PRESET)]
    settings = replace(base, **merged)
    return settings if settings.component else replace(settings, component=denoiser)


def prepare_compile_cache(cache_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Point inductor's and triton's caches under evalkit's cache dir (unless the user chose them), so compiled
    kernels survive between runs; report whether each cache already held something (a warm start)."""
    root = Path(cache_root) / "compile"
    out: dict[str, Any] = {}
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        chosen_by = "user" if os.environ.get(var) and os.environ[var] != _torch_default(var) else "evalkit"
        if chosen_by == "evalkit":
            os.environ[var] = str(root / sub)
        path = Path(os.environ[var])
        warm = path.is_dir() and any(path.iterdir())
        path.mkdir(parents=True, exist_ok=True)
        out[sub] = {"dir": str(path), "env": var, "set_by": chosen_by, "warm": warm}
    out["warm"] = all(v["warm"] for v in out.values() if isinstance(v, dict))
    return out


def _torch_default(var: str) -> str | None:
    """The value torch itself puts in `var`: importing diffusers' pipelines writes inductor's default cache dir into
    os.environ (cache_dir_utils.cache_dir()), which must not pass for the user's choice."""
    if var != "TORCHINDUCTOR_CACHE_DIR":
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without it: trust the variable
        return None
    return default_cache_dir()


# Inductor flags a library may set behind the run's back (torchao's recommended setter sets the first three); the
# compile record states each one's value when compiling starts.
INDUCTOR_FLAGS = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions", "force_fuse_int_mm_with_mul",
                  "max_autotune", "max_autotune_gemm", "fx_graph_cache", "freezing")


def apply_inductor_flags(settings: CompileSettings) -> dict[str, Any]:
    """Set the inductor flags this compile owns, whatever loading left behind, and return every flag in force."""
    import torch._inductor.config as inductor

    inductor.coordinate_descent_tuning = settings.coordinate_descent_tuning
    inductor.coordinate_descent_check_all_directions = settings.coordinate_descent_tuning
    return {k: getattr(inductor, k) for k in INDUCTOR_FLAGS if hasattr(inductor, k)}


def woq_int8pack_guard(reject_devices: tuple[str, ...] = ("cuda",)) -> dict[str, Any]:
    """Keep inductor from lowering int8 weight-only matmuls on `reject_devices` to aten._weight_int8pack_mm.

    torch has no flag for this pattern (pytorch#161680 extended it to CUDA), so the guard wraps the `extra_check` of
    its entries in inductor's post-grad pattern table: a match whose activation is on a rejected device is declined
    and the matmul stays an ordinary bf16 mm that inductor fuses with the dequantize. Idempotent; an empty
    `reject_devices` restores torch's own checks. Returns what it found, for the record: a torch that renames these
    internals gets `patterns: 0` and a `note`, never an exception, and the record then shows the rewrite was not
    controlled."""
    try:
        from torch._inductor.fx_passes import post_grad

        post_grad.lazy_init()  # registers the patterns now (cached: the first compile would do the same)
        tables = post_grad.pass_patterns
    except Exception as e:  # noqa: BLE001 - a private API: report, do not fail the backend
        return {"patterns": 0, "reject_devices": list(reject_devices), "note": f"{type(e).__name__}: {e}"[:200]}
    found = 0
    for table in tables:
        for entries in getattr(table, "patterns", {}).values():
            for entry in entries:
                handler = getattr(entry, "handler", None)
                if getattr(handler, "__name__", "") != "woq_int8" or \
                        not getattr(handler, "__module__", "").endswith("fx_passes.quantization"):
                    continue
                original = entry.__dict__.setdefault("_evalkit_extra_check", entry.extra_check)
                entry.extra_check = _declining(original, reject_devices) if reject_devices else original
                found += 1
    out: dict[str, Any] = {"patterns": found, "reject_devices": list(reject_devices)}
    if not found:
        out["note"] = "no woq_int8 pattern in inductor's post-grad table (this torch may not have it)"
    # Inductor's FX graph cache keys on its config, not on this patch: a kernel cached with the other choice would
    # be reused silently. A no-op custom pass whose uuid names the choice puts it into the cache key.
    out["cache_key"] = _key_the_cache(",".join(reject_devices) or "torch-default")
    return out


def _key_the_cache(choice: str) -> str:
    try:
        import torch._inductor.config as inductor
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:
        return "not separated (this torch has no CustomGraphPass)"
    current = getattr(inductor, "post_grad_custom_pre_pass", None)
    if current is not None and not getattr(current, "_evalkit_woq_key", False):
        return "not separated (post_grad_custom_pre_pass is the user's)"

    class WoqChoice(CustomGraphPass):
        _evalkit_woq_key = True

        def __call__(self, graph: Any) -> None:  # changes nothing; exists for uuid()
            return None

        def uuid(self) -> str:
            return f"evalkit-woq-int8pack-reject:{choice}"

    inductor.post_grad_custom_pre_pass = WoqChoice()
    return f"evalkit-woq-int8pack-reject:{choice}"


def _declining(check: Any, reject_devices: tuple[str, ...]) -> Any:
    def extra_check(match: Any) -> bool:
        x = match.kwargs.get("x")
        val = getattr(x, "meta", {}).get("val") if x is not None else None
        if val is not None and getattr(val, "device", None) is not None and val.device.type in reject_devices:
            return False
        return check(match)

    return extra_check


def apply_compile(pipe: Any, settings: CompileSettings, family_blocks: tuple[str, ...] = ()) -> dict[str, Any]:
    """Compile one component of `pipe` as `settings` say (lazily: the first call compiles). Returns the record.
    `family_blocks`: the model family's repeated-block classes, used when the component's class declares none
    (`ModelFamily.compile_blocks`)."""
    module = getattr(pipe, settings.component, None)
    if module is None:
        raise EvalkitError(f"compile: the pipeline has no component {settings.component!r}")
    flags = apply_inductor_flags(settings)
    guard = woq_int8pack_guard(() if settings.woq_int8pack else ("cuda",))
    if settings.regional:
        if not getattr(module, "_repeated_blocks", None) and family_blocks:
            module._repeated_blocks = list(family_blocks)  # on this instance: diffusers' class stays as it is
        if not getattr(module, "_repeated_blocks", None):
            raise EvalkitError(f"compile: regional = true, but {type(module).__name__} declares no repeated blocks; "
                               f"set regional = false in the [compile] table")
        module.compile_repeated_blocks(**settings.torch_kwargs())
        blocks = sorted({type(m).__name__ for m in module.modules() if type(m).__name__ in module._repeated_blocks})
        compiled = sum(1 for m in module.modules() if type(m).__name__ in module._repeated_blocks)
        return {**settings.to_record(), "target": settings.component, "repeated_blocks": blocks,
                "compiled_regions": compiled, "inductor": flags,
                "woq_int8pack_guard": guard}
    module.compile(**settings.torch_kwargs())
    return {**settings.to_record(), "target": settings.component, "repeated_blocks": None, "compiled_regions": 1,
            "inductor": flags, "woq_int8pack_guard": guard}


def dynamo_stats() -> dict[str, Any]:
    """What torch._dynamo did in this process: graphs compiled, graph breaks, recompilations and their reasons, and
    whether a code object hit the recompile limit (its later calls then run eagerly, so "+compile" would be a
    label on eager latency). Read after generation; counters are process-wide and a worker runs one backend."""
    import torch._dynamo.utils as dynamo_utils

    counters = dynamo_utils.counters
    breaks = {str(k): int(v) for k, v in counters.get("graph_break", {}).items()}
    unimplemented = {str(k): int(v) for k, v in counters.get("unimplemented", {}).items()}
    failures = getattr(dynamo_utils, "guard_failures", {}) or {}
    reasons: list[str] = []
    for code, why in failures.items():
        for reason in why:
            line = f"{getattr(code, 'co_name', code)}: {' '.join(str(reason).split())[:200]}"
            if line not in reasons:
                reasons.append(line)
    # torch has named it "recompile limit" / recompile_limit and, before, "cache limit" / cache_size_limit
    limit_hit = any(any(s in k.lower() for s in ("recompile limit", "recompile_limit", "cache limit", "cache_size_limit"))
                    for k in (*breaks, *unimplemented))
    return {"unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
            "frames_compiled": int(counters.get("frames", {}).get("ok", 0)),
            "graph_breaks": sum(breaks.values()),
            "recompilations": sum(len(v) for v in failures.values()),
            "recompile_reasons": reasons[:10],
            "recompile_limit_hit": limit_hit,
            # how many int8 weight-only matmuls inductor lowered to aten._weight_int8pack_mm (see woq_int8pack)
            "woq_int8pack_rewrites": int(counters.get("inductor", {}).get("woq_matcher_count", 0))}
