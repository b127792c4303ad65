"""JUnit XML for CI systems (Jenkins, GitLab, GitHub test reporters): a rendering of a Report's values.

Follows the Jenkins/Surefire junit-10.xsd that pytest validates its own output against: a <testsuites>
root, one <testsuite> per backend, one <testcase> per bound with classname `evalkit.<kind>.<backend>`.
A violated bound is a <failure>; <skipped> for what the user allowed to go unjudged (or, in compare, what cannot
be tested). A report whose inputs could not be judged (exit 2) is one <testcase> with an <error>, so the file a
CI job uploads says ERROR instead of keeping an earlier PASS. The file starts with evalkit's output marker
(evalkit.check.outputs), which is what lets a later run replace it.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from evalkit.check.outputs import marker_comment
from evalkit.check.results import PARTIAL_MARK, CaseResult, Outcome, Report, Verdict, group_reasons
from evalkit.timeutil import utc_now

SHORT_REASON = 120  # characters of a shared reason repeated in every testcase


def _document(kind: str, root: ET.Element) -> bytes:
    ET.indent(root)
    head = "<?xml version='1.0' encoding='utf-8'?>\n" + marker_comment(kind, "JUnit XML") + "\n"
    return head.encode("utf-8") + ET.tostring(root, encoding="utf-8") + b"\n"


def _render_error(report: Report, elapsed_s: float) -> bytes:
    root = ET.Element("testsuites", {"name": f"evalkit {report.kind}", "tests": "1", "failures": "0", "errors": "1",
                                     "time": f"{elapsed_s:.3f}"})
    suite = ET.SubElement(root, "testsuite", {"name": f"evalkit.{report.kind}", "tests": "1", "failures": "0",
                                              "errors": "1", "skipped": "0", "time": "0.000", "timestamp": utc_now(),
                                              "hostname": socket.gethostname()})
    tc = ET.SubElement(suite, "testcase", {"classname": f"evalkit.{report.kind}", "name": "inputs", "time": "0.000"})
    el = ET.SubElement(tc, "error", {"message": str(report.error), "type": "CannotJudge"})
    el.text = f"{report.error}\n(exit {Verdict.ERROR.exit_code}: the inputs could not be judged; no bound was judged)"
    return _document(report.kind, root)


# A reason shared by several backends: (case name, outcome, reason) -> (the backend whose testcase carries it in
# full, how many backends share it).
_SharedReasons = dict[tuple[str, Outcome, str], tuple[str, int]]


def render_junit(report: Report, elapsed_s: float = 0.0) -> bytes:
    """The report as JUnit XML bytes (UTF-8, with declaration and evalkit's output marker)."""
    if report.verdict is Verdict.ERROR:
        return _render_error(report, elapsed_s)
    root = ET.Element("testsuites", {
        "name": f"evalkit {report.kind}",
        "tests": str(len(report.cases)),
        "failures": str(report.n_failed),
        "errors": "0",
        "time": f"{elapsed_s:.3f}",
    })
    shared = _shared_reasons(report)
    stamp = utc_now()
    host = socket.gethostname()
    for backend in report.backends():
        _backend_suite(root, report, backend, shared, stamp, host)
    return _document(report.kind, root)


def _shared_reasons(report: Report) -> _SharedReasons:
    """The long reasons several backends share (CLIP weights missing for 15): each is written in full once, in the
    first backend's testcase; the others carry its first line and point there, so the file does not repeat 600
    chars 15 times."""
    shared: _SharedReasons = {}
    for g in group_reasons([c for c in report.cases if c.outcome is not Outcome.PASS]):
        if len(g.backends) > 1 and len(g.message) > SHORT_REASON:
            shared[(g.name, g.outcome, g.message)] = (g.backends[0], len(g.backends))
    return shared


def _backend_suite(root: ET.Element, report: Report, backend: str, shared: _SharedReasons, stamp: str,
                   host: str) -> None:
    """One backend's <testsuite>: its properties, a <testcase> per case, and the report's warnings as system-err."""
    cases = [c for c in report.cases if c.backend == backend]
    suite = ET.SubElement(root, "testsuite", {
        "name": f"evalkit.{report.kind}.{backend}",
        "tests": str(len(cases)),
        "failures": str(sum(c.outcome is Outcome.FAIL for c in cases)),
        "errors": "0",
        "skipped": str(sum(c.outcome is Outcome.SKIPPED for c in cases)),
        "time": "0.000",
        "timestamp": stamp,
        "hostname": host,
    })
    partial = _suite_properties(suite, report, backend)
    for c in cases:
        _testcase(suite, report, backend, c, partial, shared)
    if report.warnings:
        ET.SubElement(suite, "system-err").text = "\n".join(f"WARNING: {w}" for w in report.warnings)


def _suite_properties(suite: ET.Element, report: Report, backend: str) -> str:
    """The suite's <properties>: the report's, the backend's partial reason and missing prompts, every warning.
    Returns the partial-quantization line each of its testcases repeats ("" when it quantized fully): a CI system
    shows one testcase at a time."""
    props = ET.SubElement(suite, "properties")
    for k, v in report.properties.items():
        ET.SubElement(props, "property", {"name": k, "value": v})
    info = report.backend_info.get(backend)
    partial = f"{PARTIAL_MARK} partially quantized: {info.partial_reason}" if info and info.partial else ""
    if partial:
        ET.SubElement(props, "property", {"name": "partial_reason", "value": str(info.partial_reason)})
    if info and info.missing_prompts:
        ET.SubElement(props, "property", {"name": "missing_prompts", "value": ",".join(info.missing_prompts)})
    for w in report.warnings:
        ET.SubElement(props, "property", {"name": "warning", "value": w})
    return partial


def _testcase(suite: ET.Element, report: Report, backend: str, c: CaseResult, partial: str,
              shared: _SharedReasons) -> None:
    """One case as a <testcase>: a <failure> or <skipped> carrying its reason (in full only in the first backend's
    testcase when `shared`), and its row of values as system-out."""
    tc = ET.SubElement(suite, "testcase", {
        "classname": f"evalkit.{report.kind}.{backend}",
        "name": c.name,
        "time": "0.000",
    })
    key = (c.name, c.outcome, c.message or c.detail)
    message, body = c.message, c.detail or c.message
    first, count = shared.get(key, (None, 0))
    if first is not None and first != backend:
        message = (f"{c.message[:SHORT_REASON]}… (same reason for {count} backends; full text under "
                   f"evalkit.{report.kind}.{first})")
        body = message
    if c.outcome is Outcome.FAIL:
        el = ET.SubElement(tc, "failure", {"message": message,
                                           "type": "BoundViolated" if report.kind == "check" else "Regression"})
        el.text = body
    elif c.outcome is Outcome.SKIPPED:
        el = ET.SubElement(tc, "skipped", {"message": message})
        el.text = (body if body != message else None) if first is None or first == backend else None
    out = "  ".join(f"{h}: {v}" for h, v in zip(report.columns, c.row))
    extra = [x for x in (c.detail if c.detail and c.outcome is Outcome.PASS else "", partial) if x]
    ET.SubElement(tc, "system-out").text = "\n".join([out, *extra])


def write_junit(report: Report, path: str | Path, elapsed_s: float = 0.0) -> None:
    """Write the JUnit file atomically (callers go through evalkit.check.outputs, which checks the path first)."""
    from evalkit.io import atomic_write_bytes

    atomic_write_bytes(path, render_junit(report, elapsed_s))
