"""Run cases against a server and give each its verdict.

Cases run one after another (their order is the spec's), each under its own time
limit, so one server bug costs one case, not the run. A check that names a
requirement the case does not cite is the suite's own bug (verdict ``error``): the
ids a report names are exactly the ids the cases claim to check.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from voxer_stream.client.h2conn import ClientError

from .case import AMBIENT, Case, CaseFailed, CaseSkipped, Verdict, start_notes
from .context import Context
from .net import TransportFailure

__all__ = ["Result", "Selection", "run_cases"]


@dataclass
class Result:
    case: Case
    verdict: Verdict
    message: str = ""
    failed_requirements: tuple[str, ...] = ()
    recommendations: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0


@dataclass
class Selection:
    """Which cases run: ``--strict``, ``--only``, and the optional feature groups."""

    strict: bool = False
    only: Sequence[str] = ()
    disabled_groups: frozenset[str] = frozenset()
    unclaimed_groups: dict[str, str] = field(default_factory=dict)  # group -> why

    def selects(self, case: Case) -> bool:
        if not self.only or case.order > 0:
            return True  # the summing-up case always runs
        return any(case.id.startswith(p) or p in case.requirements for p in self.only)


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside nested exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _must_ids(case: Case) -> tuple[str, ...]:
    from .spec import requirements

    index = requirements()
    ids = tuple(rid for rid in case.requirements if index[rid].is_must)
    return ids or case.requirements


async def run_case(ctx: Context, case: Case) -> Result:
    notes = start_notes()
    started = time.perf_counter()
    result: Result
    try:
        with trio.fail_after(case.timeout):
            await case.func(ctx)
    except BaseException as raw:
        exc = _leaf(raw)
        if isinstance(exc, CaseFailed):
            stray = [r for r in exc.requirements if r not in case.requirements and r not in AMBIENT]
            if stray:
                result = Result(
                    case,
                    Verdict.ERROR,
                    f"suite bug: a check names {stray}, which the case does not cite ({exc})",
                )
            else:
                result = Result(case, Verdict.FAIL, exc.message, exc.requirements)
        elif isinstance(exc, CaseSkipped):
            result = Result(case, Verdict.SKIP, str(exc))
        elif isinstance(exc, trio.TooSlowError):
            result = Result(
                case,
                Verdict.FAIL,
                f"the case did not finish within {case.timeout:g} s (the server stopped answering)",
                _must_ids(case),
            )
        elif isinstance(exc, TransportFailure | ClientError | trio.BrokenResourceError):
            result = Result(case, Verdict.FAIL, str(exc), _must_ids(case))
        elif isinstance(exc, Exception):
            detail = "".join(traceback.format_exception(exc)[-3:]).strip()
            result = Result(case, Verdict.ERROR, f"the suite failed: {detail}")
        else:
            raise
    else:
        if notes.recommendations:
            result = Result(
                case,
                Verdict.NON_STRICT,
                "; ".join(f"{rid}: {msg}" for rid, msg in notes.recommendations),
            )
        else:
            result = Result(case, Verdict.PASS)
    result.recommendations = list(notes.recommendations)
    result.notes = list(notes.info)
    result.duration = time.perf_counter() - started
    return result


async def run_cases(
    ctx: Context,
    cases: Sequence[Case],
    selection: Selection,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    results: list[Result] = []
    for case in cases:
        if not selection.selects(case):
            continue
        if case.group in selection.disabled_groups:
            result = Result(case, Verdict.DISABLED, f"feature group {case.group!r} is disabled")
        elif case.group in selection.unclaimed_groups:
            result = Result(case, Verdict.SKIP, selection.unclaimed_groups[case.group])
        elif case.strict and not selection.strict:
            result = Result(case, Verdict.SKIP, "a SHOULD case: run with --strict")
        else:
            result = await run_case(ctx, case)
        results.append(result)
        ctx.results.append(result)
        if on_result is not None:
            on_result(result)
    return results
