"""The thresholds file: parse, validate every name against the run, resolve the bounds per backend.

Format (TOML, see thresholds.example.toml and docs/release-gate.md):

    [default]                       # every non-reference backend in the run
    lpips_alex_max = 0.25
    require_status_ok = true

    [backends."bnb-nf4+offload"]    # overrides [default] key by key; quoted because of + and -
    latency_ratio_to_bf16_max = 4.0

A bound is `<quantity>_max` or `<quantity>_min`. Quality metrics take both; resources (memory, time)
only `_max`. A quality bound may instead be relative to the run's noise floor, `lpips_alex_max = { noise = 3 }`;
evalkit.check.noise resolves it against calibration.json. Every name is checked before anything is judged, so a typo is an error (exit 2) with the
closest names suggested, never a bound that silently checks nothing. A section may name a real backend the run lacks
(one file serves runs with fewer backends): it lands in `Thresholds.absent`, which check lists as not judged.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evalkit.errors import EvalkitError, suggest

def known_metrics() -> dict[str, bool]:
    """name -> higher_is_better, from the metric registry (a light import: no torch), so a metric added there is
    known here without a second table. The run's own metric names are added to these at load time."""
    from evalkit.metrics.registry import list_metrics

    return {m.name: m.higher_is_better for m in list_metrics()}


KNOWN_METRICS: dict[str, bool] = known_metrics()


@dataclass(frozen=True)
class Resource:
    """A number from the generation record (via summary.json) that a `<name>_max` bound may cap."""

    name: str
    unit: str
    path: tuple[str, ...]  # keys into the summary's backend entry; () for computed ones
    reason_path: tuple[str, ...] = ()  # where the run says why the value is null
    help: str = ""


RESOURCES: dict[str, Resource] = {r.name: r for r in [
    Resource("peak_memory_reserved_gib", "GiB", ("memory", "peak_reserved_gib"), ("memory", "cuda_reason"),
             "torch.cuda.max_memory_reserved during generation"),
    Resource("peak_memory_allocated_gib", "GiB", ("memory", "peak_allocated_gib"), ("memory", "cuda_reason"),
             "torch.cuda.max_memory_allocated during generation"),
    Resource("memory_after_load_reserved_gib", "GiB", ("memory", "after_load_reserved_gib"), ("memory", "cuda_reason"),
             "torch.cuda.memory_reserved right after loading"),
    Resource("memory_after_load_allocated_gib", "GiB", ("memory", "after_load_allocated_gib"), ("memory", "cuda_reason"),
             "torch.cuda.memory_allocated right after loading"),
    # The loading peak catches quantize-on-load transients that the after-load reading hides.
    Resource("load_peak_memory_reserved_gib", "GiB", ("memory", "load_peak_reserved_gib"), ("memory", "cuda_reason"),
             "peak reserved while loading"),
    Resource("load_peak_memory_allocated_gib", "GiB", ("memory", "load_peak_allocated_gib"), ("memory", "cuda_reason"),
             "peak allocated while loading"),
    Resource("cpu_peak_rss_gib", "GiB", ("memory", "cpu_peak_rss_gib"), (), "process peak RSS"),
    Resource("footprint_gib", "GiB", ("footprint_gib",), (), "parameter bytes of the loaded pipeline"),
    Resource("latency_median_s", "s", ("latency", "median_s"), ("latency", "reason"), "median seconds per image"),
    Resource("latency_ratio_to_bf16", "x", (), (), "median latency / the reference backend's median latency"),
    Resource("load_time_s", "s", ("load_time_s",), (), "seconds to load (and quantize) the pipeline"),
    Resource("compile_time_s", "s", ("compile_time_s",), (), "torch.compile cold-start seconds"),
    Resource("flagged_images", "images", (), (), "images flagged nan or all_black"),
    # Broken images (evalkit.tripwires): judged for every backend of the run, reference included, with a limit of 0
    # unless `broken_max` says otherwise (evalkit.check.gate._broken_case).
    Resource("broken", "images", (), (), "broken images (tripwires: non-finite, constant, grid, unrelated, "
             "did not quantize); judged with a limit of 0 when no broken_max is set"),
]}

OPTIONS = {
    # require_status_ok: the backend's generation must have status "ok" (its own testcase).
    "require_status_ok": "boolean",
    # allow_unmeasured: a resource the run could not measure (null with a reason, e.g. CUDA memory on a CPU run)
    # is reported as skipped instead of failed. It never excuses a skipped quality metric or a failed backend.
    "allow_unmeasured": "boolean",
    # allow_skipped_backend: a backend generate skipped because it cannot run here (status "skipped": the device, a
    # missing library; never "failed") shows as one skipped testcase with generate's reason, its bounds unjudged.
    "allow_skipped_backend": "boolean",
    # ignore: opt this backend out of [default] (e.g. one that cannot run on this runner). It still shows, as one
    # skipped testcase, so a gate never drops a backend without a trace.
    "ignore": "boolean",
}

TOP_LEVEL = ("default", "backends")


@dataclass(frozen=True)
class Bound:
    """One `<quantity>_max|_min = limit` line, with where it came from (for messages)."""

    key: str
    quantity: str
    kind: Literal["max", "min"]
    limit: float  # NaN for a relative bound until evalkit.check.noise resolves it against a calibration
    section: str  # the table: "default" or "backends.bnb-nf4"
    line: int | None
    noise: float | None = None  # `{ noise = k }`: k times the run's noise floor (docs/release-gate.md)
    where: str = ""  # file:line, for messages about this bound

    @property
    def is_relative(self) -> bool:
        return self.noise is not None

    @property
    def is_metric(self) -> bool:
        return self.quantity not in RESOURCES

    def symbol(self) -> str:
        return "≤" if self.kind == "max" else "≥"


@dataclass
class Section:
    bounds: dict[str, Bound] = field(default_factory=dict)
    options: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Rules:
    """The bounds and options that apply to one backend after [default] and its own section are merged."""

    backend: str
    bounds: tuple[Bound, ...]
    require_status_ok: bool
    allow_unmeasured: bool
    ignored_in: str | None = None  # the table that set `ignore = true`
    allow_skipped_backend: bool = False


@dataclass
class Thresholds:
    path: Path
    default: Section
    backends: dict[str, Section]  # sections of backends in the run
    warnings: list[str] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # sections of known backends the run lacks -> file:line

    def broken_bound(self, backend: str) -> Bound | None:
        """The `broken_max` that applies to `backend` (its own section's, else [default]'s, the reference
        included: a broken reference image breaks every pair of its prompt); None: the limit is 0."""
        for s in ([self.backends[backend]] if backend in self.backends else []) + [self.default]:
            if "broken_max" in s.bounds:
                return s.bounds["broken_max"]
        return None

    def rules_for(self, backend: str, reference: str) -> Rules | None:
        """Merged rules for `backend`, or None when nothing in the file applies to it.

        [default] applies to every backend except the reference (comparing bf16 with itself says nothing);
        the reference is checked only where it has its own section (e.g. its memory).
        """
        own = [self.backends[backend]] if backend in self.backends else []
        if backend != reference:
            sections = [self.default] + own
        else:
            # [default]'s bounds skip the reference, but its options (allow_unmeasured on a CPU smoke run,
            # require_status_ok) are run-wide: they apply to the reference's own section too.
            inherited = Section(options={k: v for k, v in self.default.options.items() if k != "ignore"})
            sections = [inherited] + own if own else []
        bounds: dict[str, Bound] = {}
        options: dict[str, bool] = {}
        for s in sections:
            bounds.update(s.bounds)  # later (per-backend) sections win, key by key
            options.update(s.options)
        if options.get("ignore"):
            return Rules(backend, (), False, False, ignored_in=f'backends."{backend}"')
        if not bounds and not options.get("require_status_ok"):
            return None
        return Rules(backend, tuple(bounds.values()), bool(options.get("require_status_ok", False)),
                     bool(options.get("allow_unmeasured", False)),
                     allow_skipped_backend=bool(options.get("allow_skipped_backend", False)))


def known_bound_keys(metrics: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """Every valid key: `<metric>_max/_min`, `<resource>_max` and the options."""
    keys = [f"{m}_{k}" for m in sorted(metrics) for k in ("max", "min")]
    keys += [f"{r}_max" for r in RESOURCES]
    keys += list(OPTIONS)
    return keys


def load_thresholds(path: str | Path, run_backends: list[str], run_metrics: set[str],
                    higher_is_better: dict[str, bool] | None = None) -> Thresholds:
    """Parse and validate a thresholds file against one run. Raises EvalkitError naming file:line."""
    path = Path(path)
    text, data = _parse_file(path)
    known = known_metrics()  # at load time: a metric registered after this module was imported counts too
    metrics = set(known) | set(run_metrics)
    direction = dict(known)
    direction.update(higher_is_better or {})
    valid_keys = known_bound_keys(metrics)
    where = _Locator(path, text)

    for top in data:
        if top not in TOP_LEVEL:
            hint = suggest(top, TOP_LEVEL) or (
                " Bounds go under [default] or [backends.\"<name>\"]." if top in valid_keys else "")
            raise EvalkitError(f"{where.at_top(top)}: unknown table or key {top!r}; expected [default] "
                               f"and [backends.\"<name>\"].{hint}")
    default_raw = data.get("default", {})
    if not isinstance(default_raw, dict):
        raise EvalkitError(f"{where.at_top('default')}: 'default' must be a table: [default]")
    backends_raw = data.get("backends", {})
    if not isinstance(backends_raw, dict):
        raise EvalkitError(f"{where.at_top('backends')}: 'backends' must hold tables: [backends.\"bnb-nf4\"]")

    th = Thresholds(path, _section(default_raw, "default", valid_keys, where), {})
    _add_backend_sections(th, backends_raw, run_backends, valid_keys, where)
    _check_directions(th, direction, where)
    return th


def _parse_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text (for line numbers) and its TOML, or one EvalkitError naming the file: missing, unreadable,
    invalid TOML (at file:line:column) or nested past what the parser can follow."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalkitError(f"{path}: thresholds file not found (start from thresholds.example.toml)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvalkitError(f"{path}: cannot read thresholds file ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EvalkitError(_toml_error(path, e)) from None
    except RecursionError:
        raise EvalkitError(f"{path}: invalid thresholds file: values nested too deeply") from None
    return text, data


def _add_backend_sections(th: Thresholds, backends_raw: dict[str, Any], run_backends: list[str],
                          valid_keys: list[str], where: "_Locator") -> None:
    """Each `[backends."<name>"]` table into `th.backends` (a backend of the run) or `th.absent` (a real backend
    the run lacks); a name that is no backend at all stops the check."""
    for name, raw in backends_raw.items():
        if not isinstance(raw, dict):
            raise EvalkitError(f"{where.at('backends', name)}: backends.{name!r} must be a table: "
                               f"[backends.\"{name}\"]")
        section = _section(raw, f"backends.{name}", valid_keys, where)
        if name in run_backends:
            th.backends[name] = section
            continue
        # One thresholds file may serve runs with fewer backends (a CPU runner, a quick job): a section for a real
        # backend this run lacks is listed, not judged; --require-backends makes it fail. A name that is no backend
        # at all is a typo and stops the check.
        canonical = _canonical_backend(name)
        if canonical != name:
            hint = (f" Did you mean: {canonical}?" if canonical else
                    suggest(name, list(run_backends)) or suggest(name, _backend_names()))
            raise EvalkitError(
                f"{where.at(f'backends.{name}', None)}: backend {name!r} is neither in this run (the run has: "
                f"{', '.join(run_backends) or 'none'}) nor a backend evalkit knows.{hint}")
        th.absent[name] = where.at(f"backends.{name}", None)


def _check_directions(th: Thresholds, direction: dict[str, bool], where: "_Locator") -> None:
    """Bounds against their metric's direction: a noise-relative one is an error (it would cap improvement), a
    plain one a warning (legal, but usually a slip: ssim_max instead of ssim_min)."""
    for sec in [th.default, *th.backends.values()]:
        for b in sec.bounds.values():
            hib = direction.get(b.quantity)
            if b.is_relative and hib is not None and (b.kind == "max") == hib:
                raise EvalkitError(f"{where.at(b.section, b.key)}: {b.key} = {{ noise = ... }} bounds {b.quantity} on "
                                   f"its good side; a noise-relative bound caps degradation: use "
                                   f"{b.quantity}_{'min' if hib else 'max'}")
            if b.is_metric and hib is not None and (b.kind == "max") == hib:
                better = "higher" if hib else "lower"
                other = f"{b.quantity}_{'min' if b.kind == 'max' else 'max'}"
                th.warnings.append(f"{where.at(b.section, b.key)}: {b.key} bounds {b.quantity} on its good side "
                                   f"({better} is better); did you mean {other}?")


def _section(raw: dict[str, Any], table: str, valid_keys: list[str], where: "_Locator") -> Section:
    label = "default" if table == "default" else 'backends."' + table.split(".", 1)[1] + '"'
    sec = Section()
    for key, value in raw.items():
        loc = where.at(table, key)
        if key not in valid_keys:
            hint = suggest(key, valid_keys) or _family_hint(key, valid_keys)
            raise EvalkitError(f"{loc}: unknown bound {key!r} in [{label}].{hint} "
                               f"(bounds are <metric>_max/_min and <resource>_max; see docs/release-gate.md)")
        if key in OPTIONS:
            if key == "ignore" and table == "default":
                raise EvalkitError(f"{loc}: ignore belongs in a [backends.\"<name>\"] section (it opts one backend out)")
            if not isinstance(value, bool):
                raise EvalkitError(f"{loc}: {key} must be true or false, not {value!r}")
            sec.options[key] = value
            continue
        if isinstance(value, dict):
            quantity, kind = key.rsplit("_", 1)
            if quantity in RESOURCES:
                raise EvalkitError(f"{loc}: {key}: only quality metrics take a bound relative to the noise floor")
            sec.bounds[key] = Bound(key, quantity, kind, math.nan, table, where.line(table, key),  # type: ignore[arg-type]
                                    noise=_noise_multiple(value, key, loc), where=loc)
            continue
        # bool is an int in Python; `lpips_alex_max = true` is a slip, not a bound of 1.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalkitError(f"{loc}: {key} must be a number, not {value!r}")
        quantity, kind = key.rsplit("_", 1)
        sec.bounds[key] = Bound(key, quantity, kind, _judgeable(value, key, quantity, loc), table,
                                where.line(table, key), where=loc)  # type: ignore[arg-type]
    return sec


def _noise_multiple(value: dict[str, Any], key: str, loc: str) -> float:
    """k of `key = { noise = k }`: a finite number above 0 (0 would demand identical images; say so instead)."""
    if set(value) != {"noise"}:
        raise EvalkitError(f"{loc}: {key} = {{ ... }} takes exactly one key, noise (e.g. {key} = {{ noise = 3 }}), "
                           f"not {sorted(value)}")
    k = value["noise"]
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise EvalkitError(f"{loc}: {key}: noise must be a finite number above 0 (a multiple of the noise floor), "
                           f"not {k!r}")
    return float(k)


def value_range(quantity: str) -> tuple[float | None, float | None]:
    """The values `quantity` can take: (low, high), None for unbounded. A bound outside it can never be judged.

    Resources are all amounts (GiB, seconds, ratios, counts), so never negative. A metric's range is the
    registry's (MetricSpec.value_range). KID is unbiased, so it can be slightly negative: no range."""
    if quantity in RESOURCES:
        return (0.0, None)
    try:
        from evalkit.metrics.registry import get_spec

        spec = get_spec(quantity)
    except EvalkitError:
        return (None, None)  # a metric only the run knows: nothing to say about its range
    return spec.value_range


def _judgeable(value: int | float, key: str, quantity: str, loc: str) -> float:
    """`value` as a float bound, or a config error (exit 2) naming file:line: a bound no number can be compared
    with must never look like a failed release (exit 1)."""
    try:
        limit = float(value)
    except OverflowError:  # a TOML integer beyond float range: 1 followed by 400 zeros
        raise EvalkitError(f"{loc}: {key} = {value} is outside the range of a float (max {sys.float_info.max:.3g})") from None
    if math.isnan(limit):  # NaN never compares true: the bound would fail every time
        raise EvalkitError(f"{loc}: {key} is nan; a bound must be a finite number")
    if math.isinf(limit):
        raise EvalkitError(f"{loc}: {key} is {'-' if limit < 0 else ''}inf; a bound must be a finite number "
                           f"(to not bound {quantity}, remove the line)")
    lo, hi = value_range(quantity)
    if (lo is not None and limit < lo) or (hi is not None and limit > hi):
        span = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
        raise EvalkitError(f"{loc}: {key} = {value:g} is impossible: {quantity} only takes values in {span}, "
                           f"so this bound could never be judged")
    return limit


def _backend_names() -> list[str]:
    from evalkit.quantizers.registry import BACKENDS

    return list(BACKENDS)


def _canonical_backend(name: str) -> str | None:
    """The name as evalkit spells a backend it can run somewhere (base, then modifiers in their order), whether or
    not this run has it; None for no backend. A light import: evalkit.quantizers.registry imports no torch."""
    from evalkit.quantizers.registry import parse_backend

    try:
        return parse_backend(name).name
    except EvalkitError:
        return None


def _family_hint(key: str, valid_keys: list[str]) -> str:
    # `lpips_max` (the shorthand) is close to neither net by difflib's measure at times; help anyway.
    stem = key.rsplit("_", 1)[0]
    family = [k for k in valid_keys if k.startswith(stem + "_") or k.startswith(stem)]
    return f" Did you mean: {', '.join(family[:4])}?" if family else ""


def _toml_error(path: Path, e: tomllib.TOMLDecodeError) -> str:
    msg = str(e)
    # Python 3.11/3.12 put the position only in the message: "... (at line 3, column 7)".
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
    if m:
        return f"{path}:{m.group(1)}:{m.group(2)}: invalid TOML: {msg[:m.start()]}"
    m = re.search(r"\s*\(at end of document\)\s*$", msg)
    if m:
        n = len(path.read_text(encoding="utf-8").splitlines()) or 1
        return f"{path}:{n}: invalid TOML: {msg[:m.start()]} (at end of file)"
    return f"{path}: invalid TOML: {msg}"


class _Locator:
    """Best-effort line numbers for keys, so a validation error points at the line like a parse error does.

    tomllib returns no positions; this scans for `[table]` headers and `key =` lines, which covers the
    file format documented here (not every TOML spelling, e.g. dotted keys; then only the file is named).
    """

    _header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _key = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")

    def __init__(self, path: Path, text: str):
        self.path = path
        self.entries: list[tuple[int, str | None, str | None]] = []  # (line, table path, key or None for a header)
        table: str | None = None
        for i, line in enumerate(text.splitlines(), 1):
            if m := self._header.match(line):
                table = self._norm(m.group(1))
                self.entries.append((i, table, None))
            elif m := self._key.match(line):
                self.entries.append((i, table, m.group(1).strip("\"'")))

    @staticmethod
    def _norm(table: str) -> str:
        parts = re.findall(r"\"[^\"]*\"|'[^']*'|[^.\s]+", table)
        return ".".join(p.strip("\"'") for p in parts)

    def line(self, table: str | None, key: str | None) -> int | None:
        """Line of `key` in `table` (None: top level), or of the `[table]` header when key is None."""
        for i, t, k in self.entries:
            if t == table and k == key:
                return i
        return None

    def at(self, table: str | None, key: str | None) -> str:
        n = self.line(table, key)
        return f"{self.path}:{n}" if n else str(self.path)

    def at_top(self, name: str) -> str:
        """A top-level name: either `name = ...` before any table, or a `[name]` header."""
        n = self.line(None, name) or self.line(name, None)
        return f"{self.path}:{n}" if n else str(self.path)
