"""What check and compare read from a run, validated before anything is judged: any malformed input is exit 2.

- Every JSON file goes through `read_json_checked`: a missing, truncated, undecodable or too deeply nested file is
  one line naming the file; NaN and ±Infinity, which evalkit never writes (evalkit.io.to_json refuses them), are one
  line naming the file and the field. A number where a metric record or a resource holds one must be a number.
- Records are checked against evalkit.records' schemas (manifest, generation and metric records) and, for
  summary.json, the fields check reads.
- Images: `verify_images` checks every image the judged metrics rest on against its generation record
  (evalkit.integrity, as score does): a missing, replaced, truncated or resized image means the metrics describe
  other files, so check and compare stop with one line naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.rundir import REFERENCE_BACKEND, RunDir

# Fields of a metric entry check reads as numbers, with what each must be.
_METRIC_NUMBERS = ("mean", "value", "ci_low", "ci_high", "std")


def read_json_checked(path: Path, what: str = "") -> Any:
    """JSON from `path`, or EvalkitError (exit 2) naming the file, and the field for a NaN or Infinity."""
    from evalkit.io import read_json

    try:
        data = read_json(path)
    except RecursionError:
        raise EvalkitError(f"{path}: JSON nested too deeply to be {what or 'an evalkit file'}") from None
    except IsADirectoryError:
        raise EvalkitError(f"{path}: is a directory, not {what or 'a JSON file'}") from None
    except OSError as e:
        raise EvalkitError(f"{path}: cannot read it ({e.strerror})") from None
    reject_nonfinite(data, path)
    return data


def reject_nonfinite(data: Any, path: Path, root: str = "") -> None:
    """EvalkitError naming the first NaN or ±Infinity in `data` by its field path. Iterative: a deep file cannot
    overflow the stack here."""
    stack: list[tuple[str, Any]] = [(root, data)]
    while stack:
        where, obj = stack.pop()
        if isinstance(obj, float) and not math.isfinite(obj):
            raise EvalkitError(f"{path}: {where or 'the file'} is {obj!r}; evalkit never writes NaN or Infinity "
                               f"(the file was edited or damaged)")
        if isinstance(obj, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(obj.items())))
        elif isinstance(obj, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(obj))))


def check_shape(path: Path, where: str, obj: Any, fields: dict[str, type]) -> None:
    """A one-line error naming the file and the field when a record has the wrong shape (never a traceback)."""
    if not isinstance(obj, dict):
        raise EvalkitError(f"{path}: {where} must be a JSON object, found {type(obj).__name__}")
    for key, typ in fields.items():
        if obj.get(key) is not None and not isinstance(obj[key], typ):
            raise EvalkitError(f"{path}: {where}.{key} must be a JSON {'object' if typ is dict else typ.__name__}, "
                               f"found {type(obj[key]).__name__}")


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def number_or_none(path: Path, where: str, x: Any) -> float | None:
    """`x` as a float, None for null; EvalkitError naming the field for anything else (a string, a list, true)."""
    if x is None:
        return None
    if not is_number(x):
        raise EvalkitError(f"{path}: {where} must be a number or null, found {type(x).__name__} {json.dumps(x)[:40]}")
    return float(x)


def check_metric_entry(path: Path, where: str, m: Any) -> None:
    """The fields of one metric entry (summary.json or a metric record) that check and compare read."""
    check_shape(path, where, m, {"status": str, "per_prompt": dict})
    if not isinstance(m.get("status"), str):  # every metric result states whether it was computed
        raise EvalkitError(f"{path}: {where}.status must be a string (\"ok\", \"skipped\", ...), found "
                           f"{'null' if m.get('status') is None else type(m.get('status')).__name__}")
    for key in _METRIC_NUMBERS:
        number_or_none(path, f"{where}.{key}", m.get(key))
    n = m.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise EvalkitError(f"{path}: {where}.n must be a count (an integer of 0 or more), found {n!r}")
    hib = m.get("higher_is_better")
    if hib is not None and not isinstance(hib, bool):
        raise EvalkitError(f"{path}: {where}.higher_is_better must be true, false or null, found {hib!r}")
    for pid, v in (m.get("per_prompt") or {}).items():
        number_or_none(path, f"{where}.per_prompt.{pid}", v)


@dataclass
class RunInputs:
    """One run as check/compare read it: validated manifest and summary, generation records on demand."""

    rd: RunDir
    manifest: dict[str, Any]
    summary: dict[str, Any]
    _generation: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return list(self.manifest.get("backends") or self.summary["backends"].keys())

    @property
    def reference(self) -> str:
        return self.summary.get("reference_backend") or self.manifest.get("reference_backend") or REFERENCE_BACKEND

    def prompt_ids(self) -> list[str]:
        return [p["id"] for p in self.manifest.get("prompts") or []]

    def generation(self, backend: str) -> dict[str, Any] | None:
        """The backend's generation record, shape-checked; None when it has none."""
        if backend not in self._generation:
            from evalkit.records import check_record, GenerationRecord

            path = self.rd.generation_record(backend)
            self._generation[backend] = (check_record(read_json_checked(path, "a generation record"),
                                                      GenerationRecord, path) if path.exists() else None)
        return self._generation[backend]

    def metrics(self, backend: str) -> dict[str, Any]:
        """metrics/<backend>.json's `metrics`, shape-checked with every number a number; {} when not scored."""
        if backend not in self._metrics:
            path = self.rd.metrics_record(backend)
            if not path.exists():
                self._metrics[backend] = {}
            else:
                # Only what compare reads is required (a record missing its `backend` field still pairs by prompt).
                rec = read_json_checked(path, "a metric record")
                check_shape(path, "metric record", rec, {"metrics": dict})
                for name, m in (rec.get("metrics") or {}).items():
                    check_metric_entry(path, f"metrics.{name}", m)
                self._metrics[backend] = rec.get("metrics") or {}
        return self._metrics[backend]

    def partial_reason(self, backend: str) -> str | None:
        """Why the backend quantized less than its name says here (shown with †), from its generation record;
        summary.json's copy for a run whose records are gone."""
        from evalkit.record_readings import partial_reason

        gen = self.generation(backend)
        if gen is not None:
            return partial_reason(gen)
        v = (self.summary["backends"].get(backend) or {}).get("partial_reason")
        return v if isinstance(v, str) and v else None

    def missing_prompts(self, backend: str) -> list[str]:
        """Prompt ids of the manifest that a generated (status ok) backend's record has no image for."""
        gen = self.generation(backend)
        if gen is None or gen.get("status") != "ok":
            return []
        have = {e.get("prompt_id") for e in gen.get("images") or []}
        return [p for p in self.prompt_ids() if p not in have]


def load_run(run_dir: str | Path) -> RunInputs:
    """Open a run and its summary.json; exit 2 (EvalkitError) when a file a check needs is missing or malformed."""
    from evalkit.records import Manifest, Summary, check_record

    root = Path(run_dir)
    if not root.is_dir():
        raise EvalkitError(f"{root}: run directory not found")
    rd = RunDir(root)
    if not rd.manifest.exists():
        raise EvalkitError(f"{root}: not a run directory (no manifest.json); create one with `evalkit generate` "
                           f"or `evalkit run`")
    raw = read_json_checked(rd.manifest, "a manifest")
    if not isinstance(raw, dict):
        raise EvalkitError(f"{rd.manifest}: manifest must be a JSON object, found {type(raw).__name__}")
    manifest = check_record(raw, Manifest, rd.manifest)
    check_shape(rd.manifest, "manifest", manifest, {"backends": list, "prompts": list, "model": dict, "device": dict,
                                                    "generation": dict, "versions": dict})
    if not rd.summary.exists():
        raise EvalkitError(f"{rd.summary}: not found; the run has no summary yet (run `evalkit score {rd.root}` "
                           f"or rebuild it with evalkit.rundir.write_summary)")
    summary = read_json_checked(rd.summary, "a summary")
    if not isinstance(summary, dict):
        raise EvalkitError(f"{rd.summary}: must be a JSON object, found {type(summary).__name__}; "
                           f"rebuild it with evalkit.rundir.write_summary")
    if not isinstance(summary.get("backends"), dict):
        raise EvalkitError(f"{rd.summary}: no 'backends' table; rebuild it with evalkit.rundir.write_summary")
    for name, entry in summary["backends"].items():
        where = f"backends.{name}"
        check_shape(rd.summary, where, entry, {"metrics": dict, "memory": dict, "latency": dict, "image_flags": dict,
                                               "status": str, "reason": str, "partial_reason": str})
        for metric, m in (entry.get("metrics") or {}).items():
            check_metric_entry(rd.summary, f"{where}.metrics.{metric}", m)
        for flag, count in (entry.get("image_flags") or {}).items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise EvalkitError(f"{rd.summary}: {where}.image_flags.{flag} must be a count, found {count!r}")
    check_record(summary, Summary, rd.summary)  # the rest of the record type's shape, after check's own words
    return RunInputs(rd, manifest, summary)


def verify_images(run: RunInputs, backends: list[str], full: bool = False) -> int:
    """Check every image of `backends` (and of the reference they are scored against) against its generation
    record; EvalkitError naming the first bad file. Returns the number of images checked.

    Files whose stat fingerprint matches the record are not re-hashed, as in score; `full` hashes every one.
    Extra files in an images folder are not looked for: the metrics rest on the files the record lists.
    """
    from evalkit.integrity import IntegrityReport, verify_images as verify_backend

    wanted = list(dict.fromkeys([run.reference, *backends]))
    total = IntegrityReport(root=run.rd.root)
    for b in wanted:
        gen = run.generation(b)
        if gen is None or gen.get("status") != "ok":
            continue
        total.merge(verify_backend(run.rd, b, gen, full=full, manifest=run.manifest, check_extra=False))
    total.raise_if_problems("The run's metrics were computed from the recorded file, so they no longer describe "
                            "this one")
    return len(total.ok)


def few(ids: list[str] | tuple[str, ...], k: int = 3) -> str:
    return ", ".join(ids[:k]) + (f", +{len(ids) - k} more" if len(ids) > k else "")
