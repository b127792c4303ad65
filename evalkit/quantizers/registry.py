"""The backend registry: every library's record, quantizer and backends, and the `--backends` grammar.

Libraries register themselves (`register_library`): the built-ins listed in BUILTIN_LIBRARIES, plugins through the
`evalkit.backends` entry-point group or `--plugin FILE.py` (evalkit/plugins.py), tests from their own modules. Names
are a contract: thresholds files and reports use them.

Modifiers (`+compile`, `+offload`, `+group-offload`) combine with any backend: `bnb-nf4+compile+offload`.

This module imports no torch (`evalkit backends` and `--help` stay fast); configs are built inside the worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from evalkit.errors import EvalkitError, suggest
from evalkit.quantizers.base import Backend, Library, Modifier, Quantizer

if TYPE_CHECKING:
    from evalkit.families.base import Component, ModelFamily

# Built-in library modules under evalkit/quantizers/, each defining LIBRARY, QUANTIZER and BACKENDS; the reference
# first. Adding a library: its module, and its name here.
BUILTIN_LIBRARIES = ("reference", "bitsandbytes", "torchao", "quanto", "gguf", "layerwise", "modelopt", "sdnq",
                     "autoround", "bfl", "nunchaku", "checkpoint")

_libraries: dict[str, Library] = {}
_quantizers: dict[str, Quantizer] = {}
_backends: dict[str, Backend] = {}
_aliases: dict[str, str] = {}  # another name -> the backend it is (a library module's ALIASES)
LIBRARIES: Mapping[str, Library] = MappingProxyType(_libraries)
BACKENDS: Mapping[str, Backend] = MappingProxyType(_backends)
ALIASES: Mapping[str, str] = MappingProxyType(_aliases)

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def register_library(library: Library, quantizer: Quantizer, backends: tuple[Backend, ...] | list[Backend],
                     replace: bool = False, aliases: Mapping[str, str] | None = None) -> None:
    """Add a library with its quantizer and backends (a plugin's or a test's). Names must be new unless `replace`.
    `aliases`: other names for some of these backends (a name an issue or a paper uses for the same recipe); they
    parse to the backend itself, so a run never holds one recipe twice. Raises ValueError naming what is wrong."""
    if not isinstance(library, Library):
        raise TypeError(f"register_library: expected a Library record, got {type(library).__name__}")
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"library {library.key!r}: quantizer must subclass evalkit.quantizers.base.Quantizer")
    if getattr(quantizer, "library", library) is not library:
        raise ValueError(f"library {library.key!r}: its quantizer declares another library record")
    if library.key in _libraries and not replace:
        raise ValueError(f"library {library.key!r} is listed twice")
    for b in backends:
        if not isinstance(b, Backend):
            raise TypeError(f"library {library.key!r}: {b!r} is not a Backend record")
        if not _NAME.fullmatch(b.name) or b.name in ("default", "all", "seed"):
            raise ValueError(f"backend name {b.name!r}: lowercase letters, digits, '_', '.', '-' (no '+' or ','), "
                             "and not a keyword of --backends")
        if b.library is not library:
            raise ValueError(f"backend {b.name!r} names library {b.library.key!r}, registered under {library.key!r}")
        if b.name in _backends and not replace and _backends[b.name].library.key != library.key:
            raise ValueError(f"backend {b.name!r} is already a backend of {_backends[b.name].library.key!r}")
        if b.name in _backends and not replace:
            raise ValueError(f"backend {b.name!r} is listed twice")
        if b.name in _aliases:
            raise ValueError(f"backend {b.name!r} is already another name of {_aliases[b.name]!r}")
    names = {b.name for b in backends}
    for alias, target in (aliases or {}).items():
        if target not in names:
            raise ValueError(f"alias {alias!r} of library {library.key!r} names {target!r}, not one of its backends")
        if alias in _backends or (alias in _aliases and _aliases[alias] != target) or not _NAME.fullmatch(alias):
            raise ValueError(f"alias {alias!r} is already a backend name, or not a valid one")
    _libraries[library.key] = library
    _quantizers[library.key] = quantizer
    for b in backends:
        _backends[b.name] = b
    _aliases.update(aliases or {})


def unregister_library(key: str) -> None:
    """Remove a library and its backends (tests)."""
    _libraries.pop(key, None)
    _quantizers.pop(key, None)
    for name in [n for n, b in _backends.items() if b.library.key == key]:
        del _backends[name]
    for alias in [a for a, t in _aliases.items() if t not in _backends]:
        del _aliases[alias]


for _module in BUILTIN_LIBRARIES:
    _m = importlib.import_module(f"evalkit.quantizers.{_module}")
    register_library(_m.LIBRARY, _m.QUANTIZER, _m.BACKENDS, aliases=getattr(_m, "ALIASES", None))


def get_library(key: str) -> Library:
    """The record for `key`, with a one-line error naming the known keys."""
    try:
        return _libraries[key]
    except KeyError:
        raise KeyError(f"unknown backend library {key!r}; known: {', '.join(_libraries)}") from None


def library_order(key: str) -> int:
    """Sort key for reports: registered libraries in their order, unknown ones (an older run's) last."""
    lib = _libraries.get(key)
    return lib.order if lib else len(_libraries) + 100


def library_list() -> list[Library]:
    return sorted(_libraries.values(), key=lambda lib: lib.order)


def backend_list() -> list[Backend]:
    """Every backend, in library order, each library's in its own order."""
    order = {k: i for i, k in enumerate(_backends)}
    return sorted(_backends.values(), key=lambda b: (library_order(b.library.key), order[b.name]))


def quantizer_for(backend: Backend) -> Quantizer:
    return _quantizers[backend.library.key]


def quantizer_for_library(key: str) -> Quantizer:
    """The quantizer of a registered library (a prequantized checkpoint is read by the library it names)."""
    return _quantizers[key]


def known_incompatible() -> dict[tuple[str, frozenset[str]], str]:
    """Combinations that fail inside the libraries, from every library's quantizer."""
    out: dict[tuple[str, frozenset[str]], str] = {}
    for q in _quantizers.values():
        out.update(q.known_incompatible())
    return out


MODIFIERS: Mapping[str, Modifier] = MappingProxyType({
    "compile": Modifier("compile", "torch.compile the denoiser; compile time is recorded apart from latency"),
    "offload": Modifier("offload", "model CPU offload (enable_model_cpu_offload): components move to the GPU in turn",
                        devices=("cuda",), cpu_unsupported_reason="model CPU offload needs an accelerator"),
    "group-offload": Modifier("group-offload", "group offload, leaf level, with CUDA streams", devices=("cuda",),
                              cpu_unsupported_reason="group offload needs an accelerator to onload to"),
})


@dataclass(frozen=True)
class BackendSpec:
    """A parsed `--backends` entry: a base recipe plus modifiers, e.g. `bnb-nf4+compile+offload`."""

    name: str
    backend: Backend
    modifiers: tuple[str, ...]

    @property
    def modifiers_offload(self) -> bool:
        return "offload" in self.modifiers or "group-offload" in self.modifiers

    def recipe(self, user_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The generation record's `recipe`, built here only: what ran (or would have), with the user's `--config`
        options for this backend merged over its own."""
        b = self.backend
        return {"name": b.name, "library": b.library.key, "description": b.description, "kind": b.kind,
                "modifiers": list(self.modifiers), "options": {**dict(b.options), **dict(user_options or {})},
                "deprecated": b.library.deprecated}


def parse_backend(name: str) -> BackendSpec:
    """Parse `base+mod+mod`, with errors that suggest the closest names."""
    parts = [p.strip() for p in name.strip().split("+")]
    base, mods = _aliases.get(parts[0], parts[0]), parts[1:]
    if base not in _backends:
        hint = suggest(base, [*_backends, *_aliases])
        raise EvalkitError(f"unknown backend {base!r}.{hint} (see `evalkit backends`)")
    seen: list[str] = []
    for m in mods:
        if m not in MODIFIERS:
            raise EvalkitError(f"unknown modifier {m!r} in {name!r}.{suggest(m, list(MODIFIERS))} "
                               f"Modifiers: {', '.join('+' + k for k in MODIFIERS)}")
        if m in seen:
            raise EvalkitError(f"modifier {m!r} given twice in {name!r}")
        seen.append(m)
    if "offload" in seen and "group-offload" in seen:
        raise EvalkitError(f"{name!r}: choose one of +offload and +group-offload")
    # Canonical order, so `a+offload+compile` and `a+compile+offload` share one directory.
    ordered = tuple(m for m in MODIFIERS if m in seen)
    return BackendSpec("+".join((base, *ordered)), _backends[base], ordered)


def parse_backend_list(text: str | None, include_reference: bool = True) -> list[BackendSpec]:
    """`--backends` value: comma-separated names; `all` = every registry backend (the reference first); `default` =
    the same less those that calibrate for minutes first (`Backend.in_default`); `seed` = the seed study's set. bf16 is included, first, since every score is against it, unless
    `include_reference` is False (calibration's `bf16+compile` sub-run: its reference is the run's own bf16)."""
    names: list[str] = []
    for item in (text or "default").split(","):
        item = item.strip()
        if not item:
            continue
        if item == "all":
            names += [b.name for b in backend_list()]
        elif item == "default":
            names += [b.name for b in backend_list() if b.in_default]
        elif item == "seed":
            names += [b.name for b in backend_list() if b.in_seed_study]
        else:
            names.append(item)
    specs = [parse_backend(n) for n in names]
    out: list[BackendSpec] = []
    seen: set[str] = set()
    for s in ([parse_backend(reference_backend().name)] if include_reference else []) + specs:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def _default_family() -> "ModelFamily":
    from evalkit.families.registry import default_family

    return default_family()


def reference_backend() -> Backend:
    return next(b for b in _backends.values() if b.reference)


def package_available(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def resolve_components(backend: Backend, family: "ModelFamily", requested: tuple[str, ...] | None,
                       device: str) -> tuple[tuple["Component", ...], str | None]:
    """Which of the family's components this backend quantizes here, and a note when the default was narrowed for
    the device. `requested`: the `--components` names (validated against the family by the stage)."""
    if backend.reference:
        return (), None
    if requested is not None:
        return tuple(c for c in family.quantizable() if c.name in requested and c.role in backend.supported_roles), None
    comps = tuple(c for c in family.quantizable() if c.quantized and c.role in backend.roles)
    if device == "cpu" and backend.cpu_config_libraries is not None:
        narrowed = tuple(c for c in comps if c.config_library in backend.cpu_config_libraries)
        if narrowed != comps:
            left = ", ".join(c.name for c in comps if c not in narrowed)
            return narrowed, f"{left} left in bf16 on CPU: diffusers' {backend.library.display} quantizer needs a GPU"
    return comps, None


def availability(spec: BackendSpec, device: str, capability: tuple[int, int] | None,
                 requested_components: tuple[str, ...] | None = None, attempt_known_failures: bool = False, *,
                 family: "ModelFamily | None" = None) -> tuple[str, str | None]:
    """('ok', None), ('skipped', reason) when it cannot run on this machine for `family` (default: the default
    family), or ('failed', reason) for a known incompatible combination."""
    b = spec.backend
    family = family or _default_family()
    # A missing package and what the device lacks are both said: installing the package alone may not be enough.
    # `unavailable` reads only its arguments (never the machine's GPU), so a hypothetical device can be judged.
    reasons = [] if b.library.available() else [b.library.install_hint]
    if device not in b.devices:
        reasons.append(b.cpu_unsupported_reason)
    elif b.min_capability and device == "cuda" and capability is not None and tuple(capability) < b.min_capability:
        need = ".".join(map(str, b.min_capability))
        reasons.append(f"needs CUDA compute capability >= {need} (this GPU: {capability[0]}.{capability[1]})")
    elif why := quantizer_for(b).unavailable(b, device, capability, family):
        reasons.append(why)
    if reasons:
        return "skipped", "; ".join(reasons)
    for m in spec.modifiers:
        mod = MODIFIERS[m]
        if device not in mod.devices:
            return "skipped", f"+{m}: {mod.cpu_unsupported_reason}"
    if requested_components is not None and not b.reference:
        roles = {family.component(c).role for c in requested_components}
        if not roles & set(b.supported_roles):
            return "skipped", (f"--components {','.join(requested_components)}: {b.name} quantizes only the "
                               f"{' and '.join(b.supported_roles)}")
        if device == "cpu" and b.cpu_config_libraries is not None:
            bad = [c for c in requested_components if family.component(c).role in b.supported_roles
                   and family.component(c).config_library not in b.cpu_config_libraries]
            if bad:
                return "skipped", f"quantizing {', '.join(bad)} with {b.library.display} through diffusers needs a GPU"
    comps, _ = resolve_components(b, family, requested_components, device)
    if not b.reference and not comps:
        return "skipped", "no component left to quantize on this device"
    if not attempt_known_failures:
        mods = frozenset(spec.modifiers)
        for (base, need), reason in known_incompatible().items():
            if base in (b.name, "*") and need <= mods:
                return "failed", f"known incompatible: {reason} (use --attempt-known-failures to try anyway)"
        why = family.known_incompatible.get((b.name, device)) or family.known_incompatible.get((b.name, "*"))
        if why:
            return "failed", (f"known incompatible with {family.display} on {device}: {why} "
                              "(use --attempt-known-failures to try anyway)")
    return "ok", None


def backend_rows(device: str, capability: tuple[int, int] | None,
                 family: "ModelFamily | None" = None) -> list[dict[str, Any]]:
    """One row per backend and modifier: whether it runs on `device` for `family` (default: the default family)
    here and why not (`evalkit backends`, `evalkit.list_backends()`)."""
    family = family or _default_family()
    rows: list[dict[str, Any]] = []
    for b in backend_list():
        status, reason = availability(parse_backend(b.name), device, capability, family=family)
        comps, note = resolve_components(b, family, None, device)
        rows.append({"name": b.name, "kind": "backend", "library": b.library.key, "runs_here": status == "ok",
                     "reason": reason or note, "quantizes": [c.name for c in comps], "description": b.description,
                     "deprecated": b.library.deprecated, "in_default": b.in_default})
        for alias in (a for a, t in _aliases.items() if t == b.name):
            rows.append({**rows[-1], "name": alias, "kind": "alias", "alias_of": b.name,
                         "description": f"another name for {b.name} (the same recipe): {b.description}"})
    for m in MODIFIERS.values():
        ok = device in m.devices
        rows.append({"name": "+" + m.name, "kind": "modifier", "library": "diffusers/torch", "runs_here": ok,
                     "reason": None if ok else m.cpu_unsupported_reason, "quantizes": [], "description": m.description,
                     "deprecated": None})
    return rows


def _load_installed_plugins() -> None:
    from evalkit.plugins import load_entry_points

    load_entry_points("evalkit.backends")  # installed packages' libraries and backends (docs/plugins.md)


_load_installed_plugins()  # at the end: a plugin module imports this one and calls register_library
