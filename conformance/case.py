"""Cases, checks and verdicts: the vocabulary every group of cases is written in.

A case is an async function of a ``Context`` registered with ``@case``. It cites the
requirement ids it checks, states the outcomes it accepts, and calls ``expect`` for
each check; a failed check names the requirement it breaks, so a report says *which*
sentence of the spec an implementation does not meet, not just that a test failed.

Verdicts follow the OCI distribution-spec suite and Autobahn: pass, fail (the
implementation's fault), error (the suite's own fault), skip (with its reason),
non-strict (allowed, but a SHOULD or RECOMMENDED is not met), disabled (an optional
feature group the implementer turned off).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal, NoReturn

from .spec import requirements as spec_requirements

if TYPE_CHECKING:
    from .context import Context

__all__ = [
    "AMBIENT",
    "Case",
    "CaseFailed",
    "CaseSkipped",
    "Verdict",
    "all_cases",
    "case",
    "expect",
    "fail",
    "recommend",
    "skip",
]


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"
    NON_STRICT = "non-strict"
    DISABLED = "disabled"


Role = Literal["server", "client"]
CaseFunc = Callable[["Context"], Awaitable[None]]

#: Requirements every server frame is checked against, in every case, by the frame
#: reader (``net.FrameReader``): a case may fail on them without citing them.
AMBIENT: Final = frozenset({"VXS-3.1-1", "VXS-3.1-3", "VXS-3.1-4", "VXS-3.1-9", "VXS-9-1"})


@dataclass(frozen=True)
class Case:
    """One check of one behaviour, citing the requirements it verifies."""

    id: str
    section: str
    title: str
    requirements: tuple[str, ...]
    accepts: str
    func: CaseFunc
    role: Role = "server"
    group: str | None = None
    strict: bool = False
    timeout: float = 30.0
    order: int = 0

    @property
    def level(self) -> str:
        return "SHOULD" if self.strict else "MUST"

    def quotes(self) -> list[tuple[str, str, str]]:
        """(id, level, sentence) of each cited requirement, from the spec's index."""
        index = spec_requirements()
        return [(rid, index[rid].level, index[rid].text) for rid in self.requirements]


_REGISTRY: dict[str, Case] = {}


def case(
    case_id: str,
    title: str,
    *,
    requirements: tuple[str, ...] | list[str],
    accepts: str,
    role: Role = "server",
    group: str | None = None,
    strict: bool | None = None,
    timeout: float = 30.0,
    order: int = 0,
) -> Callable[[CaseFunc], CaseFunc]:
    """Register a case. ``case_id`` is ``"<section>/<slug>"``, e.g. ``"5.3/sequence-gap"``.

    A case is strict (run only with ``--strict``) when it cites no MUST-level
    requirement, unless ``strict`` says otherwise. Cases run in spec order; a case
    with a higher ``order`` runs after all others (the summing-up claim case).
    """
    index = spec_requirements()
    cited = tuple(requirements)
    unknown = [rid for rid in cited if rid not in index]
    if unknown:
        raise ValueError(f"case {case_id} cites ids that are not in the spec: {unknown}")
    if not cited:
        raise ValueError(f"case {case_id} cites no requirement")
    if strict is None:
        strict = not any(index[rid].is_must for rid in cited)

    def register(func: CaseFunc) -> CaseFunc:
        if case_id in _REGISTRY:
            raise ValueError(f"duplicate case id {case_id}")
        _REGISTRY[case_id] = Case(
            id=case_id,
            section=case_id.split("/", 1)[0],
            title=title,
            requirements=cited,
            accepts=accepts,
            func=func,
            role=role,
            group=group,
            strict=strict,
            timeout=timeout,
            order=order,
        )
        return func

    return register


def _section_key(section: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in section.split("."))


def all_cases(role: Role | None = None) -> list[Case]:
    """Every registered case (the ``cases`` package imports them all), in spec order."""
    from . import cases  # noqa: F401  (registers the cases)

    found = [c for c in _REGISTRY.values() if role is None or c.role == role]
    return sorted(found, key=lambda c: (c.order, _section_key(c.section)))


# -- checks -------------------------------------------------------------------


class CaseFailed(Exception):
    """The implementation broke a requirement."""

    def __init__(self, requirement: str | tuple[str, ...], message: str) -> None:
        ids = (requirement,) if isinstance(requirement, str) else tuple(requirement)
        super().__init__(f"{', '.join(ids)}: {message}")
        self.requirements = ids
        self.message = message


class CaseSkipped(Exception):
    """The case cannot run here; the message says why."""


@dataclass
class _Notes:
    recommendations: list[tuple[str, str]] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


_notes: contextvars.ContextVar[_Notes] = contextvars.ContextVar("conformance_notes")


def expect(condition: object, requirement: str | tuple[str, ...], message: str) -> None:
    """Fail the case, naming ``requirement``, unless ``condition`` holds."""
    if not condition:
        raise CaseFailed(requirement, message)


def fail(requirement: str | tuple[str, ...], message: str) -> NoReturn:
    raise CaseFailed(requirement, message)


def recommend(condition: object, requirement: str, message: str) -> None:
    """A SHOULD inside a MUST case: when unmet the verdict is non-strict, not fail."""
    if not condition:
        _current().recommendations.append((requirement, message))


def note(message: str) -> None:
    """A line for the report (what was observed), whatever the verdict."""
    _current().info.append(message)


def skip(reason: str) -> NoReturn:
    raise CaseSkipped(reason)


def _current() -> _Notes:
    try:
        return _notes.get()
    except LookupError:
        notes = _Notes()
        _notes.set(notes)
        return notes


def start_notes() -> _Notes:
    notes = _Notes()
    _notes.set(notes)
    return notes
