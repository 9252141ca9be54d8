"""``python -m conformance peer``: a scripted reference server that checks a client.

The client under test points its talker or listener at the peer and sends, as its
bearer token, the name of a scenario (``Authorization: Bearer drop-mid-upload``). The
peer plays that scenario (well-behaved, or misbehaving on purpose: a dropped
connection mid-upload, acks out of order, malformed frames, RST_STREAM after a
complete response, a listen stream with a doubled chunk...), judges what the client
did, and prints a verdict that names the requirements of ``spec/protocol.md`` it
checked, as the server suite does. The scenarios are client-role cases
(``peer_talker``, ``peer_listener``); ``python -m conformance --list`` lists them.

    python -m conformance peer --port 8751 [--json report.json] [--junit report.xml]

The first line of output is ``peer listening on http://127.0.0.1:PORT`` (``--port 0``
picks a free port). SIGINT or SIGTERM ends the run: the summary is printed, the reports
are written (scenarios no client ran are skipped), and the exit status is 1 if a
scenario failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

import trio

from voxer_stream.wire import Chunk, Error, Open

from . import peer_listener, peer_talk, peer_talker  # noqa: F401  (registers the scenarios)
from .case import Case, CaseFailed, Verdict
from .peer_core import (
    PeerConnection,
    PeerStream,
    Received,
    Scenario,
    Timing,
    case_of,
    scenarios,
)
from .report import human_result, summary_line, write_json, write_junit
from .runner import Result, run_case

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Peer", "main"]


class Peer:
    """The reference peer: serves scenarios to clients and collects their verdicts."""

    def __init__(
        self, on_result: Callable[[Result], None] | None = None, timing: Timing | None = None
    ) -> None:
        self.on_result = on_result
        self.timing = timing or Timing()
        self.results: list[Result] = []
        self.url = ""
        self._uploads: dict[tuple[str, str], trio.MemorySendChannel[PeerStream]] = {}
        self._history: dict[str, list[Chunk]] = {}
        self._changed = trio.Event()
        self._started: set[str] = set()
        self._nursery: trio.Nursery | None = None

    # -- serving ---------------------------------------------------------------------

    async def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        self.url = f"http://{host}:{bound}"
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.url)

    async def _connection(self, sock: trio.SocketStream) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await PeerConnection(sock, self._request).run()

    def _request(self, stream: PeerStream) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._route, stream)

    def _scenario(self, token: str) -> Scenario | None:
        found = scenarios()
        if token in found:
            return found[token]
        for item in found.values():
            if token in (item.case_id, item.case_id.split("/", 1)[1]):
                return item
        return None

    async def _route(self, stream: PeerStream) -> None:
        item = self._scenario(stream.token)
        if stream.method == "GET" and stream.path == "/v1/health":
            stream.respond_nowait(200, "application/json")
            await stream.send(b'{"status": "ok", "version": "conformance-peer"}', end=True)
            return
        upload = stream.method == "POST" and stream.path == "/v1/upload"
        listen = stream.method == "GET" and peer_listener.LISTEN_PATH.match(stream.path)
        if not (upload or listen):
            body = {"error": {"code": 302, "name": "NOT_FOUND", "detail": "the peer serves "
                    "POST /v1/upload and GET /v1/messages/{id}/listen"}}  # fmt: skip
            stream.respond_nowait(404, "application/json")
            await stream.send(json.dumps(body).encode(), end=True)
            return
        kind = "talker" if upload else "listener"
        if item is None or item.kind != kind:
            names = ", ".join(n for n, s in scenarios().items() if s.kind == kind)
            detail = f"use a {kind} scenario as the bearer token: {names}"
            print(f"peer: refused {stream.method} {stream.path} with token {stream.token!r}")
            stream.respond_nowait(401)
            await stream.send(Error(code=200, name="UNAUTHENTICATED", detail=detail), end=True)
            return
        if listen:
            listening = peer_listener.Listening(case_of(item), stream, self.timing)
            await self._judge(item, listening, lambda: [stream])
            return
        await self._upload(item, stream)

    async def _upload(self, item: Scenario, stream: PeerStream) -> None:
        try:
            first = await stream.next(self.timing.idle)
        except CaseFailed as exc:
            stream.unread(exc)
            first = None
        if isinstance(first, Received):
            stream.unread(first)
        msg = (
            first.frame.msg if isinstance(first, Received) and isinstance(first.frame, Open) else ""
        )
        key = (item.name, msg)
        if msg and key in self._uploads:
            await self._uploads[key].send(stream)
            return
        send, receive = trio.open_memory_channel[PeerStream](math.inf)
        if msg:
            self._uploads[key] = send
        talk = peer_talk.Talk(case_of(item), stream, receive, self._history, self.timing)
        try:
            await self._judge(item, talk, lambda: talk.streams or [stream])
        finally:
            if self._uploads.get(key) is send:
                del self._uploads[key]
            send.close()
            async for late in receive:  # arrived as the session ended: a new run
                self._request(late)

    async def _judge(
        self, item: Scenario, session: object, streams: Callable[[], list[PeerStream]]
    ) -> None:
        case = case_of(item)
        self._started.add(case.id)

        async def play(_ctx: Context) -> None:
            await item.script(session)

        result = await run_case(cast("Context", None), replace(case, func=play))
        result.case = case
        for stream in streams():
            await _finish(stream)
        self.results.append(result)
        event, self._changed = self._changed, trio.Event()
        event.set()
        if self.on_result is not None:
            self.on_result(result)

    # -- results ---------------------------------------------------------------------

    async def wait_result(self, name: str, count: int = 1, within: float = 15.0) -> Result:
        """The ``count``-th verdict of scenario ``name`` (the tests wait on this)."""
        with trio.fail_after(within):
            while True:
                found = [r for r in self.results if r.case.id.endswith(f"/client-{name}")]
                if len(found) >= count:
                    return found[count - 1]
                await self._changed.wait()

    def report(self) -> list[Result]:
        """Every verdict, plus a skip for each scenario no client ran, in spec order."""
        ran = {r.case.id for r in self.results}
        cases = [case_of(s) for s in scenarios().values()]
        unrun = [
            Result(
                c,
                Verdict.SKIP,
                "interrupted: the peer stopped before its verdict"
                if c.id in self._started
                else "not run: no client used this scenario's token",
            )
            for c in cases
            if c.id not in ran
        ]
        order = {c.id: i for i, c in enumerate(sorted(cases, key=_spec_order))}
        return sorted([*self.results, *unrun], key=lambda r: order.get(r.case.id, 0))


def _spec_order(case: Case) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case.section.split("."))


async def _finish(stream: PeerStream) -> None:
    """Leave no stream of a finished scenario hanging: a client blocked on it is freed."""
    if stream.gone or stream.conn.closed:
        return
    if not stream.finished:
        stream.reset_nowait(8)  # CANCEL: the scenario is over
    elif stream.body_open:
        stream.reset_nowait(0)  # NO_ERROR after a complete response (RFC 9113 8.1)
    await stream.flush()


# -- the command line -----------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance peer",
        description="Serve scripted scenarios to a voxer-stream client and judge it. The "
        "client sends a scenario's name as its bearer token.",
    )
    parser.add_argument("--port", type=int, default=8751, help="TCP port (0: any free port)")
    parser.add_argument("--json", type=Path, help="write the JSON report here on exit")
    parser.add_argument("--junit", type=Path, help="write JUnit XML here on exit")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="details for every verdict")
    return parser


def usage(out: TextIO) -> None:
    print(
        "Scenarios: send the name as the bearer token.\n"
        f"  talkers: POST /v1/upload, one message of at least {peer_talk.MIN_CHUNKS} "
        "chunks per scenario\n"
        "  listeners: GET /v1/messages/<any id>/listen",
        file=out,
    )
    for name, item in scenarios().items():
        case = case_of(item)
        level = "SHOULD" if case.strict else "MUST"
        print(f"  {name:<22} [{item.kind}, {level}] {case.title}", file=out)


async def run(args: argparse.Namespace) -> list[Result]:
    def show(result: Result) -> None:
        human_result(result, sys.stdout, verbose=args.verbose)
        sys.stdout.flush()

    peer = Peer(on_result=show)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(peer.serve, args.port)
            print(f"peer listening on {url}", flush=True)
            usage(sys.stdout)
            print(flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    return peer.report()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list:
        usage(sys.stdout)
        return 0
    try:
        results = trio.run(run, args)
    except BaseExceptionGroup as group:
        failure = group.subgroup(OSError)
        if failure is None:
            raise
        print(f"peer: cannot listen on port {args.port}: {failure.exceptions[0]}", file=sys.stderr)
        return 2
    meta = {"mode": "peer", "argv": ["peer", *(argv or [])]}
    if args.json:
        write_json(args.json, results, meta)
    if args.junit:
        write_junit(args.junit, results, "voxer-stream client conformance")
    print()
    print(summary_line(results))
    bad = [r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    return 1 if bad else 0
