"""``python -m conformance``: run the suite against a server, or serve as a reference peer.

    python -m conformance --server http://127.0.0.1:8750            # MUST cases
    python -m conformance --server URL --strict --json r.json --junit r.xml
    python -m conformance --list                                     # the cases, no run
    python -m conformance model --server URL                         # random interleavings
    python -m conformance peer --port 8751                           # check a client

The exit status is 0 when no case failed or errored, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from .case import all_cases
from .context import Context, account_arg
from .report import human_result, list_cases, summary_line, write_json, write_junit
from .runner import Result, Selection, run_cases
from .spec import section_titles

#: Optional feature groups: a server claims them (default) or the user disables them.
GROUPS = {
    "websocket": "the WebSocket binding (section 11)",
    "webrtc": "the WebRTC binding (section 12)",
    "tls": "HTTP/2 over TLS (needs --tls-server)",
    "push": "Web Push delivered to a push service on this host (needs --push)",
}


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Check a voxer-stream server against spec/protocol.md, black-box.",
        epilog="Other modes: 'python -m conformance model --help', "
        "'python -m conformance peer --help'.",
    )
    parser.add_argument("--server", help="the server's base URL, e.g. http://127.0.0.1:8750")
    parser.add_argument("--tls-server", help="the same server's https:// URL (for VXS-10-1)")
    parser.add_argument("--cacert", type=Path, help="CA certificate for --tls-server")
    parser.add_argument(
        "--account",
        type=account_arg,
        action="append",
        default=[],
        metavar="USER:PASS",
        help="use existing accounts (up to 3, in the roles alice, bob, carol) instead "
        "of registering new ones",
    )
    parser.add_argument("--strict", action="store_true", help="also run the SHOULD cases")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run cases whose id starts with this, or that cite this requirement id (repeatable)",
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        choices=sorted(GROUPS),
        help="disable an optional feature group",
    )
    parser.add_argument(
        "--abandon-after",
        type=float,
        metavar="SECONDS",
        help="the server's period for closing abandoned live messages, if 20 s or less "
        "(runs the strict case for VXS-5.7-3)",
    )
    parser.add_argument(
        "--rtc-connect-timeout",
        type=float,
        metavar="SECONDS",
        help="the server's period for giving up a WebRTC peer that does not connect, if "
        "20 s or less (runs the strict case for VXS-12-10)",
    )
    parser.add_argument(
        "--rtc-max-sessions",
        type=int,
        metavar="N",
        help="the server's limit of WebRTC sessions per account, if 10 or less (runs the "
        "strict case for VXS-12-12)",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="the server accepts Web Push endpoints on http://127.0.0.1 and reaches this "
        "host (the reference server: serve --allow-local-push): runs the cases that receive "
        "pushes (VXS-13.7-2)",
    )
    parser.add_argument(
        "--slow",
        action="store_true",
        help="also run the MUST cases that wait for a fixed period of the spec (16 s for the "
        "sync stream's keep-alive comment, VXS-13.5-7)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a frame")
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--junit", type=Path, help="write JUnit XML here")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="details for every case")
    return parser


async def run_suite(args: argparse.Namespace) -> list[Result]:
    ctx = Context(url=args.server.rstrip("/"), timeout=args.timeout, strict=args.strict)
    ctx.tls_url = args.tls_server
    ctx.cacert = args.cacert
    ctx.abandon_after = args.abandon_after
    ctx.rtc_connect_timeout = args.rtc_connect_timeout
    ctx.rtc_max_sessions = args.rtc_max_sessions
    ctx.push = args.push
    ctx.slow = args.slow
    unclaimed = {}
    if not args.tls_server:
        unclaimed["tls"] = "no --tls-server given"
    if not args.push:
        unclaimed["push"] = (
            "no --push given (the suite runs a push service on 127.0.0.1: pass --push if "
            "the server accepts http://127.0.0.1 push endpoints, as the reference server "
            "does with serve --allow-local-push)"
        )
    selection = Selection(
        strict=args.strict,
        only=args.only,
        disabled_groups=frozenset(args.disable),
        unclaimed_groups=unclaimed,
    )
    titles = section_titles()
    printed: set[str] = set()

    def show(result: Result) -> None:
        top = result.case.section.split(".")[0]
        if top not in printed:
            printed.add(top)
            print(f"\n{top}. {titles.get(top, '')}")
        human_result(result, sys.stdout, verbose=args.verbose)
        sys.stdout.flush()

    try:
        await ctx.set_up(args.account)
        return await run_cases(ctx, all_cases("server"), selection, show)
    finally:
        await ctx.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "peer":
        from .peer import main as peer_main

        return int(peer_main(argv[1:]))
    if argv and argv[0] == "model":
        from .model import main as model_main

        return int(model_main(argv[1:]))
    parser = server_parser()
    args = parser.parse_args(argv)
    if args.list:
        list_cases(all_cases(), sys.stdout)
        return 0
    if not args.server:
        parser.error("--server URL is required (or --list)")
    print(f"voxer-stream conformance: {args.server}" + (" (strict)" if args.strict else ""))
    results = trio.run(run_suite, args)
    meta = {"server": args.server, "strict": args.strict, "argv": argv}
    if args.json:
        write_json(args.json, results, meta)
    if args.junit:
        write_junit(args.junit, results, "voxer-stream conformance")
    print()
    print(summary_line(results))
    bad = [r for r in results if r.verdict.value in ("fail", "error")]
    return 1 if bad else 0
