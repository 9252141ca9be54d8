"""Coverage of the spec by the conformance suite, read from the spec's requirement index.

Every MUST and MUST NOT of Appendix A is cited by at least one case (server or client
role); the SHOULDs and MAYs no case cites are exactly the list in conformance/README.md,
so the README never claims more than the suite checks.
"""

from __future__ import annotations

import re
from pathlib import Path

from conformance.case import all_cases
from conformance.spec import requirements

README = Path(__file__).resolve().parent.parent / "conformance" / "README.md"


def cited() -> set[str]:
    return {rid for case in all_cases() for rid in case.requirements}


def test_every_must_requirement_is_cited_by_a_case() -> None:
    musts = [r.id for r in requirements().values() if r.is_must]
    assert len(musts) > 80
    missing = [rid for rid in musts if rid not in cited()]
    assert not missing, f"MUST requirements no conformance case cites: {missing}"


def test_the_readme_lists_the_uncovered_should_and_may_requirements() -> None:
    uncovered = sorted(
        (r.id for r in requirements().values() if not r.is_must and r.id not in cited()),
        key=lambda rid: [int(p) for p in re.findall(r"\d+", rid)],
    )
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- uncovered:start -->")[1].split("<!-- uncovered:end -->")[0]
    listed = re.findall(r"`(VXS-[0-9.]+-\d+)`", block)
    assert listed == uncovered, f"README lists {listed}, the suite leaves {uncovered} uncovered"


def test_every_case_quotes_requirements_of_the_spec() -> None:
    for case in all_cases():
        for rid, level, text in case.quotes():
            assert text and level, (case.id, rid)
        assert case.accepts.strip(), f"{case.id} states no accepted outcome"
        assert re.fullmatch(r"\d+(\.\d+)*/[a-z0-9-]+", case.id), case.id
