"""Section 1: the claim itself. Runs last and sums up the MUST cases before it."""

from __future__ import annotations

from ..case import Verdict, case, expect
from ..context import Context


@case(
    "1/server-role",
    "the server meets every MUST requirement of the server role that the suite checked",
    requirements=("VXS-1-1",),
    accepts="no MUST case of this run failed (skipped and disabled cases are not counted)",
    order=1_000_000,
)
async def server_role(ctx: Context) -> None:
    failed = [r for r in ctx.results if r.verdict is Verdict.FAIL and not r.case.strict]
    ids = sorted({rid for r in failed for rid in r.failed_requirements})
    expect(
        not failed,
        "VXS-1-1",
        f"{len(failed)} MUST case(s) failed ({', '.join(r.case.id for r in failed)}), "
        f"breaking {', '.join(ids)}",
    )
