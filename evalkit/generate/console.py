"""What the generate stage says besides progress: the generation table and the one-line error for a write that
failed. Shared by the stage (an unchanged rerun's table) and its ranks (after the merge)."""

from __future__ import annotations

from typing import Any

from evalkit.errors import EvalkitError


def write_error(e: OSError) -> EvalkitError:
    """A full disk or an unwritable path, as one line naming the path; what was written stays, and a rerun resumes."""
    where = e.filename or "the run directory"
    return EvalkitError(f"{where}: cannot write ({e.strerror or e}); free space or fix permissions, then rerun the "
                        "same command to resume")


def print_generation_table(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    dev = (summary.get("device") or {}).get("type")
    table = Table(title="generation", show_lines=False)
    for col in ("backend", "status", "load s", "latency median s",
                "peak reserved GiB" if dev == "cuda" else "peak RSS GiB (host)", "quantized", "note"):
        table.add_column(col)
    for name, b in summary["backends"].items():
        mem = b.get("memory") or {}
        lat = b.get("latency") or {}
        peak = mem.get("peak_reserved_gib") if dev == "cuda" else mem.get("cpu_peak_rss_gib")
        flags = ", ".join(f"{k}×{v}" for k, v in (b.get("image_flags") or {}).items())
        broken = b.get("broken") or []
        if broken:  # generate's tripwires (evalkit.tripwires): said first, the images are left out of every mean
            kinds = sorted({str(e.get("tripwire")) for e in broken if isinstance(e, dict)})
            flags = f"BROKEN ({', '.join(kinds)})" + (f"; {flags}" if flags else "")
        table.add_row(name, b["status"], _fmt(b.get("load_time_s")), _fmt(lat.get("median_s"), 3), _fmt(peak),
                      ",".join(b.get("components_quantized") or []) or "-",
                      (b.get("reason") or (flags if broken else None) or b.get("partial_reason") or flags or "")[:80])
    console.print(table)


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
