"""spec/protocol.md: the requirement index (Appendix A) and the error registry (section 9).

The code cites requirement ids (``ProtocolError.requirement``, comments); a citation of
an id the spec does not define, an id defined twice, or an index that drifted from the
body is a bug this file catches. The registry table must equal ``ErrorCode``.
"""

from __future__ import annotations

import re
from pathlib import Path

from voxer_stream.wire import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "protocol.md"
PACKAGE = ROOT / "voxer_stream"

ID = r"VXS-(?:[1-9][0-9]*(?:\.[1-9][0-9]*)?)-[1-9][0-9]*"
LEVELS = {
    "MUST",
    "MUST NOT",
    "REQUIRED",
    "SHALL",
    "SHALL NOT",
    "SHOULD",
    "SHOULD NOT",
    "RECOMMENDED",
    "NOT RECOMMENDED",
    "MAY",
    "OPTIONAL",
}
SECTIONS = {
    "1",
    "2.1",
    "2.2",
    "2.3",
    "3.1",
    "3.2",
    "3.3",
    *(f"4.{n}" for n in range(1, 13)),
    *(f"5.{n}" for n in range(1, 8)),
    *(f"6.{n}" for n in range(1, 6)),
    "7",
    "8",
    "9",
    "10",
    "11",
    "12",
    *(f"13.{n}" for n in range(1, 9)),
}
# Ids whose meaning is fixed by the project (the code cites them); see the spec body.
RESERVED = re.findall(
    r"\S+",
    """
2.1-1 2.1-2 2.2-1 2.2-2 2.3-1 3.1-1 3.1-2 3.1-3 3.1-4 3.1-5 3.1-6 3.1-7 3.2-1 3.2-2 3.2-3
4.2-4 5.1-1 5.1-2 5.2-1 5.2-2 5.2-3 5.2-4 5.2-5 5.3-1 5.3-2 5.3-3 5.3-4 5.3-5 5.4-1 5.4-2
5.5-1 5.5-2 5.5-3 5.5-4 5.5-5 5.6-1 5.6-2 5.7-1 5.7-2 5.7-3 6.1-1 6.1-2 6.1-3 6.1-4 6.1-5
6.2-1 6.2-2 6.2-3 6.2-4 6.2-5 6.3-1 6.3-2 6.4-1 6.4-2 6.5-1 6.5-2 6.5-3 7-1 7-2 7-3
8-1 8-2 8-3 8-4 9-1 10-1 10-2 10-3 10-4 10-5 10-6 10-7 11-1 11-2 11-3 11-4 11-5
12-1 12-2 12-3 12-4 12-5 12-6 12-7 12-8 12-9 12-10 12-11 12-12
8-5 8-6 8-7 8-8 8-9 8-10 8-11 13.1-1 13.1-2 13.1-3 13.1-4 13.2-1 13.2-2 13.2-3 13.2-4 13.2-5
13.2-6 13.3-1 13.3-2 13.3-3 13.3-4 13.3-5 13.3-6 13.4-1 13.4-2 13.4-3 13.5-1 13.5-2 13.5-3
13.5-4 13.5-5 13.5-6 13.5-7 13.6-1 13.7-1 13.7-2 13.8-1 13.8-2
""",
)


def _text() -> str:
    return SPEC.read_text(encoding="utf-8")


def _split() -> tuple[str, str]:
    """(body, appendix A) of the spec."""
    text = _text()
    body, rest = text.split("## Appendix A.", 1)
    appendix_a, _ = rest.split("## Appendix B.", 1)
    return body, appendix_a


def _index() -> list[tuple[str, str, str]]:
    _, appendix_a = _split()
    rows = []
    for line in appendix_a.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[0].startswith("VXS-"):
            rows.append((cells[0], cells[1], cells[2].replace("\\|", "|")))
    return rows


def _definitions() -> dict[str, str]:
    """Bracketed ids of the body, each with its paragraph (whitespace collapsed)."""
    body, _ = _split()
    found: dict[str, str] = {}
    for match in re.finditer(rf"\[({ID})\]\s*(.*?)(?:\n\s*\n|\Z)", body, re.DOTALL):
        assert match.group(1) not in found, f"{match.group(1)} defined twice"
        found[match.group(1)] = " ".join(match.group(2).split())
    return found


def _strongest(sentence: str) -> str:
    if re.search(r"\bMUST\b(?! NOT)|\bREQUIRED\b|\bSHALL\b(?! NOT)", sentence):
        return "MUST"
    if re.search(r"\bMUST NOT\b|\bSHALL NOT\b", sentence):
        return "MUST NOT"
    if re.search(r"(?<!NOT )\bRECOMMENDED\b|\bSHOULD\b(?! NOT)", sentence):
        return "SHOULD"
    if re.search(r"\bSHOULD NOT\b|\bNOT RECOMMENDED\b", sentence):
        return "SHOULD NOT"
    if re.search(r"\bMAY\b|\bOPTIONAL\b", sentence):
        return "MAY"
    raise AssertionError(f"no BCP 14 keyword in: {sentence}")


def test_index_ids_are_unique_and_well_formed() -> None:
    ids = [rid for rid, _, _ in _index()]
    assert len(ids) >= len(RESERVED)
    assert len(set(ids)) == len(ids), "an id is listed twice in Appendix A"
    for rid in ids:
        assert re.fullmatch(ID, rid), rid
        assert rid[4:].rsplit("-", 1)[0] in SECTIONS, f"{rid}: no such section"


def test_index_levels_are_bcp14_keywords() -> None:
    for rid, level, _ in _index():
        assert level in LEVELS, f"{rid}: {level!r}"


def test_every_index_id_is_defined_exactly_once_in_the_body() -> None:
    text = _text()
    for rid, _, _ in _index():
        assert text.count(f"[{rid}]") == 1, rid


def test_every_body_id_is_in_the_index() -> None:
    assert set(_definitions()) == {rid for rid, _, _ in _index()}


def test_index_sentences_and_levels_match_the_body() -> None:
    definitions = _definitions()
    for rid, level, sentence in _index():
        assert sentence == definitions[rid], rid
        assert level == _strongest(sentence), rid


def test_index_is_in_section_order() -> None:
    def key(rid: str) -> tuple[list[int], int]:
        section, n = rid[4:].rsplit("-", 1)
        return [int(x) for x in section.split(".")], int(n)

    ids = [rid for rid, _, _ in _index()]
    assert ids == sorted(ids, key=key)


def test_reserved_ids_are_defined() -> None:
    defined = {rid for rid, _, _ in _index()}
    assert {f"VXS-{r}" for r in RESERVED} - defined == set()


def test_every_id_cited_in_the_code_is_defined() -> None:
    defined = {rid for rid, _, _ in _index()}
    cited: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for rid in re.findall(r"VXS-[0-9.]+-[0-9]+", path.read_text(encoding="utf-8")):
            cited.setdefault(rid, []).append(str(path.relative_to(ROOT)))
    missing = {rid: files for rid, files in cited.items() if rid not in defined}
    assert missing == {}


def test_error_registry_equals_error_code() -> None:
    body, _ = _split()
    section = body.split("## 9. Error registry", 1)[1].split("## 10.", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (\d{3}) \| (.+?) \|$", section, re.MULTILINE)
    table = {int(code): (name, int(status), meaning) for code, name, status, meaning in rows}
    expected = {int(c): (c.name, c.http_status, c.description) for c in ErrorCode}
    assert table == expected


def test_every_registry_code_is_mentioned_by_name_outside_the_table() -> None:
    body, _ = _split()
    section_9 = body.split("## 9. Error registry", 1)[1].split("## 10.", 1)[0]
    elsewhere = body.replace(section_9, "")
    unused = [c.name for c in ErrorCode if c.name not in elsewhere]
    assert unused == []


def test_hex_examples_in_the_spec_are_valid_frames() -> None:
    """Every frame written out in hex (sections 4, 10, appendix B) decodes, and is the
    deterministic encoding of what it decodes to."""
    from voxer_stream.wire import decode_frame, encode_frame

    examples = re.findall(r"(?<![0-9a-fx])[0-9a-f]{20,}(?![0-9a-f])", _text())
    assert len(examples) >= 20
    for example in examples:
        data = bytes.fromhex(example)
        assert encode_frame(decode_frame(data)) == data, example
