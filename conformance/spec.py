"""What the suite knows of the protocol, read from ``spec/protocol.md`` itself.

The requirement index (Appendix A) gives every id its level and sentence, so a case
quotes the requirement it checks word for word; the error registry (section 9) gives
every code its name and HTTP status. Reading both from the spec, rather than from the
reference server's ``wire.errors``, keeps the suite independent of the implementation
it judges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

SPEC_PATH: Final = Path(__file__).resolve().parent.parent / "spec" / "protocol.md"
CDDL_PATH: Final = Path(__file__).resolve().parent.parent / "proto" / "frames.cddl"

#: The levels of BCP 14, strongest first; MUST NOT and SHALL NOT count as MUST.
STRICT_LEVELS: Final = ("SHOULD", "SHOULD NOT", "RECOMMENDED", "NOT RECOMMENDED")
MUST_LEVELS: Final = ("MUST", "MUST NOT", "REQUIRED", "SHALL", "SHALL NOT")


@dataclass(frozen=True)
class Requirement:
    id: str
    level: str
    text: str

    @property
    def is_must(self) -> bool:
        return self.level in MUST_LEVELS

    @property
    def is_should(self) -> bool:
        return self.level in STRICT_LEVELS


@dataclass(frozen=True)
class RegistryEntry:
    code: int
    name: str
    http_status: int
    meaning: str


_ROW: Final = re.compile(r"^\| (VXS-[0-9.]+-\d+) \| ([A-Z ]+) \| (.*) \|$")
_REGISTRY_ROW: Final = re.compile(r"^\| (\d{3}) \| ([A-Z_]+) \| (\d{3}) \| (.*) \|$")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


@cache
def requirements(path: Path = SPEC_PATH) -> dict[str, Requirement]:
    """Appendix A of the spec: id -> requirement, in the spec's order."""
    table = _section(path.read_text(encoding="utf-8"), "## Appendix A.")
    found: dict[str, Requirement] = {}
    for line in table.splitlines():
        if match := _ROW.match(line):
            rid, level, text = match.groups()
            found[rid] = Requirement(rid, level.strip(), text.replace("\\|", "|"))
    if not found:
        raise RuntimeError(f"no requirement index found in {path}")
    return found


@cache
def registry(path: Path = SPEC_PATH) -> dict[int, RegistryEntry]:
    """Section 9 of the spec: code -> (name, HTTP status, meaning)."""
    table = _section(path.read_text(encoding="utf-8"), "## 9. Error registry")
    entries: dict[int, RegistryEntry] = {}
    for line in table.splitlines():
        if match := _REGISTRY_ROW.match(line):
            code, name, status, meaning = match.groups()
            entries[int(code)] = RegistryEntry(int(code), name, int(status), meaning)
    if not entries:
        raise RuntimeError(f"no error registry found in {path}")
    return entries


def code_of(name: str) -> int:
    """The registry code of an error name (``"SEQUENCE_GAP"`` -> 400)."""
    for entry in registry().values():
        if entry.name == name:
            return entry.code
    raise KeyError(name)


@cache
def section_titles(path: Path = SPEC_PATH) -> dict[str, str]:
    """ "5" -> "Upload state machine": the spec's numbered top-level sections."""
    titles: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^## (\d+)\. (.+)$", line):
            titles[match.group(1)] = match.group(2).strip()
    return titles
