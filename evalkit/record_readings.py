"""What a backend's generation record means beyond its fields: whether it did less than its name says, and its
start-up per work unit. One reading each, for summary.json (evalkit.records.build_summary), the report, score's
marks, check and the schedule, so that none of them reads the raw fields its own way. Records are taken as plain
mappings: evalkit.records imports this module, so this one imports nothing from it.
"""

from __future__ import annotations

from typing import Any, Mapping

# Words in an older record's quantization.note that mean "this backend quantized less than its name says".
_PARTIAL_NOTE_MARKER = "left in bf16"


def partial_reason(gen: Mapping[str, Any] | None) -> str | None:
    """Why a backend quantized less than its name says on this device, or None.

    Records from before `quantization.partial_reason` existed said it only in `quantization.note`
    ("transformer left in bf16 on CPU: ..."), so that is read when the field is absent.
    """
    quant = (gen or {}).get("quantization") or {}
    if "partial_reason" in quant:
        reason = quant["partial_reason"] or None
    else:
        note = quant.get("note")
        reason = note if isinstance(note, str) and _PARTIAL_NOTE_MARKER in note else None
    compiled = _partly_eager(gen)
    return "; ".join(r for r in (reason, compiled) if r) or None


def startup_median_s(record: Mapping[str, Any]) -> float | None:
    """A backend's start-up per work unit: the median of its units' `startup.total_s` (`ranks[]` of a merged
    record, or the record's own `startup` for a shard); None for records from before start-up was recorded."""
    starts = [r.get("startup") for r in record.get("ranks") or []] or [record.get("startup")]
    totals = sorted(float(s["total_s"]) for s in starts
                    if isinstance(s, Mapping) and isinstance(s.get("total_s"), (int, float)))
    return totals[len(totals) // 2] if totals else None


def _partly_eager(gen: Mapping[str, Any] | None) -> str | None:
    """`+compile` whose code hit torch._dynamo's recompile limit ran the later calls eagerly: its latency is not a
    compiled one, so it does less than its name says (generation record's compile.dynamo, written by the worker)."""
    dynamo = ((gen or {}).get("compile") or {}).get("dynamo") or {}
    if not dynamo.get("recompile_limit_hit"):
        return None
    first = (dynamo.get("recompile_reasons") or ["reason not recorded"])[0]
    return (f"+compile ran partly eagerly: torch._dynamo hit its recompile limit after "
            f"{dynamo.get('recompilations')} recompilations (first: {first})")
