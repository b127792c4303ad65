"""JUnit XML for CI systems (Jenkins, GitLab, GitHub test reporters).

Follows the Jenkins/Surefire junit-10.xsd that pytest validates its own output against: a <testsuites>
root, one <testsuite> per backend, one <testcase> per bound with classname `evalkit.<kind>.<backend>`.
A violated bound is a <failure>; <skipped> only for what the user allowed to go unmeasured (or, in
compare, what cannot be tested). <error> is never written: a check that cannot run exits 2 instead.
"""

from __future__ import annotations

import datetime as _dt
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from evalkit.check.results import Report, group_reasons

SHORT_REASON = 120  # characters of a shared reason repeated in every testcase
from evalkit.io import atomic_write_bytes


def render_junit(report: Report, elapsed_s: float = 0.0) -> bytes:
    """The report as JUnit XML bytes (UTF-8, with declaration)."""
    root = ET.Element("testsuites", {
        "name": f"evalkit {report.kind}",
        "tests": str(len(report.cases)),
        "failures": str(report.n_failed),
        "errors": "0",
        "time": f"{elapsed_s:.3f}",
    })
    # A reason shared by several backends (CLIP weights missing for 15) is written in full once, in the first
    # backend's testcase; the others carry its first line and point there, so the file does not repeat 600 chars 15 times.
    first_of: dict[tuple[str, str, str], str] = {}
    for g in group_reasons([c for c in report.cases if c.outcome != "pass"]):
        if len(g.backends) > 1 and len(g.message) > SHORT_REASON:
            first_of[(g.name, g.outcome, g.message)] = g.backends[0]
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    host = socket.gethostname()
    for backend in report.backends():
        cases = [c for c in report.cases if c.backend == backend]
        suite = ET.SubElement(root, "testsuite", {
            "name": f"evalkit.{report.kind}.{backend}",
            "tests": str(len(cases)),
            "failures": str(sum(c.outcome == "fail" for c in cases)),
            "errors": "0",
            "skipped": str(sum(c.outcome == "skipped" for c in cases)),
            "time": "0.000",
            "timestamp": stamp,
            "hostname": host,
        })
        props = ET.SubElement(suite, "properties")
        for k, v in report.properties.items():
            ET.SubElement(props, "property", {"name": k, "value": v})
        for w in report.warnings:
            ET.SubElement(props, "property", {"name": "warning", "value": w})
        for c in cases:
            tc = ET.SubElement(suite, "testcase", {
                "classname": f"evalkit.{report.kind}.{backend}",
                "name": c.name,
                "time": "0.000",
            })
            message, body = c.message, c.detail or c.message
            first = first_of.get((c.name, c.outcome, c.message or c.detail))
            if first is not None and first != backend:
                n = sum(1 for x in report.cases if (x.name, x.outcome, x.message or x.detail) == (c.name, c.outcome, c.message or c.detail))
                message = f"{c.message[:SHORT_REASON]}… (same reason for {n} backends; full text under evalkit.{report.kind}.{first})"
                body = message
            if c.outcome == "fail":
                el = ET.SubElement(tc, "failure", {"message": message, "type": "BoundViolated" if report.kind == "check" else "Regression"})
                el.text = body
            elif c.outcome == "skipped":
                el = ET.SubElement(tc, "skipped", {"message": message})
                el.text = (body if body != message else None) if first is None or first == backend else None
            out = "  ".join(f"{h}: {v}" for h, v in zip(report.columns, c.cells))
            ET.SubElement(tc, "system-out").text = out + (f"\n{c.detail}" if c.detail and c.outcome == "pass" else "")
        if report.warnings:
            ET.SubElement(suite, "system-err").text = "\n".join(f"WARNING: {w}" for w in report.warnings)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(report: Report, path: str | Path, elapsed_s: float = 0.0) -> None:
    atomic_write_bytes(path, render_junit(report, elapsed_s))
