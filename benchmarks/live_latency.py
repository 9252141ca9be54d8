"""live-latency: one talker, N live listeners over HTTP/2 or WebSocket, latency per chunk.

``python -m benchmarks live-latency [--quick] [--duration 25] [--listeners 1 10 100 1000]
[--transport h2|ws]``

For each N the scenario starts the shipped server as its own process, creates two
accounts and a thread over REST, then runs the load in separate processes:

* one talker process uploads a live message over ``POST /v1/upload`` (HTTP/2, full
  duplex, ``H2Connection`` + the ``UploadClient`` state machine): one real Opus
  packet (20 ms) per chunk, chunk ``seq`` sent at ``t0 + seq * 20 ms``. Open loop:
  the schedule never waits for the server, so a stall shows up as latency of every
  chunk behind it (no coordinated omission);
* listener processes each run many ``GET /v1/messages/{id}/listen?from_seq=0``
  streams on trio, all joined (``live`` frame received) before the talker starts.
  A few "recording" listeners (``--record``, 5 by default) get a connection each
  and timestamp every chunk; the others share HTTP/2 connections, up to
  ``--streams-per-conn`` (50) streams each. Every listener checks its seq
  sequence: lost, reordered and duplicated chunks are counted (all must be 0).

  With ``--transport ws`` every listener, recording or not, listens over the WebSocket
  binding instead (``/v1/ws``, subprotocol ``voxer-stream.v1``, an ``auth`` frame then
  a ``listen`` frame, one frame per binary message): one connection per listener, as
  WebSocket has no streams (``--streams-per-conn`` does not apply). The talker stays
  on HTTP/2.

Latency = listener receive time - intended send time, both ``time.monotonic_ns()``
(CLOCK_MONOTONIC is system-wide on Linux, so it compares across processes). The
first ``--warmup`` seconds are discarded. Server CPU (utime + stime from
``/proc/<pid>/stat``) is read over the same measured window and divided by the
deliveries in it (chunks x listeners). Results: ``<out>/live-latency.json`` and
``<out>/live-latency.png``.

``--baseline relay`` (the default without ``--quick``) runs, for each N, the same load
against ``benchmarks/baselines/relay.py`` too: the same frames relayed from memory over
raw trio TCP, no HTTP and no storage, the floor for this stack. The two alternate in
one invocation (voxer, relay, voxer, relay ... ``--rounds`` times, fresh processes each
run) so that a drift of the shared machine hits both; each variant's rounds are merged
(percentiles from the merged histograms) and reported with the ratios voxer / relay.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import select
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from .h2sink import SinkResult, run_sinks

FRAME_NS = 20_000_000  # one chunk = one 20 ms Opus packet
SPIN_S = 0.002
CBOR_SEQ = "application/cbor-seq"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: The server's (``http://``) or the relay baseline's (``tcp://``) address on its first line.
URL_RE = re.compile(r"(?:https?|tcp)://[^\s,]+")
PACKAGES = (
    "voxer-stream",
    "trio",
    "hypercorn",
    "h2",
    "trio-websocket",
    "wsproto",
    "quart-trio",
    "cbor2",
    "av",
    "hdrhistogram",
)

Conn = multiprocessing.connection.Connection


# -- the talker process -------------------------------------------------------


@dataclass
class TalkerResult:
    chunks: int = 0
    acked: int = -1
    closed: bool = False
    #: How late the talker itself sent each chunk (its own scheduling, not the server).
    send_lag_us_p50: float = 0.0
    send_lag_us_p99: float = 0.0
    send_lag_us_max: float = 0.0
    worst_lag_seq: int = 0
    #: monotonic_ns at which each chunk was actually handed to the socket.
    sent_at: list[int] = field(default_factory=list)


def run_in_process(pipe: Conn, what: str, main: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """The body of every load-generator process: run ``main(*args)`` under trio and
    send its result (dataclasses as dicts) to the parent as ``("done", result)``, or
    ``("error", ...)`` before re-raising, so the parent never waits for a dead child."""
    try:
        result = trio.run(main, *args)
        pipe.send(("done", _plain(result)))
    except BaseException as exc:
        pipe.send(("error", f"{what}: {exc!r}"))
        raise


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def talker_main(
    url: str, token: str, thread: str, msg: str, packets: list[bytes], pipe: Conn
) -> None:
    run_in_process(pipe, "talker", _talk, url, token, thread, msg, packets, pipe)


async def _talk(
    url: str, token: str, thread: str, msg: str, packets: list[bytes], pipe: Conn
) -> TalkerResult:
    from voxer_stream.client.h2conn import H2Connection
    from voxer_stream.wire import Chunk, Error, Open
    from voxer_stream.wire.upload import UploadClient

    result = TalkerResult()
    client = UploadClient(Open(msg=msg, thread=thread, created=int(time.time() * 1000)))
    async with await H2Connection.connect(url) as conn:
        headers = [("content-type", CBOR_SEQ), ("authorization", f"Bearer {token}")]
        stream = await conn.request("POST", "/v1/upload", headers)
        await conn.ping()  # HEADERS alone first (see voxer_stream/client/talker.py)
        await stream.send(client.start())
        while client.next_seq == 0 and client.state.name == "OPENING":
            data = await stream.receive()
            if data is None:
                raise RuntimeError("upload stream ended before opened")
            for frame in client.receive_data(data):
                if isinstance(frame, Error):
                    raise RuntimeError(f"server error: {frame}")
        pipe.send(("opened",))
        _, t0 = await trio.to_thread.run_sync(pipe.recv)
        closed = trio.Event()

        async def read_acks() -> None:
            # Read to the end of the response, not just to ``closed``: closing the
            # connection while hypercorn still flushes the stream's end can crash
            # the server (BusyResourceError in the trio worker; see README).
            while (data := await stream.receive()) is not None:
                for frame in client.receive_data(data):
                    if isinstance(frame, Error):
                        raise RuntimeError(f"server error: {frame}")
            if client.closed is None:
                raise RuntimeError("upload response ended without closed")
            closed.set()

        async def send(chunk: Chunk) -> None:
            await stream.send(client.send_chunk(chunk))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_acks)
            await send_on_schedule(packets, t0, send, result)
            await stream.send(client.close())
            await stream.end()
            with trio.fail_after(30):
                await closed.wait()
    result.acked = client.acked
    result.closed = client.closed is not None
    return result


async def send_on_schedule(
    packets: list[bytes],
    t0: int,
    send: Callable[[Any], Awaitable[None]],
    result: TalkerResult,
) -> None:
    """Open loop: hand chunk ``seq`` to ``send`` at ``t0 + seq * FRAME_NS``, whatever happens.

    Shared by the HTTP/2 talker and the relay baseline's talker, so both variants get
    the same schedule and the same lag accounting; ``send`` encodes and writes.
    """
    from voxer_stream.media.opus import packet_duration
    from voxer_stream.wire import Chunk

    lags: list[int] = []
    ts = 0
    for seq, packet in enumerate(packets):
        intended = t0 + seq * FRAME_NS
        # epoll's timeout is in whole milliseconds, so a plain sleep wakes up to
        # ~1 ms late: sleep to 2 ms before, then spin (at most ~10% of a core).
        delay = (intended - time.monotonic_ns()) / 1e9 - SPIN_S
        if delay > 0:
            await trio.sleep(delay)
        while time.monotonic_ns() < intended:
            pass
        now = time.monotonic_ns()
        lags.append(now - intended)
        result.sent_at.append(now)
        await send(Chunk(seq=seq, ts=ts, packets=(packet,)))
        ts += packet_duration(packet)
    worst = max(range(len(lags)), key=lags.__getitem__, default=0)
    result.worst_lag_seq = worst
    lags.sort()
    result.chunks = len(packets)
    if lags:
        result.send_lag_us_p50 = lags[len(lags) // 2] / 1000
        result.send_lag_us_p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] / 1000
        result.send_lag_us_max = lags[-1] / 1000


# -- the listener processes ---------------------------------------------------


@dataclass
class ListenerResult:
    index: int
    received: int = 0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    distinct: int = 0
    ended: bool = False
    error: str = ""
    #: (seq, monotonic_ns at receipt) for recording listeners only.
    arrivals: list[tuple[int, int]] = field(default_factory=list)
    #: The raw response body's length and zlib.crc32: a sink (``benchmarks.h2sink``)
    #: decodes nothing, so it is checked by comparing these with a recording listener's.
    body_bytes: int = 0
    body_crc32: int = 0
    sink: bool = False


def listener_main(
    url: str,
    token: str,
    msg: str,
    indexes: list[int],
    recording: list[int],
    streams_per_conn: int,
    pipe: Conn,
    transport: str = "h2",
    full_clients: bool = False,
) -> None:
    """``transport`` ``h2``: HTTP/2 listen streams (``_listen_all``); ``ws``: one
    WebSocket connection per listener (``_listen_all_ws``, ``streams_per_conn`` unused)."""
    if transport == "ws":
        run_in_process(pipe, "listeners", _listen_all_ws, url, token, msg, indexes, recording, pipe)
    else:
        args = (url, token, msg, indexes, recording, streams_per_conn, pipe, full_clients)
        run_in_process(pipe, "listeners", _listen_all, *args)


async def _listen_all(
    url: str,
    token: str,
    msg: str,
    indexes: list[int],
    recording: list[int],
    streams_per_conn: int,
    pipe: Conn,
    full_clients: bool = False,
) -> list[ListenerResult]:
    from voxer_stream.client.h2conn import H2Connection

    results = [ListenerResult(index=i) for i in indexes]
    ready = trio.Semaphore(0, max_value=len(results))
    path = f"/v1/messages/{msg}/listen?from_seq=0"
    headers = [("authorization", f"Bearer {token}")]
    # Recording listeners get a connection of their own; the rest share, as sinks
    # (``benchmarks.h2sink``, a few us per frame) unless ``full_clients``. The recording
    # ones join last, so the fan-out reaches them late: their latency is an upper
    # bound for their process's listeners, not an average.
    recorders = [r for r in results if r.index in recording]
    shared = [r for r in results if r.index not in recording]
    groups: list[list[ListenerResult]] = []
    if full_clients:
        for start in range(0, len(shared), streams_per_conn):
            groups.append(shared[start : start + streams_per_conn])
    groups.extend([r] for r in recorders)
    sinks: list[SinkResult] = []
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        if shared and not full_clients:
            nursery.start_soon(
                _run_sinks, url, path, token, len(shared), streams_per_conn, ready, sinks
            )
            with trio.fail_after(60):
                for _ in shared:
                    await ready.acquire()
        conns = []
        for _group in groups:
            conns.append(await stack.enter_async_context(await H2Connection.connect(url)))
        for conn, group in zip(conns, groups, strict=True):
            for result in group:
                stream = await conn.request("GET", path, headers, end_stream=True)
                record = result.index in recording
                nursery.start_soon(_listen_one, stream, result, record, ready)
        with trio.fail_after(60):
            for _ in range(sum(len(group) for group in groups)):
                await ready.acquire()
        pipe.send(("ready",))
    if shared and not full_clients:
        for result, sink in zip(shared, sinks, strict=True):
            result.sink = True
            result.ended = sink.ended and sink.status == 200
            result.body_bytes, result.body_crc32 = sink.body_bytes, sink.crc32
            if sink.error or sink.status != 200:
                result.error = f"sink {result.index}: HTTP {sink.status} {sink.error}"
    return results


async def _run_sinks(
    url: str,
    path: str,
    token: str,
    count: int,
    streams_per_conn: int,
    ready: trio.Semaphore,
    out: list[SinkResult],
) -> None:
    parts = urlsplit(url)
    headers = [(b"authorization", f"Bearer {token}".encode())]

    def all_ready() -> None:
        for _ in range(count):
            ready.release()

    assert parts.hostname is not None and parts.port is not None
    out.extend(
        await run_sinks(
            parts.hostname, parts.port, path, headers, count, streams_per_conn, all_ready
        )
    )


def check_sinks(listeners: list[dict[str, Any]]) -> None:
    """Fill in a sink's chunk counts from a recording listener whose body it matches.

    Every listener joins before the first chunk, so every correct body is the same
    bytes (message_info, live, the chunks, end): a sink whose length and crc32 equal a
    recording listener's got exactly its chunks, once, in order. One that differs
    counts as an error and as having lost everything it cannot vouch for."""
    references = [x for x in listeners if not x["sink"] and x["ended"] and not x["error"]]
    for sink in (x for x in listeners if x["sink"]):
        match = next(
            (
                r
                for r in references
                if (r["body_bytes"], r["body_crc32"]) == (sink["body_bytes"], sink["body_crc32"])
            ),
            None,
        )
        if match is not None:
            for key in ("received", "lost", "reordered", "duplicated", "distinct"):
                sink[key] = match[key]
        elif sink["ended"]:
            sink["ended"] = False
            sink["error"] = sink["error"] or (
                f"sink {sink['index']}: body ({sink['body_bytes']} bytes) differs from "
                "every recording listener's"
            )


class _WsListenStream:
    """A WebSocket listen (``/v1/ws``, ``auth`` already sent by ``open_ws``) with the two
    methods ``_listen_one`` uses, so WebSocket listeners decode, timestamp and check
    chunks with the very code of the HTTP/2 listeners.

    Per message only trio-websocket's ``get_message`` (its reader task has already
    parsed the frame out of the socket) and, in ``_listen_one``, ``FrameDecoder``: one
    binary message is one frame (VXS-11-2), so the decoder yields it whole.
    """

    def __init__(self, ws: Any, msg: str) -> None:
        self.ws = ws
        self.msg = msg

    async def response_status(self) -> int:
        from voxer_stream.wire import Listen, encode_frame

        await self.ws.send_message(encode_frame(Listen(msg=self.msg, from_seq=0)))
        return 200  # the handshake succeeded (101): the listen is on

    async def receive(self) -> bytes | None:
        from trio_websocket import ConnectionClosed

        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            return None  # the server closes (1000) right after ``end``
        if not isinstance(message, bytes):
            raise RuntimeError("text message on /v1/ws (VXS-11-6: frames are binary)")
        return message


async def _listen_all_ws(
    url: str, token: str, msg: str, indexes: list[int], recording: list[int], pipe: Conn
) -> list[ListenerResult]:
    """Every listener on a WebSocket connection of its own (no multiplexing)."""
    from voxer_stream.client.ws import open_ws

    results = [ListenerResult(index=i) for i in indexes]
    ready = trio.Semaphore(0, max_value=len(results))
    async with contextlib.AsyncExitStack() as stack:
        sockets = []
        for _ in results:
            sockets.append(await stack.enter_async_context(open_ws(url, token)))
        async with trio.open_nursery() as nursery:
            for ws, result in zip(sockets, results, strict=True):
                listen = _WsListenStream(ws, msg)
                record = result.index in recording
                nursery.start_soon(_listen_one, listen, result, record, ready)
            with trio.fail_after(60):
                for _ in results:
                    await ready.acquire()
            pipe.send(("ready",))
    return results


async def _listen_one(
    stream: Any, result: ListenerResult, record: bool, ready: trio.Semaphore
) -> None:
    from voxer_stream.wire import Chunk, End, Error, FrameDecoder, Live

    seen: set[int] = set()
    highest = -1
    decoder = FrameDecoder()
    is_ready = False
    try:
        status = await stream.response_status()
        if status != 200:
            raise RuntimeError(f"listen: HTTP {status}")
        while (data := await stream.receive()) is not None:
            now = time.monotonic_ns()
            result.body_bytes += len(data)
            result.body_crc32 = zlib.crc32(data, result.body_crc32)
            decoder.feed(data)
            for frame in decoder:
                if isinstance(frame, Chunk):
                    result.received += 1
                    if frame.seq in seen:
                        result.duplicated += 1
                        continue
                    if frame.seq < highest:
                        result.reordered += 1
                    seen.add(frame.seq)
                    highest = max(highest, frame.seq)
                    if record:
                        result.arrivals.append((frame.seq, now))
                elif isinstance(frame, Live):
                    is_ready = True
                    ready.release()
                elif isinstance(frame, End):
                    result.ended = True
                    result.distinct = len(seen)
                    result.lost = frame.chunks - len(seen)
                    return
                elif isinstance(frame, Error):
                    raise RuntimeError(f"error frame: {frame}")
        raise RuntimeError("listen stream ended before its end frame")
    except Exception as exc:
        result.error = f"listener {result.index} after {result.received} chunks: {exc!r}"
        result.distinct = len(seen)
        if not is_ready:
            ready.release()


# -- the server ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads, exited ones too) of process ``pid`` in seconds.

    Read from the process's CPU-time clock (``clock_getcpuclockid``: the clock id is
    ``(~pid << 3) | CPUCLOCK_SCHED``), which counts in nanoseconds. ``/proc/<pid>/stat``
    (the fallback) counts in 10 ms ticks: the relay baseline uses ~0.1 s of CPU in a
    20 s run at N = 1, where ticks would be a 10 % error.
    """
    with contextlib.suppress(OSError):
        return time.clock_gettime((~pid << 3) | 2)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (children, their children ...), from the
    parent pid (field 4) of every ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` summed over ``process_tree(pid)`` (a process that is gone between
    the listing and the read counts 0)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


class Server:
    """The shipped server as a child process; ``url`` from its first stdout line."""

    def __init__(
        self,
        data_dir: Path,
        command: list[str] | None = None,
        stderr_name: str = "server.stderr",
        *,
        options: Sequence[str] = (),
    ) -> None:
        """``command`` replaces ``voxer-stream serve`` (a baseline); ``options`` are added
        to it (``--storage memory``, ``--rtc-idle-timeout 60``)."""
        self.command = command or [
            sys.executable,
            "-m",
            "voxer_stream",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            *options,
        ]
        self.stderr = open(data_dir.parent / stderr_name, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.url = self._read_url(30.0)
        assert self.proc.stdout is not None
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain

    def _read_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.stop()
                raise RuntimeError(f"server printed no URL within {timeout} s: {self.command}")
            byte = os.read(self.proc.stdout.fileno(), 1)  # unbuffered: select stays right
            if not byte:
                self.stop()
                raise RuntimeError(f"server exited before printing its URL: {self.command}")
            line += byte
        match = URL_RE.search(line.decode("utf-8", "replace"))
        if match is None:
            self.stop()
            raise RuntimeError(f"no URL in the server's first line: {line!r}")
        return match.group(0).rstrip("/")

    def cpu_seconds(self) -> float:
        """The server's CPU seconds, its child processes' included (``serve --workers N``
        is a supervisor and N workers): the sum over ``process_tree``."""
        return tree_cpu_seconds(self.proc.pid)

    def stderr_tail(self, size: int = 3000) -> str:
        path = Path(self.stderr.name)
        return path.read_bytes()[-size:].decode("utf-8", "replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: a clean shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def stop_processes(procs: Iterable[Any], finished: bool) -> None:
    """Join the load generators (10 s each after a run that finished, a moment after one
    that failed), then kill and reap whatever is left."""
    for proc in procs:
        proc.join(10 if finished else 0.1)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def measure_window(
    server: Server, procs: list[Any], warm_end: int, window_end: int
) -> tuple[float, float]:
    """Sleep through the warm-up, then measure CPU seconds over the window up to
    ``window_end`` (monotonic ns): the server's, and the load generators' ``procs``."""
    time.sleep(max(0.0, (warm_end - time.monotonic_ns()) / 1e9))
    cpu_start = server.cpu_seconds()
    clients_start = sum(cpu_seconds(proc.pid) for proc in procs)
    time.sleep(max(0.0, (window_end - time.monotonic_ns()) / 1e9))
    server_cpu = server.cpu_seconds() - cpu_start
    clients_cpu = sum(cpu_seconds(proc.pid) for proc in procs) - clients_start
    return server_cpu, clients_cpu


async def setup_accounts(url: str) -> tuple[str, str, str]:
    """Two accounts and a thread: (talker token, listener token, thread id)."""
    from voxer_stream.client.rest import Rest

    suffix = uuid.uuid4().hex[:8]
    async with Rest(url) as talker, Rest(url) as listener:
        await talker.register(f"talker{suffix}", "benchmark-password")
        await listener.register(f"listener{suffix}", "benchmark-password")
        await talker.login(f"talker{suffix}", "benchmark-password")
        await listener.login(f"listener{suffix}", "benchmark-password")
        thread = await talker.create_thread("live-latency", [f"listener{suffix}"])
        assert talker.token is not None and listener.token is not None
        return talker.token, listener.token, str(thread["id"])


def opus_packets(count: int, workdir: Path) -> list[bytes]:
    from voxer_stream.media.encode import encode_file, tone_wav

    wav = workdir / "tone.wav"
    tone_wav(wav, count * 0.02 + 0.1, 440.0)
    packets = encode_file(wav)
    if len(packets) < count:
        raise RuntimeError(f"encoder gave {len(packets)} packets, {count} needed")
    return packets[:count]


# -- one run ------------------------------------------------------------------


def _expect(pipe: Conn, kind: str, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"{what}: no {kind!r} within {timeout} s")
    message = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"{what}: {message}")
    return message[1] if len(message) > 1 else None


def listener_processes(n: int, requested: int | None) -> int:
    if requested:
        return max(1, min(requested, n))
    return 1 if n <= 10 else min(4, max(2, (os.cpu_count() or 2)))


#: ``--transport``: how the listeners listen (the talker is always on HTTP/2).
TRANSPORTS = {"h2": "HTTP/2", "ws": "WebSocket"}
TRANSPORT_DETAIL = {
    "h2": "HTTP/2 cleartext (h2c prior knowledge), TCP_NODELAY on clients",
    "ws": "listeners: WebSocket GET /v1/ws (HTTP/1.1 upgrade, subprotocol voxer-stream.v1), "
    "an auth frame then a listen frame, one connection per listener; talker: HTTP/2 "
    "cleartext (h2c prior knowledge) POST /v1/upload; TCP_NODELAY on clients",
}

RELAY_COMMAND = ["-m", "benchmarks.baselines.relay", "--port", "0"]
#: What ``--baseline`` can compare the server against (``benchmarks/baselines/``).
BASELINES = ("relay",)


def run_once(
    args: argparse.Namespace,
    n: int,
    packets: list[bytes],
    workdir: Path,
    variant: str = "voxer",
    tag: str = "",
) -> dict[str, Any]:
    """One run of N listeners against ``variant`` (``voxer``: the shipped server;
    ``relay``: the raw-TCP baseline); the result dict, see ``measure``."""
    return measure(args, n, packets, workdir, variant, tag)[0]


def measure(
    args: argparse.Namespace,
    n: int,
    packets: list[bytes],
    workdir: Path,
    variant: str = "voxer",
    tag: str = "",
) -> tuple[dict[str, Any], Any, Any]:
    """One run: (result, latency histogram, latency-from-send histogram).

    The histograms (HDR, microseconds) are returned so that rounds of the same variant
    can be merged into one set of percentiles.
    """
    relay = variant == "relay"
    data_dir = workdir / f"data-{variant}-{n}{tag}"
    data_dir.mkdir()
    command = [sys.executable, *RELAY_COMMAND] if relay else None
    server = Server(data_dir, command, stderr_name=f"{data_dir.name}.stderr")
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    finished = False
    nprocs = listener_processes(n, args.listener_procs)
    recording = list(range(min(args.record, n)))
    try:
        msg = f"bench-{uuid.uuid4().hex[:16]}"
        talker_pipe, child = ctx.Pipe()
        if relay:
            from benchmarks.baselines.relay import relay_listener_main, relay_talker_main

            talker = ctx.Process(target=relay_talker_main, args=(server.url, msg, packets, child))
        else:
            talk_token, listen_token, thread = trio.run(setup_accounts, server.url)
            talker = ctx.Process(
                target=talker_main, args=(server.url, talk_token, thread, msg, packets, child)
            )
        talker.start()
        procs.append(talker)
        _expect(talker_pipe, "opened", 30, "talker")

        listener_pipes = []
        for p in range(nprocs):
            indexes = [i for i in range(n) if i % nprocs == p]
            parent, child = ctx.Pipe()
            if relay:
                proc = ctx.Process(
                    target=relay_listener_main,
                    args=(server.url, msg, indexes, recording, child, args.full_clients),
                )
            else:
                proc = ctx.Process(
                    target=listener_main,
                    args=(
                        server.url,
                        listen_token,
                        msg,
                        indexes,
                        recording,
                        args.streams_per_conn,
                        child,
                        args.transport,
                        args.full_clients,
                    ),
                )
            proc.start()
            procs.append(proc)
            listener_pipes.append(parent)
        for pipe in listener_pipes:
            _expect(pipe, "ready", 60, "listeners")

        t0 = time.monotonic_ns() + 300_000_000
        talker_pipe.send(("go", t0))
        warm_end = t0 + int(args.warmup * 1e9)
        window_end = t0 + len(packets) * FRAME_NS
        cpu, clients_cpu = measure_window(server, procs, warm_end, window_end)

        timeout = 60 + len(packets) * 0.02
        talker_result = _expect(talker_pipe, "done", timeout, "talker")
        listeners: list[dict[str, Any]] = []
        for pipe in listener_pipes:
            listeners.extend(_expect(pipe, "done", timeout, "listeners"))
        check_sinks(listeners)
        finished = True
    finally:
        stop_processes(procs, finished)
        server.stop()

    first_measured = math.ceil((warm_end - t0) / FRAME_NS)
    histogram, from_send = latency_histograms(
        [listener["arrivals"] for listener in listeners],
        t0,
        first_measured,
        talker_result["sent_at"],
    )
    measured_chunks = len(packets) - first_measured
    deliveries = measured_chunks * n
    errors = [x["error"] for x in listeners if x["error"]]
    shared = n - len(recording)
    if relay or args.transport == "ws":
        connections = n  # raw TCP, WebSocket: one connection per listener
    elif shared:
        connections = len(recording) + sum(
            math.ceil(
                len([i for i in range(n) if i % nprocs == p and i not in recording])
                / args.streams_per_conn
            )
            for p in range(nprocs)
        )
    else:
        connections = len(recording)
    if relay:
        server_command = shlex.join(["python", *RELAY_COMMAND])
    else:
        server_command = shlex.join(["python", *server.command[1:-1], "TMP"])

    result = {
        "variant": variant,
        # The listeners' transport: the relay's are raw TCP whatever ``--transport`` says.
        "transport": "tcp" if relay else args.transport,
        "listeners": n,
        "listener_processes": nprocs,
        "connections": connections,
        "recording_listeners": len(recording),
        "chunks_sent": talker_result["chunks"],
        "measured_chunks": measured_chunks,
        "deliveries_expected": n * len(packets),
        "deliveries_received": sum(x["received"] for x in listeners),
        # A listener cut before its end frame lost whatever it did not get.
        "lost": sum(x["lost"] if x["ended"] else len(packets) - x["distinct"] for x in listeners)
        + (n - len(listeners)) * len(packets),
        "reordered": sum(x["reordered"] for x in listeners),
        "duplicated": sum(x["duplicated"] for x in listeners),
        "ended": sum(1 for x in listeners if x["ended"]),
        "errors": errors[:5],
        **_latency_fields(histogram, from_send),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "server_cpu_s": round(cpu, 6),
        "server_cpu_us_per_delivery": round(cpu / deliveries * 1e6, 2) if deliveries else None,
        "server_cpu_us_per_chunk": round(cpu / measured_chunks * 1e6, 1),
        "server_cpu_share": round(cpu / ((window_end - warm_end) / 1e9), 3),
        "clients_cpu_share": round(clients_cpu / ((window_end - warm_end) / 1e9), 3),
        "talker_send_lag_us": {
            "p50": talker_result["send_lag_us_p50"],
            "p99": talker_result["send_lag_us_p99"],
            "max": talker_result["send_lag_us_max"],
            "worst_seq": talker_result["worst_lag_seq"],
        },
        "talker_closed": talker_result["closed"],
        "server_exit": server.proc.returncode,
        "server_stderr_tail": server.stderr_tail() if errors else "",
        "server_command": server_command,
    }
    return result, histogram, from_send


def latency_histograms(
    arrivals: Iterable[Iterable[tuple[int, int]]],
    t0: int,
    first_measured: int,
    sent_at: list[int],
) -> tuple[Any, Any]:
    """HDR histograms (microseconds, up to 60 s) of every arrival ``(index, ns)`` from
    ``first_measured`` on: latency from the intended send time ``t0 + index * 20 ms``
    (open loop, the reported one) and from the talker's actual send ``sent_at[index]``."""
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(1, 60_000_000, 3)
    from_send = HdrHistogram(1, 60_000_000, 3)
    for one in arrivals:
        for index, arrived in one:
            if index >= first_measured:
                latency_us = (arrived - (t0 + index * FRAME_NS)) / 1000
                histogram.record_value(max(1, round(latency_us)))
                from_send.record_value(max(1, round((arrived - sent_at[index]) / 1000)))
    return histogram, from_send


def _ms(value: float) -> float:
    return round(value / 1000, 3)


def _latency_fields(histogram: Any, from_send: Any) -> dict[str, Any]:
    return {
        "samples": histogram.get_total_count(),
        "latency_ms": {
            "p50": _ms(histogram.get_value_at_percentile(50)),
            "p90": _ms(histogram.get_value_at_percentile(90)),
            "p99": _ms(histogram.get_value_at_percentile(99)),
            "p99_9": _ms(histogram.get_value_at_percentile(99.9)),
            "max": _ms(histogram.get_max_value()),
            "mean": _ms(histogram.get_mean_value()),
        },
        # Secondary: from the talker's actual send (excludes its own scheduling lag).
        "latency_from_send_ms": {
            "p50": _ms(from_send.get_value_at_percentile(50)),
            "p99": _ms(from_send.get_value_at_percentile(99)),
            "p99_9": _ms(from_send.get_value_at_percentile(99.9)),
            "max": _ms(from_send.get_max_value()),
        },
    }


SUMMED = (
    "chunks_sent",
    "measured_chunks",
    "deliveries_expected",
    "deliveries_received",
    "lost",
    "reordered",
    "duplicated",
    "ended",
    "server_cpu_s",
)


def merge_rounds(runs: list[tuple[dict[str, Any], Any, Any]]) -> dict[str, Any]:
    """One variant's rounds as one result: counts summed, percentiles from the merged
    histograms, CPU per delivery = all CPU / all deliveries; ``rounds`` keeps each."""
    from hdrh.histogram import HdrHistogram

    results = [result for result, _, _ in runs]
    histogram = HdrHistogram(1, 60_000_000, 3)
    from_send = HdrHistogram(1, 60_000_000, 3)
    for _, hist, sent in runs:
        histogram.add(hist)
        from_send.add(sent)
    merged = dict(results[0])
    for key in SUMMED:
        merged[key] = sum(r[key] for r in results)
    merged.update(_latency_fields(histogram, from_send))
    cpu, chunks, n = merged["server_cpu_s"], merged["measured_chunks"], merged["listeners"]
    merged["server_cpu_s"] = round(cpu, 6)
    merged["server_cpu_us_per_delivery"] = round(cpu / (chunks * n) * 1e6, 2) if chunks else None
    merged["server_cpu_us_per_chunk"] = round(cpu / chunks * 1e6, 1) if chunks else None
    for key in ("server_cpu_share", "clients_cpu_share"):
        merged[key] = round(sum(r[key] for r in results) / len(results), 3)
    merged["loadavg_1min_after"] = max(r["loadavg_1min_after"] for r in results)
    worst = max(results, key=lambda r: r["talker_send_lag_us"]["max"])
    merged["talker_send_lag_us"] = {
        "p50": max(r["talker_send_lag_us"]["p50"] for r in results),
        "p99": max(r["talker_send_lag_us"]["p99"] for r in results),
        "max": worst["talker_send_lag_us"]["max"],
        "worst_seq": worst["talker_send_lag_us"]["worst_seq"],
    }
    merged["errors"] = [e for r in results for e in r["errors"]][:5]
    merged["talker_closed"] = all(r["talker_closed"] for r in results)
    merged["server_exit"] = next((r["server_exit"] for r in results if r["server_exit"]), 0)
    merged["server_stderr_tail"] = "\n".join(
        r["server_stderr_tail"] for r in results if r["server_stderr_tail"]
    )
    merged["rounds"] = results
    return merged


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _cpu_per_delivery(result: dict[str, Any]) -> float | None:
    deliveries = result["measured_chunks"] * result["listeners"]
    return result["server_cpu_s"] / deliveries if deliveries else None


def ratios(voxer: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """voxer / baseline: latency percentiles and server CPU per delivery (> 1: voxer costs
    more). ``per_round`` pairs round i of each, to show how much one ratio moves."""

    def one(v: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
        lat_v, lat_b = v["latency_ms"], b["latency_ms"]
        return {
            "latency_p50": _ratio(lat_v["p50"], lat_b["p50"]),
            "latency_p99": _ratio(lat_v["p99"], lat_b["p99"]),
            "latency_p99_9": _ratio(lat_v["p99_9"], lat_b["p99_9"]),
            "latency_max": _ratio(lat_v["max"], lat_b["max"]),
            "cpu_per_delivery": _ratio(_cpu_per_delivery(v), _cpu_per_delivery(b)),
        }

    pairs = zip(voxer.get("rounds", [voxer]), base.get("rounds", [base]), strict=True)
    return {**one(voxer, base), "per_round": [one(v, b) for v, b in pairs]}


# -- report -------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
    }


LATENCY_KEYS = (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9"), ("max", "max"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Latency percentiles vs N; with a baseline, its percentiles dashed in the same
    colours, and a second panel with server CPU per delivery of both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["listeners"] for r in results]
    base_name = results[0].get("baseline", {}).get("name") if results else None
    if base_name:
        fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # With a baseline, max is left to the JSON: eight lines would hide each other.
    keys = LATENCY_KEYS[:3] if base_name else LATENCY_KEYS
    for (key, label), colour in zip(keys, colours, strict=False):
        values = [r["latency_ms"][key] for r in results]
        ax.plot(
            ns, values, marker="o", color=colour, label=f"voxer {label}" if base_name else label
        )
        if base_name:
            base = [r["baseline"]["latency_ms"][key] for r in results]
            ax.plot(
                ns, base, marker="s", linestyle="--", color=colour, label=f"{base_name} {label}"
            )
    ax.plot(
        [100], [31], marker="x", linestyle="", color="black", label="stock hypercorn p99 (notes)"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("live listeners")
    ax.set_ylabel("latency, intended send to receipt (ms)")
    title = "live latency, 20 ms Opus chunks"
    transport = TRANSPORTS[results[0].get("transport", "h2")] if results else "HTTP/2"
    if base_name:
        ax.set_title(f"voxer ({transport}) vs {base_name} (raw TCP): {title}", fontsize="medium")
    else:
        ax.set_title(f"{title}, listeners over {transport}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    if base_name:
        cpu_ax.plot(
            ns, [r["server_cpu_us_per_delivery"] for r in results], marker="o", label="voxer"
        )
        cpu_ax.plot(
            ns,
            [r["baseline"]["server_cpu_us_per_delivery"] for r in results],
            marker="s",
            linestyle="--",
            label=base_name,
        )
        for n, r in zip(ns, results, strict=True):
            if r["ratio"]["cpu_per_delivery"]:
                cpu_ax.annotate(
                    f"x{r['ratio']['cpu_per_delivery']}",
                    (n, r["server_cpu_us_per_delivery"]),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize="small",
                )
        cpu_ax.margins(x=0.15)  # room for the last ratio label
        cpu_ax.set_xscale("log")
        cpu_ax.set_yscale("log")
        cpu_ax.set_xlabel("live listeners")
        cpu_ax.set_ylabel("server CPU per delivery (us)")
        cpu_ax.set_title("server CPU per delivered chunk")
        cpu_ax.grid(True, which="both", alpha=0.3)
        cpu_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    if results and "baseline" in results[0]:
        return baseline_table(results)
    lines = [
        f"listeners over {_transport_label(results)}",
        "| N | p50 ms | p99 ms | p99.9 ms | max ms | samples | lost/reord/dup | CPU us/delivery |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['listeners']} | {lat['p50']} | {lat['p99']} | {lat['p99_9']} | {lat['max']} "
            f"| {r['samples']} | {r['lost']}/{r['reordered']}/{r['duplicated']} "
            f"| {r['server_cpu_us_per_delivery']} |"
        )
    return "\n".join(lines)


def _transport_label(results: list[dict[str, Any]]) -> str:
    transport = results[0].get("transport", "h2") if results else "h2"
    return f"{TRANSPORTS[transport]} (--transport {transport})"


def baseline_table(results: list[dict[str, Any]]) -> str:
    """voxer | baseline | voxer/baseline for p50, p99, p99.9 and CPU per delivery."""
    name = results[0]["baseline"]["name"]
    lines = [
        f"voxer, listeners over {_transport_label(results)}, vs {name} (raw TCP), "
        f"all rounds merged; x = voxer / {name}",
        f"| N | p50 ms voxer | {name} | x | p99 ms voxer | {name} | x "
        f"| p99.9 ms voxer | {name} | x | CPU us/delivery voxer | {name} | x "
        f"| samples each | lost/reord/dup voxer, {name} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, x = r["baseline"], r["ratio"]
        lat, blat = r["latency_ms"], b["latency_ms"]
        lines.append(
            f"| {r['listeners']} | {lat['p50']} | {blat['p50']} | {x['latency_p50']} "
            f"| {lat['p99']} | {blat['p99']} | {x['latency_p99']} "
            f"| {lat['p99_9']} | {blat['p99_9']} | {x['latency_p99_9']} "
            f"| {r['server_cpu_us_per_delivery']} | {b['server_cpu_us_per_delivery']} "
            f"| {x['cpu_per_delivery']} | {r['samples']}, {b['samples']} "
            f"| {r['lost']}/{r['reordered']}/{r['duplicated']}, "
            f"{b['lost']}/{b['reordered']}/{b['duplicated']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks live-latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs, N = 1 and 10 only")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per run (25: 5 recorders x 2 rounds give over 10,000 samples)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded (1)")
    parser.add_argument("--listeners", type=int, nargs="+", default=None, help="N (1 10 100 1000)")
    parser.add_argument("--record", type=int, default=5, help="recording listeners per run")
    parser.add_argument(
        "--transport",
        choices=list(TRANSPORTS),
        default="h2",
        help="how the listeners listen: h2 (HTTP/2 streams, the default) or ws (the "
        "WebSocket binding, one connection per listener); the talker stays on HTTP/2",
    )
    parser.add_argument(
        "--streams-per-conn",
        type=int,
        default=None,
        help="HTTP/2 listen streams per shared connection (50); not with --transport ws",
    )
    parser.add_argument(
        "--full-clients",
        action="store_true",
        help="every listener decodes and checks every frame with the project's client "
        "(default: only the recording ones; the others are byte-counting sinks, "
        "checked against them by length and crc32)",
    )
    parser.add_argument("--listener-procs", type=int, default=None, help="default: by N")
    parser.add_argument(
        "--baseline",
        choices=[*BASELINES, "none"],
        default=None,
        help="run a baseline alternately with the server, report ratios "
        "(default: relay; none with --quick)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="A/B rounds per N with a baseline (2; 1 --quick)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.transport == "ws" and args.streams_per_conn is not None:
        parser.error("--streams-per-conn does not apply to --transport ws (one connection each)")
    if args.streams_per_conn is None:
        args.streams_per_conn = 50
    if args.duration is None:
        args.duration = 3.0 if args.quick else 25.0
    if args.listeners is None:
        args.listeners = [1, 10] if args.quick else [1, 10, 100, 1000]
    if args.baseline is None:
        args.baseline = "none" if args.quick else "relay"
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.duration <= args.warmup:
        parser.error("--duration must be longer than --warmup")
    return args


def marginal_cpu(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Server CPU per chunk per extra listener, from the smallest to the largest N.

    CPU per delivery at one N mixes the fixed cost of a chunk (ingest: receive, decode,
    for voxer also the Opus check, SQLite commit and ack) with the fan-out; the slope
    between two N is the fan-out alone, the figure STACK-NOTES quotes (~20 us per
    delivery over raw trio TCP, ~100 us through stock hypercorn).
    """
    low = min(results, key=lambda r: r["listeners"])
    high = max(results, key=lambda r: r["listeners"])
    name = high["baseline"]["name"]

    def slope(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        if b["listeners"] == a["listeners"]:
            return None
        per_chunk: list[float] = [r["server_cpu_s"] / r["measured_chunks"] * 1e6 for r in (a, b)]
        span: int = b["listeners"] - a["listeners"]
        return round((per_chunk[1] - per_chunk[0]) / span, 1)

    voxer, base = slope(low, high), slope(low["baseline"], high["baseline"])
    return {
        "between": [low["listeners"], high["listeners"]],
        "voxer": voxer,
        name: base,
        "ratio": _ratio(voxer, base),
    }


def _summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (
        f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  p99.9 {lat['p99_9']} ms"
        f"  max {lat['max']} ms  samples {result['samples']}  lost {result['lost']}"
        f"  cpu {result['server_cpu_us_per_delivery']} us/delivery"
    )


def run_n(args: argparse.Namespace, n: int, packets: list[bytes], workdir: Path) -> dict[str, Any]:
    """All runs for one N: the server alone, or server and baseline alternately
    (A, B, A, B ... ``--rounds`` times), so slow drifts of a shared machine (other
    load, thermal, page cache) hit both about equally and the ratio stays fair."""
    if args.baseline == "none":
        result = run_once(args, n, packets, workdir)
        print(f"N={n:<4} {_summary(result)}", flush=True)
        return result
    runs: dict[str, list[tuple[dict[str, Any], Any, Any]]] = {"voxer": [], args.baseline: []}
    for k in range(args.rounds):
        for variant in runs:
            run = measure(args, n, packets, workdir, variant, tag=f"-r{k}")
            runs[variant].append(run)
            print(
                f"N={n:<4} {variant:<6} round {k + 1}/{args.rounds}  {_summary(run[0])}", flush=True
            )
    voxer = merge_rounds(runs["voxer"])
    base = merge_rounds(runs[args.baseline])
    voxer["baseline"] = {"name": args.baseline, **base}
    voxer["ratio"] = {"of": f"voxer / {args.baseline}", **ratios(voxer, base)}
    return voxer


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "-m", "benchmarks", "live-latency", *argv])
    count = round(args.duration / 0.02)
    results = []
    with tempfile.TemporaryDirectory(prefix="voxer-bench-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(count, workdir)
        for n in args.listeners:
            results.append(run_n(args, n, packets, workdir))
    config: dict[str, Any] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "chunk_ms": 20,
        "packets_per_chunk": 1,
        "opus_bytes_mean": round(sum(map(len, packets)) / len(packets), 1),
        "recording_listeners": args.record,
        # None with ws: one connection per listener, no multiplexing.
        "streams_per_connection": args.streams_per_conn if args.transport == "h2" else None,
        "server": results[0]["server_command"] if results else "",
        "transport": args.transport,
        "transport_detail": TRANSPORT_DETAIL[args.transport],
        "baseline": args.baseline,
    }
    if args.baseline != "none":
        config["rounds"] = args.rounds
        config["order"] = "per N: " + ", ".join(["voxer", args.baseline] * args.rounds)
        config["baseline_server"] = shlex.join(["python", *RELAY_COMMAND])
        config["baseline_transport"] = (
            "raw TCP (trio), CBOR chunk frames delimited by CBOR, one connection per "
            "listener, TCP_NODELAY both ends; no HTTP, no auth, no storage"
        )
    report: dict[str, Any] = {
        "scenario": "live-latency",
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": config,
        "results": results,
    }
    if args.baseline != "none" and len(results) >= 2:
        report["marginal_cpu_us_per_listener"] = marginal_cpu(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live-latency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "live-latency.png")
    print(table(results))
    if "marginal_cpu_us_per_listener" in report:
        m = report["marginal_cpu_us_per_listener"]
        print(
            f"server CPU per extra listener (N = {m['between'][0]} to {m['between'][1]}): "
            f"voxer {m['voxer']} us, {args.baseline} {m[args.baseline]} us, x {m['ratio']}"
        )
    print(f"wrote {args.out / 'live-latency.json'} and {args.out / 'live-latency.png'}")
    return 0
