"""The three forms of a run's outcome: a human summary, a JSON report, JUnit XML.

The human form follows h2spec: one group per spec section, one line per case with
its verdict, and for a failure the requirement it breaks, quoted from the spec, and
what the case accepts. It ends with the summary line ``N passed, N failed, ...``.
"""

from __future__ import annotations

import json
import platform
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .case import Case, Verdict
from .runner import Result
from .spec import requirements, section_titles

__all__ = ["case_line", "human_result", "json_report", "summary_line", "write_junit"]

_MARK = {
    Verdict.PASS: "✔ pass",
    Verdict.FAIL: "✖ FAIL",
    Verdict.ERROR: "! ERROR",
    Verdict.SKIP: "- skip",
    Verdict.NON_STRICT: "~ non-strict",
    Verdict.DISABLED: "- disabled",
}


def case_line(case: Case) -> str:
    ids = ", ".join(case.requirements)
    level = "SHOULD" if case.strict else "MUST"
    group = f" [{case.group}]" if case.group else ""
    if case.role == "client":
        group += " [client: python -m conformance peer]"
    return f"{case.id}{group} ({level}; {ids}): {case.title}"


def list_cases(cases: Sequence[Case], out: TextIO) -> None:
    """``--list``: every case grouped by section, with what it cites and accepts."""
    titles = section_titles()
    section = None
    for case in cases:
        top = case.section.split(".")[0]
        if top != section:
            section = top
            print(f"\n{top}. {titles.get(top, '')}", file=out)
        print(f"  {case_line(case)}", file=out)
        print(textwrap.indent(textwrap.fill("accepts: " + case.accepts, 96), "      "), file=out)


def human_result(result: Result, out: TextIO, *, verbose: bool = False) -> None:
    case = result.case
    print(f"  {_MARK[result.verdict]:<13} {case.id}: {case.title}", file=out)
    if result.verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.NON_STRICT) or verbose:
        if result.message:
            print(textwrap.indent(textwrap.fill(result.message, 92), "        "), file=out)
        index = requirements()
        for rid in result.failed_requirements or ():
            if rid in index:
                quote = f'{rid} ({index[rid].level}): "{index[rid].text}"'
                print(textwrap.indent(textwrap.fill(quote, 92), "        | "), file=out)
        if result.verdict is Verdict.FAIL:
            accepts = "accepts: " + case.accepts
            print(textwrap.indent(textwrap.fill(accepts, 92), "        "), file=out)
    if result.verdict is Verdict.SKIP and result.message and verbose:
        print(f"        ({result.message})", file=out)


def counts(results: Sequence[Result]) -> Counter[Verdict]:
    return Counter(r.verdict for r in results)


def summary_line(results: Sequence[Result]) -> str:
    c = counts(results)
    return (
        f"{c[Verdict.PASS]} passed, {c[Verdict.FAIL]} failed, {c[Verdict.SKIP]} skipped, "
        f"{c[Verdict.ERROR]} errors, {c[Verdict.NON_STRICT]} non-strict, "
        f"{c[Verdict.DISABLED]} disabled ({len(results)} case{'s' if len(results) != 1 else ''})"
    )


def json_report(results: Sequence[Result], meta: dict[str, Any]) -> dict[str, Any]:
    index = requirements()
    c = counts(results)
    return {
        "suite": "voxer-stream conformance",
        **meta,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "summary": {v.value: c[v] for v in Verdict} | {"cases": len(results)},
        "results": [
            {
                "id": r.case.id,
                "section": r.case.section,
                "title": r.case.title,
                "role": r.case.role,
                "level": r.case.level,
                "group": r.case.group,
                "requirements": [
                    {"id": rid, "level": index[rid].level, "text": index[rid].text}
                    for rid in r.case.requirements
                ],
                "accepts": r.case.accepts,
                "verdict": r.verdict.value,
                "message": r.message,
                "failed_requirements": list(r.failed_requirements),
                "recommendations": [{"id": i, "message": m} for i, m in r.recommendations],
                "notes": r.notes,
                "duration": round(r.duration, 4),
            }
            for r in results
        ],
    }


def write_json(path: Path, results: Sequence[Result], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(json_report(results, meta), indent=2) + "\n", encoding="utf-8")


def write_junit(path: Path, results: Sequence[Result], name: str) -> None:
    """JUnit XML (one testsuite per spec section), as CI systems read it."""
    titles = section_titles()
    root = ET.Element("testsuites", name=name)
    by_section: dict[str, list[Result]] = {}
    for result in results:
        by_section.setdefault(result.case.section.split(".")[0], []).append(result)
    for section, items in by_section.items():
        c = counts(items)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{section}. {titles.get(section, '')}".strip(),
            tests=str(len(items)),
            failures=str(c[Verdict.FAIL]),
            errors=str(c[Verdict.ERROR]),
            skipped=str(c[Verdict.SKIP] + c[Verdict.DISABLED]),
            time=f"{sum(r.duration for r in items):.3f}",
        )
        for r in items:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.section{section}",
                name=f"{r.case.id}: {r.case.title}",
                time=f"{r.duration:.3f}",
            )
            text = r.message + (
                "\nrequirements: " + ", ".join(r.failed_requirements)
                if r.failed_requirements
                else ""
            )
            if r.verdict is Verdict.FAIL:
                ET.SubElement(element, "failure", message=r.message[:200]).text = text
            elif r.verdict is Verdict.ERROR:
                ET.SubElement(element, "error", message=r.message[:200]).text = text
            elif r.verdict in (Verdict.SKIP, Verdict.DISABLED):
                ET.SubElement(element, "skipped", message=r.message)
            elif r.verdict is Verdict.NON_STRICT:
                ET.SubElement(element, "system-out").text = "non-strict: " + r.message
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
