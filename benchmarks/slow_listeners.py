"""slow-listeners: 5 % of the listeners stop reading; the others' latency, the server's memory.

``python -m benchmarks slow-listeners [--quick] [--duration 60] [--listeners 100]``

One live talker (open loop, one 20 ms Opus chunk per 20 ms, as in ``live_latency``)
and N HTTP/2 listeners of one message. Runs come in alternating A/B pairs against
the shipped server, fresh for each run, with the same N and the same connections:

* **control**: every listener reads to the end;
* **stalled**: after the warm-up, ``--stall-fraction`` (5 %) of the listeners stop
  reading. Each of them has a connection of its own with a small receive window
  (``--stall-window``, 16 KiB) and stops taking data from it, so no WINDOW_UPDATE
  goes out and HTTP/2 flow control really stops the server's sends to it: what a
  phone in a tunnel looks like. Once the talker has closed the message they read
  again and must get every chunk exactly once and in order (VXS-6.5-2), the part
  they missed from the server's in-memory tail (the last 60 s) or, beyond it, from
  storage: ``--duration 120`` exercises the storage path.

The would-be stalled listeners exist in the control runs too (same connections, same
window), they just keep reading; "healthy" listeners are the other N - S in both.

Measured, per run: every healthy listener's latency per chunk (receive time - the
chunk's intended send time, ``time.monotonic_ns()``, HDR histogram) overall after the
warm-up and per ``--window`` seconds; the server's VmRSS (``/proc/<pid>/status``) and
CPU (``/proc/<pid>/stat``) every ``--sample-interval`` (0.5 s) from the talker's start
to the end of the stalled listeners' catch-up; and what each stalled listener
received. Reported: healthy p50/p99/p99.9 stalled / control (ratios), the RSS slope
over the stall (MB per minute) of both runs and its difference, and whether the
stalled listeners got everything. Results: ``<out>/slow-listeners.json`` and
``<out>/slow-listeners.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import multiprocessing
import os
import shlex
import struct
import sys
import tempfile
import termios
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .live_latency import (
    FRAME_NS,
    Conn,
    Server,
    _expect,
    cpu_seconds,
    listener_processes,
    machine,
    measure_window,
    opus_packets,
    run_in_process,
    setup_accounts,
    stop_processes,
    talker_main,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
NAME = "slow-listeners"


# -- listener processes --------------------------------------------------------


@dataclass
class ListenerResult:
    index: int
    stalls: bool
    received: int = 0
    #: Chunks whose seq was not the one expected next (lost before it, reordered or
    #: duplicated): 0 means the sequence was exactly 0, 1, 2, ...
    sequence_breaks: int = 0
    duplicated: int = 0
    distinct: int = 0
    ended: bool = False
    end_chunks: int = -1
    error: str = ""
    #: Healthy listeners: seq and monotonic_ns of every chunk (array('q'): compact to pickle).
    seqs: array[int] = field(default_factory=lambda: array("q"))
    times: array[int] = field(default_factory=lambda: array("q"))
    #: Stalling listeners: chunks read before the stall, and when they read again.
    received_before_stall: int = -1
    stalled_ns: int = 0
    resumed_ns: int = 0
    ended_ns: int = 0
    #: Response bytes the server had sent that this listener had not taken when it
    #: resumed (kernel receive queue + the client's own buffer): at most about the
    #: receive window if flow control is what stopped the server's sends.
    unread_bytes_at_resume: int = -1


class _Control:
    """When the stalling listeners of this process stop reading, and when they resume."""

    def __init__(self) -> None:
        self.stall_at: int | None = None
        self.resumed = trio.Event()

    def stalled(self) -> bool:
        return (
            self.stall_at is not None
            and not self.resumed.is_set()
            and time.monotonic_ns() >= self.stall_at
        )


def listeners_main(
    url: str,
    token: str,
    msg: str,
    indexes: list[int],
    stalls: bool,
    streams_per_conn: int,
    window: int,
    pipe: Conn,
) -> None:
    """One listener process: healthy listeners (``stalls`` False), sharing connections
    of ``streams_per_conn`` streams, or the stalling ones, one connection each with a
    receive window of ``window`` bytes, driven by ``go``/``resume`` on ``pipe``."""
    args = (url, token, msg, indexes, stalls, streams_per_conn, window, pipe)
    run_in_process(pipe, "listeners", _listen_all, *args)


async def _listen_all(
    url: str,
    token: str,
    msg: str,
    indexes: list[int],
    stalls: bool,
    streams_per_conn: int,
    window: int,
    pipe: Conn,
) -> list[ListenerResult]:
    from voxer_stream.client.h2conn import DEFAULT_WINDOW, H2Connection

    results = [ListenerResult(index=i, stalls=stalls) for i in indexes]
    ready = trio.Semaphore(0, max_value=len(results))
    control = _Control()
    path = f"/v1/messages/{msg}/listen?from_seq=0"
    headers = [("authorization", f"Bearer {token}")]
    size = 1 if stalls else streams_per_conn
    groups = [results[start : start + size] for start in range(0, len(results), size)]
    async with contextlib.AsyncExitStack() as stack:
        conns = []
        for _group in groups:
            conn = await H2Connection.connect(url, window=window if stalls else DEFAULT_WINDOW)
            conns.append(await stack.enter_async_context(conn))
        async with trio.open_nursery() as nursery:
            for conn, group in zip(conns, groups, strict=True):
                for result in group:
                    stream = await conn.request("GET", path, headers, end_stream=True)
                    nursery.start_soon(_listen_one, conn, stream, result, control, ready)
            with trio.fail_after(60):
                for _ in results:
                    await ready.acquire()
            pipe.send(("ready",))
            if stalls:
                # No sends on the pipe from here until "done": a receiving thread and
                # a sending task never use it at the same time.
                _, control.stall_at = await trio.to_thread.run_sync(pipe.recv)
                await trio.to_thread.run_sync(pipe.recv)  # "resume"
                control.resumed.set()
    return results


async def _listen_one(
    conn: Any, stream: Any, result: ListenerResult, control: _Control, ready: trio.Semaphore
) -> None:
    from voxer_stream.wire import Chunk, End, Error, FrameDecoder, Live

    seen: set[int] = set()
    expected = 0
    decoder = FrameDecoder()
    is_ready = False
    try:
        status = await stream.response_status()
        if status != 200:
            raise RuntimeError(f"listen: HTTP {status}")
        while True:
            if result.stalls and control.stalled():
                # Take nothing from the connection: the stream's window stays closed
                # once the server has filled it, which is what stops its sends.
                result.received_before_stall = result.received
                result.stalled_ns = time.monotonic_ns()
                await control.resumed.wait()
                result.resumed_ns = time.monotonic_ns()
                result.unread_bytes_at_resume = _unread_bytes(conn, stream)
            data = await stream.receive()
            if data is None:
                break
            now = time.monotonic_ns()
            decoder.feed(data)
            for frame in decoder:
                if isinstance(frame, Chunk):
                    result.received += 1
                    if frame.seq != expected:
                        result.sequence_breaks += 1
                    expected = frame.seq + 1
                    if frame.seq in seen:
                        result.duplicated += 1
                        continue
                    seen.add(frame.seq)
                    if not result.stalls:
                        result.seqs.append(frame.seq)
                        result.times.append(now)
                elif isinstance(frame, Live):
                    is_ready = True
                    ready.release()
                elif isinstance(frame, End):
                    result.ended = True
                    result.ended_ns = now
                    result.end_chunks = frame.chunks
                    result.distinct = len(seen)
                    return
                elif isinstance(frame, Error):
                    raise RuntimeError(f"error frame: {frame}")
        raise RuntimeError("listen stream ended before its end frame")
    except Exception as exc:
        result.error = f"listener {result.index} after {result.received} chunks: {exc!r}"
        result.distinct = len(seen)
        if not is_ready:
            ready.release()


def _unread_bytes(conn: Any, stream: Any) -> int:
    """Bytes waiting in the kernel for this connection plus the DATA the client has
    parsed but not handed out. Reaches into the client's internals on purpose: it is
    the evidence that the server stopped at the window, not that it fell behind."""
    fd = conn._sock.socket.fileno()
    kernel = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    parsed = sum(len(item[0]) for item in stream._items if isinstance(item, tuple))
    return int(kernel + parsed)


# -- server sampling -------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler:
    """Samples the server's RSS and CPU on a fixed grid in a thread of its own."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        #: (monotonic_ns, VmRSS KiB, utime + stime seconds)
        self.samples: list[tuple[int, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic_ns(), rss_kib(self.pid), cpu_seconds(self.pid)))
            except (OSError, RuntimeError, ValueError):
                return  # the server is gone
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- one run -----------------------------------------------------------------------


def _spawn(ctx: Any, procs: list[Any], target: Any, args: tuple[Any, ...]) -> Conn:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    procs.append(proc)
    return parent


def run_once(
    args: argparse.Namespace, stalled_mode: bool, packets: list[bytes], workdir: Path
) -> dict[str, Any]:
    n = args.listeners
    stalling = stall_count(n, args.stall_fraction)
    mode = "stalled" if stalled_mode else "control"
    data_dir = workdir / f"data-{mode}-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    server = Server(data_dir)
    sampler = Sampler(server.proc.pid, args.sample_interval)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    finished = False
    try:
        talk_token, listen_token, thread = trio.run(setup_accounts, server.url)
        msg = f"bench-{uuid.uuid4().hex[:16]}"
        talker_pipe = _spawn(
            ctx, procs, talker_main, (server.url, talk_token, thread, msg, packets)
        )
        _expect(talker_pipe, "opened", 30, "talker")

        # Listeners 0 .. S-1 are the stalling ones (own process), the rest healthy.
        healthy = list(range(stalling, n))
        nprocs = listener_processes(len(healthy), args.listener_procs)
        common = (server.url, listen_token, msg)
        healthy_pipes = [
            _spawn(
                ctx,
                procs,
                listeners_main,
                (*common, healthy[p::nprocs], False, args.streams_per_conn, 0),
            )
            for p in range(nprocs)
        ]
        stall_pipe = _spawn(
            ctx,
            procs,
            listeners_main,
            (*common, list(range(stalling)), True, 1, args.stall_window),
        )
        for pipe in [*healthy_pipes, stall_pipe]:
            _expect(pipe, "ready", 60, "listeners")

        t0 = time.monotonic_ns() + 300_000_000
        warm_end = t0 + int(args.warmup * 1e9)
        window_end = t0 + len(packets) * FRAME_NS
        sampler.start()
        talker_pipe.send(("go", t0))
        stall_pipe.send(("go", warm_end if stalled_mode else None))
        cpu, clients_cpu = measure_window(server, procs, warm_end, window_end)

        timeout = 60 + len(packets) * 0.02
        talker_result = _expect(talker_pipe, "done", timeout, "talker")
        healthy_results: list[dict[str, Any]] = []
        for pipe in healthy_pipes:
            healthy_results.extend(_expect(pipe, "done", timeout, "listeners"))
        # The message is closed and every healthy listener has its end frame: the
        # stalled ones read again now (in control runs they never stopped).
        resume_ns = time.monotonic_ns()
        stall_pipe.send(("resume",))
        stall_results = _expect(stall_pipe, "done", timeout, "stalled listeners")
        time.sleep(args.sample_interval * 2)  # a sample or two after the catch-up
        finished = True
    finally:
        sampler.stop()
        stop_processes(procs, finished)
        server.stop()

    chunks = len(packets)
    first_measured = math.ceil((warm_end - t0) / FRAME_NS)
    overall = _histogram()
    window_ns = round(args.window * 1e9)
    windows = [_histogram() for _ in range(math.ceil(chunks * FRAME_NS / window_ns))]
    for listener in healthy_results:
        for seq, arrived in zip(listener["seqs"], listener["times"], strict=True):
            intended = t0 + seq * FRAME_NS
            latency_us = max(1, round((arrived - intended) / 1000))
            windows[seq * FRAME_NS // window_ns].record_value(latency_us)
            if seq >= first_measured:
                overall.record_value(latency_us)

    every = healthy_results + stall_results
    errors = [x["error"] for x in every if x["error"]]
    healthy_conns = sum(
        math.ceil(len(healthy[p::nprocs]) / args.streams_per_conn) for p in range(nprocs)
    )
    measured_s = (window_end - warm_end) / 1e9
    return {
        "mode": mode,
        "listeners": n,
        "healthy_listeners": len(healthy),
        "stalling_listeners": stalling,
        "stalled": stalled_mode,
        "listener_processes": nprocs + 1,
        "connections": healthy_conns + stalling,
        "chunks_sent": talker_result["chunks"],
        "measured_chunks": chunks - first_measured,
        "healthy": {
            "deliveries_expected": len(healthy) * chunks,
            "deliveries_received": sum(x["received"] for x in healthy_results),
            **_losses(healthy_results, len(healthy), chunks),
            "samples": overall.get_total_count(),
            "latency_ms": _percentiles(overall),
            "windows": [
                {
                    "start_s": round(i * args.window, 3),
                    "end_s": round(min((i + 1) * args.window, chunks * FRAME_NS / 1e9), 3),
                    "warmup": i * args.window < args.warmup,
                    "samples": h.get_total_count(),
                    **_percentiles(h),
                }
                for i, h in enumerate(windows)
            ],
        },
        "stalling": _stalling_report(stall_results, stalling, chunks, t0, resume_ns),
        "server": _server_report(sampler.samples, t0, warm_end, window_end),
        "errors": errors[:5],
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "server_cpu_share": round(cpu / measured_s, 3),
        "clients_cpu_share": round(clients_cpu / measured_s, 3),
        "talker_send_lag_us": {
            "p50": talker_result["send_lag_us_p50"],
            "p99": talker_result["send_lag_us_p99"],
            "max": talker_result["send_lag_us_max"],
        },
        "talker_acked_seq": talker_result["acked"],  # the highest seq acked
        "talker_closed": talker_result["closed"],
        "times_s": {
            "stall_start": round((warm_end - t0) / 1e9, 3) if stalled_mode else None,
            "talker_end": round((window_end - t0) / 1e9, 3),
            "resume": round((resume_ns - t0) / 1e9, 3),
        },
        "server_exit": server.proc.returncode,
        "server_stderr_tail": server.stderr_tail() if errors else "",
        "server_command": shlex.join(["python", *server.command[1:-1], "TMP"]),
    }


def stall_count(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else min(n - 1, max(1, round(n * fraction)))


def _histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 60_000_000, 3)  # microseconds, up to 60 s


def _percentiles(h: Any) -> dict[str, float | None]:
    if h.get_total_count() == 0:
        return {"p50": None, "p99": None, "p99_9": None, "max": None}
    return {
        "p50": round(h.get_value_at_percentile(50) / 1000, 3),
        "p99": round(h.get_value_at_percentile(99) / 1000, 3),
        "p99_9": round(h.get_value_at_percentile(99.9) / 1000, 3),
        "max": round(h.get_max_value() / 1000, 3),
    }


def _losses(results: list[dict[str, Any]], expected: int, chunks: int) -> dict[str, int]:
    """Lost (never received), duplicated, and out-of-sequence chunks of a listener group;
    a listener cut before its end frame lost whatever it did not get."""
    return {
        "lost": sum(chunks - x["distinct"] for x in results) + (expected - len(results)) * chunks,
        "duplicated": sum(x["duplicated"] for x in results),
        "sequence_breaks": sum(x["sequence_breaks"] for x in results),
        "ended": sum(1 for x in results if x["ended"]),
    }


def _stalling_report(
    results: list[dict[str, Any]], expected: int, chunks: int, t0: int, resume_ns: int
) -> dict[str, Any]:
    from voxer_stream.transports.server import ServerConfig

    tail_limit = ServerConfig().tail_limit
    complete = [
        x["ended"]
        and not x["error"]
        and x["end_chunks"] == chunks
        and x["received"] == chunks
        and x["distinct"] == chunks
        and x["sequence_breaks"] == 0
        for x in results
    ]
    before = [x["received_before_stall"] for x in results if x["received_before_stall"] >= 0]
    behind = [chunks - b for b in before]
    # Only for listeners that did stall: in control runs they end before the resume.
    catch_up = [(x["ended_ns"] - resume_ns) / 1e9 for x in results if x["stalled_ns"]]
    unread = [x["unread_bytes_at_resume"] for x in results if x["stalled_ns"]]
    return {
        **_losses(results, expected, chunks),
        # VXS-6.5-2: each got chunks 0 .. K-1 once, in order, and the end frame said K.
        "all_complete_in_order": len(results) == expected and all(complete),
        "complete_in_order": sum(complete),
        "received": [x["received"] for x in results],
        "received_before_stall": before,
        "stall_started_s": [
            round((x["stalled_ns"] - t0) / 1e9, 3) for x in results if x["stalled_ns"]
        ],
        # Read after the resume; those more than the server's in-memory tail behind the
        # end can only have come from storage.
        "chunks_behind_at_resume": behind,
        "tail_limit_chunks": tail_limit,
        "served_from_storage_at_least": max([0, *(b - tail_limit for b in behind)]),
        "unread_bytes_at_resume": unread,
        "catch_up_s_max": round(max(catch_up), 3) if catch_up else None,
    }


def _server_report(
    samples: list[tuple[int, int, float]], t0: int, warm_end: int, window_end: int
) -> dict[str, Any]:
    series = []
    for i, (t, rss, cpu) in enumerate(samples):
        share = None
        if i:
            t_prev, _, cpu_prev = samples[i - 1]
            share = round((cpu - cpu_prev) / ((t - t_prev) / 1e9), 3)
        series.append([round((t - t0) / 1e9, 3), round(rss / 1024, 2), share])
    during = [(t, rss) for t, rss, _ in samples if warm_end <= t <= window_end]
    before = [rss for t, rss, _ in samples if t <= warm_end]
    # The live message's in-memory tail grows in every run until it holds
    # ``tail_limit`` chunks (60 s); after that the server's memory should be flat.
    from voxer_stream.transports.server import ServerConfig

    tail_full = max(warm_end, t0 + ServerConfig().tail_limit * FRAME_NS + 2_000_000_000)
    after_tail = [(t, rss) for t, rss in during if t >= tail_full]
    long_enough = window_end - tail_full >= 10_000_000_000
    return {
        # Least-squares slope of VmRSS over the stall period (warm-up end to the
        # talker's last chunk), MiB per minute.
        "rss_growth_mb_per_min": _slope_mib_per_min(during),
        # The same once the tail is full (from 62 s on), for runs of 72 s or more.
        "rss_growth_after_tail_full_mb_per_min": _slope_mib_per_min(after_tail)
        if long_enough
        else None,
        "rss_mb_at_stall_start": round(before[-1] / 1024, 2) if before else None,
        "rss_mb_at_talker_end": round(during[-1][1] / 1024, 2) if during else None,
        "rss_mb_peak": round(max(s[1] for s in samples) / 1024, 2) if samples else None,
        "rss_mb_last": round(samples[-1][1] / 1024, 2) if samples else None,
        "samples": series,  # [seconds since t0, VmRSS MiB, CPU share since the last]
    }


def _slope_mib_per_min(points: list[tuple[int, int]]) -> float | None:
    if len(points) < 3:
        return None
    xs = [t / 1e9 for t, _ in points]
    ys = [rss / 1024 for _, rss in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return round(cov / var * 60, 3) if var else None


# -- report ------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Stalled against control, from the same invocation's alternating runs."""
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in ("control", "stalled")}

    def pooled(mode: str, key: str) -> float | None:
        values = [r["healthy"]["latency_ms"][key] for r in by_mode[mode]]
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 3) if values else None

    latency: dict[str, Any] = {}
    for key in ("p50", "p99", "p99_9", "max"):
        control, stalled = pooled("control", key), pooled("stalled", key)
        latency[key] = {
            "control": control,
            "stalled": stalled,
            "ratio": round(stalled / control, 3) if control and stalled else None,
        }
    slopes = {m: [r["server"]["rss_growth_mb_per_min"] for r in by_mode[m]] for m in by_mode}

    def mean(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 3) if values else None

    growth_c, growth_s = mean(slopes["control"]), mean(slopes["stalled"])
    return {
        "pairs": len(by_mode["stalled"]),
        # Mean over the runs of each mode of the healthy listeners' percentiles.
        "healthy_latency_ms": latency,
        "rss_growth_mb_per_min": {
            "control": growth_c,
            "stalled": growth_s,
            "stalled_minus_control": round(growth_s - growth_c, 3)
            if growth_c is not None and growth_s is not None
            else None,
            "per_run": slopes,
            "after_tail_full": {
                m: mean([r["server"]["rss_growth_after_tail_full_mb_per_min"] for r in by_mode[m]])
                for m in by_mode
            },
        },
        "server_cpu_share": {m: mean([r["server_cpu_share"] for r in by_mode[m]]) for m in by_mode},
        "stalled_listeners_complete_in_order": all(
            r["stalling"]["all_complete_in_order"] for r in runs
        ),
        "stalled_listeners_served_from_storage_at_least": max(
            (r["stalling"]["served_from_storage_at_least"] for r in by_mode["stalled"]), default=0
        ),
        "healthy_lost": sum(r["healthy"]["lost"] for r in runs),
        "healthy_duplicated": sum(r["healthy"]["duplicated"] for r in runs),
        "healthy_sequence_breaks": sum(r["healthy"]["sequence_breaks"] for r in runs),
        "errors": sum(len(r["errors"]) for r in runs),
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    colors = {"control": "tab:blue", "stalled": "tab:red"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.2, 7.0))
    labelled: set[str] = set()
    for run in runs:
        mode = run["mode"]
        label = None if mode in labelled else f"{mode} ({run['stalling_listeners']} stall)"
        if mode == "control":
            label = None if mode in labelled else "control (no stall)"
        labelled.add(mode)
        samples = run["server"]["samples"]
        top.plot([s[0] for s in samples], [s[1] for s in samples], color=colors[mode], label=label)
        if run["times_s"]["stall_start"] is not None:
            top.axvline(run["times_s"]["stall_start"], color="gray", linestyle=":", lw=1)
        top.axvline(run["times_s"]["resume"], color=colors[mode], linestyle="--", lw=0.8)
        windows = [w for w in run["healthy"]["windows"] if w["p99"] is not None]
        mids = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
        bottom.plot(mids, [w["p99"] for w in windows], marker="o", color=colors[mode], label=label)
        bottom.plot(
            mids, [w["p50"] for w in windows], marker=".", linestyle=":", color=colors[mode]
        )
    n = runs[0]["listeners"] if runs else 0
    top.set_title(f"server VmRSS, {n} listeners (dotted: stall starts; dashed: resume)")
    top.set_xlabel("seconds since the talker's first chunk")
    top.set_ylabel("VmRSS (MiB)")
    top.grid(True, alpha=0.3)
    top.legend()
    bottom.set_title("healthy listeners' latency per window (solid p99, dotted p50)")
    bottom.set_xlabel("seconds since the talker's first chunk (window middle)")
    bottom.set_ylabel("latency (ms)")
    bottom.set_yscale("log")
    # Plain numbers on the log axis: "20" reads better than "2 x 10^1".
    bottom.yaxis.set_major_formatter(ScalarFormatter())
    bottom.yaxis.set_minor_formatter(ScalarFormatter())
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {NAME}", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 20, 10 s runs")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (60)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the stall (5)")
    parser.add_argument("--listeners", type=int, default=None, help="N (100)")
    parser.add_argument("--stall-fraction", type=float, default=0.05)
    parser.add_argument("--stall-window", type=int, default=16384, help="receive window, bytes")
    parser.add_argument("--pairs", type=int, default=1, help="control/stalled run pairs (1)")
    parser.add_argument("--window", type=float, default=None, help="seconds per latency window")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="RSS/CPU sampling s")
    parser.add_argument("--streams-per-conn", type=int, default=50, help="healthy listeners")
    parser.add_argument("--listener-procs", type=int, default=None, help="healthy; default by N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 10.0 if args.quick else 60.0
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    if args.window is None:
        args.window = 2.0 if args.quick else 5.0
    if args.listeners is None:
        args.listeners = 20 if args.quick else 100
    if args.duration <= args.warmup:
        parser.error("--duration must be longer than --warmup")
    if args.listeners < 2 or stall_count(args.listeners, args.stall_fraction) < 1:
        parser.error("need at least one stalling and one healthy listener")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "-m", "benchmarks", NAME, *argv])
    count = round(args.duration / 0.02)
    runs = []
    with tempfile.TemporaryDirectory(prefix="voxer-bench-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(count, workdir)
        for pair in range(args.pairs):
            # ABBA: control first in even pairs, stalled first in odd ones, so a drift
            # of the machine over the invocation does not favour one side.
            order = (False, True) if pair % 2 == 0 else (True, False)
            for stalled_mode in order:
                run = run_once(args, stalled_mode, packets, workdir)
                run["pair"] = pair
                runs.append(run)
                lat = run["healthy"]["latency_ms"]
                stall = run["stalling"]
                print(
                    f"{run['mode']:<8} N={run['listeners']} healthy p50 {lat['p50']} ms"
                    f"  p99 {lat['p99']} ms  p99.9 {lat['p99_9']} ms"
                    f"  lost {run['healthy']['lost']}"
                    f"  RSS {run['server']['rss_growth_mb_per_min']} MiB/min"
                    f"  stalling listeners complete {stall['complete_in_order']}"
                    f"/{run['stalling_listeners']}",
                    flush=True,
                )
    summary = summarize(runs)
    report = {
        "scenario": NAME,
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {
            "listeners": args.listeners,
            "stall_fraction": args.stall_fraction,
            "stalling_listeners": stall_count(args.listeners, args.stall_fraction),
            "stall_window_bytes": args.stall_window,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "sample_interval_s": args.sample_interval,
            "pairs": args.pairs,
            "chunk_ms": 20,
            "opus_bytes_mean": round(sum(map(len, packets)) / len(packets), 1),
            "streams_per_connection_healthy": args.streams_per_conn,
            "server": runs[0]["server_command"] if runs else "",
            "transport": "HTTP/2 cleartext (h2c prior knowledge), TCP_NODELAY on clients",
        },
        "summary": summary,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, args.out / f"{NAME}.png")
    lat = summary["healthy_latency_ms"]
    growth = summary["rss_growth_mb_per_min"]
    ratios = (f"{k} {v['stalled']}/{v['control']} = x{v['ratio']}" for k, v in lat.items())
    print("healthy stalled/control (ms): " + "  ".join(ratios))
    print(
        f"RSS growth MiB/min: control {growth['control']}, stalled {growth['stalled']};"
        f" stalled listeners complete and in order: "
        f"{summary['stalled_listeners_complete_in_order']}"
    )
    print(f"wrote {args.out / (NAME + '.json')} and {args.out / (NAME + '.png')}")
    return 0
