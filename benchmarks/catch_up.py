"""catch-up: listeners join a live message with a backlog, while others listen live.

``python -m benchmarks catch-up [--quick] [--backlog 60 90] [--joins 20] [--paced-joins 3]``

One server process, one open-loop talker process (one 20 ms Opus chunk due every
20 ms, ``live_latency``'s talker), ``--listeners`` live listeners in one process
(``live_latency``'s listeners: joined before the first chunk, every arrival
timestamped), and one *joiner* process. Once the message is ``max(--backlog)``
seconds old the joiner joins it again and again, one join at a time, each on a
fresh HTTP/2 connection: ``GET /v1/messages/{id}/listen?from_seq=S[&speed=1.5]``.

* **Fast joins** (speed 0, as fast as possible): ``--joins`` per backlog value,
  alternating between the ``--backlog`` values (A/B in one run: by default 60 s,
  which the server's in-memory tail still holds, and 90 s, whose first 30 s come
  from SQLite).
* **Paced joins** (``--speed`` 1.5): ``--paced-joins`` at the first backlog. At
  speed s a backlog of B seconds is caught up after B / (s - 1) seconds (2 B at
  1.5x), which the scenario checks against the ``live`` frame's arrival.

``S`` is the chunk due ``B`` seconds before the request, so every join has the
same backlog however late in the message it comes; for the server that is the
same work as joining a B-seconds-old message from seq 0 (same tail, same store
reads). Per join: time from the request to the ``message`` frame, to the first
chunk and to the ``live`` frame (the live edge); every chunk from ``S`` to the
live edge and one more second of live chunks, each exactly once and in order;
``live.seq`` is the next chunk; server CPU over the catch-up (``/proc``), net of
the live-only rate measured before the first join. The joiner decodes with
cbor2's C decoder (see ``FastFrames``): with the validating pure-Python
``wire.FrameDecoder`` the client's decoding, not the server, set the catch-up time.

Live listeners' latency (receipt - intended send, as in live-latency) is split by
the chunk's due time: chunks due while a join catches up (request to live frame +
one chunk) against chunks due in the quiet gap before that join. Joins and gaps
alternate, so both sides see the same drift in machine load; the p99 delta is the
"how much the live listeners' p99 moves" figure. Results:
``<out>/catch-up.json`` and ``<out>/catch-up.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from benchmarks.live_latency import (
    DEFAULT_OUT,
    FRAME_NS,
    Conn,
    Server,
    _expect,
    check_sinks,
    cpu_seconds,
    listener_main,
    machine,
    opus_packets,
    run_in_process,
    setup_accounts,
    stop_processes,
    talker_main,
)

CHUNK_S = FRAME_NS / 1e9
#: Distinct Opus packets encoded; the talker cycles through them. Encoding a
#: 10-minute tone takes ~9 s of CPU and says nothing more about the server.
DISTINCT_PACKETS = 500
#: Margin between a join's busy time and the quiet window compared with it: the
#: server may still flush the catch-up's last sends just after the live frame.
GUARD_NS = 200_000_000
#: Connect this long before the planned request, so the TCP and HTTP/2 setup is
#: not part of the measured catch-up (nor of the window the live listeners see).
CONNECT_LEAD_S = 0.2
#: A join that has not reached the live edge by then (beyond its expected time)
#: is recorded as an error rather than hanging the run.
JOIN_TIMEOUT_S = 60.0
#: How far a paced join's live frame may be from B / (s - 1) and still "match": one
#: chunk early by design (see ``analyse``), later by the talker's and server's delays.
PACED_TOLERANCE_MS = 100.0


# -- the joiner process -------------------------------------------------------


class FastFrames:
    """The items of a CBOR sequence as plain dicts, via cbor2's C decoder.

    Why not ``wire.FrameDecoder``: it validates every frame in pure Python, about
    40 us per chunk frame here, so catching up 3000 chunks cost the joiner ~120 ms
    of CPU on the cores the server uses, and the measured catch-up was the client's
    decoding, not the server. cbor2 takes ~1.5 us per frame. The joiner still checks
    what the scenario is about (seqs, live.seq, start_seq); conformance is tested
    elsewhere. ``--wire-decoder`` puts FrameDecoder back, for comparison.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def __iter__(self) -> Any:
        import io

        import cbor2

        fp = io.BytesIO(self._buf)
        decoder = cbor2.CBORDecoder(fp)
        size = len(self._buf)
        while (pos := fp.tell()) < size:
            try:
                item = decoder.decode()
            except cbor2.CBORDecodeEOF:  # an item split across DATA frames
                self._buf = self._buf[pos:]
                return
            yield item
        self._buf = b""


class WireFrames:
    """``wire.FrameDecoder`` (full validation) with FastFrames' dict interface."""

    def __init__(self) -> None:
        from voxer_stream.wire import FrameDecoder, frame_to_obj

        self._decoder = FrameDecoder()
        self._to_obj = frame_to_obj

    def feed(self, data: bytes) -> None:
        self._decoder.feed(data)

    def __iter__(self) -> Any:
        for frame in self._decoder:
            yield self._to_obj(frame)


@dataclass
class JoinPlan:
    index: int
    kind: str  # "fast" (speed 0) or "paced"
    speed: float
    backlog_s: float
    #: Planned request time, seconds after the talker's t0 (later if the previous
    #: join overran its slot).
    start_s: float
    #: Expected length of the join (catch-up + ``after_live``), for the end-of-message check.
    budget_s: float


def joiner_main(
    url: str,
    token: str,
    msg: str,
    plans: list[dict[str, Any]],
    server_pid: int,
    after_live_s: float,
    min_gap_s: float,
    wire_decoder: bool,
    pipe: Conn,
) -> None:
    plan_list = [JoinPlan(**p) for p in plans]
    args = (url, token, msg, plan_list, server_pid, after_live_s, min_gap_s, wire_decoder, pipe)
    run_in_process(pipe, "joiner", _join_all, *args)


async def _join_all(
    url: str,
    token: str,
    msg: str,
    plans: list[JoinPlan],
    server_pid: int,
    after_live_s: float,
    min_gap_s: float,
    wire_decoder: bool,
    pipe: Conn,
) -> list[dict[str, Any]]:
    _, t0, end_ns = await trio.to_thread.run_sync(pipe.recv)
    results: list[dict[str, Any]] = []
    previous_end = 0
    for plan in plans:
        start = max(t0 + int(plan.start_s * 1e9), previous_end + int(min_gap_s * 1e9))
        if start + (plan.budget_s + 2.0) * 1e9 > end_ns:
            # The schedule slipped so far that the message would close mid-join.
            results.append({**asdict(plan), "skipped": True, "error": "no time left"})
            continue
        result = {**asdict(plan), "skipped": False, "error": ""}
        try:
            with trio.fail_after(
                plan.budget_s + JOIN_TIMEOUT_S + (start - time.monotonic_ns()) / 1e9
            ):
                await _join(
                    url, token, msg, plan, t0, start, server_pid, after_live_s, wire_decoder, result
                )
        except Exception as exc:  # recorded, and the run goes on with the next join
            result["error"] = f"join {plan.index}: {exc!r}"
        result["closed_ns"] = time.monotonic_ns()
        previous_end = result["closed_ns"]
        results.append(result)
    return results


async def _join(
    url: str,
    token: str,
    msg: str,
    plan: JoinPlan,
    t0: int,
    start: int,
    server_pid: int,
    after_live_s: float,
    wire_decoder: bool,
    r: dict[str, Any],
) -> None:
    """One join; fills ``r`` as it goes, so a failed join still reports how far it got."""
    from voxer_stream.client.h2conn import H2Connection

    await trio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9 - CONNECT_LEAD_S))
    connect_start = time.monotonic_ns()
    conn = await H2Connection.connect(url)
    r["connect_ms"] = (time.monotonic_ns() - connect_start) / 1e6
    seen: set[int] = set()
    expected = -1  # the next seq in order
    counts = {"received": 0, "duplicated": 0, "reordered": 0, "after_live": 0}
    after_live_lat_us: list[float] = []
    t_live = None
    stream = None
    try:
        await trio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        due = (time.monotonic_ns() - t0) // FRAME_NS + 1  # chunks due so far
        from_seq = max(0, due - round(plan.backlog_s / CHUNK_S))
        expected = from_seq
        path = f"/v1/messages/{msg}/listen?from_seq={from_seq}"
        if plan.speed:
            path += f"&speed={plan.speed:g}"
        r.update(from_seq=from_seq, due_at_request=due, backlog_chunks=due - from_seq)
        server_cpu0, own_cpu0 = cpu_seconds(server_pid), time.process_time()
        t_req = time.monotonic_ns()
        r["t_req_ns"] = t_req
        stream = await conn.request(
            "GET", path, [("authorization", f"Bearer {token}")], end_stream=True
        )
        status = await stream.response_status()
        if status != 200:
            raise RuntimeError(f"listen: HTTP {status}")
        decoder = WireFrames() if wire_decoder else FastFrames()
        while (data := await stream.receive()) is not None:
            now = time.monotonic_ns()
            decoder.feed(data)
            for frame in decoder:
                kind = frame.get("type")
                if kind == "chunk":
                    seq = frame["seq"]
                    counts["received"] += 1
                    if "first_chunk_ms" not in r:
                        r["first_chunk_ms"] = (now - t_req) / 1e6
                        r["t_first_ns"] = now
                        r["first_seq"] = seq
                    if seq in seen:
                        counts["duplicated"] += 1
                        continue
                    if seq != expected:
                        counts["reordered"] += seq < expected
                    seen.add(seq)
                    expected = max(expected, seq + 1)
                    if t_live is not None:
                        counts["after_live"] += 1
                        after_live_lat_us.append((now - (t0 + seq * FRAME_NS)) / 1000)
                elif kind == "message":
                    r["message_ms"] = (now - t_req) / 1e6
                    r["start_seq"] = frame["start_seq"]
                elif kind == "live":
                    t_live = now
                    r["server_cpu_ms"] = (cpu_seconds(server_pid) - server_cpu0) * 1000
                    r["joiner_cpu_ms"] = (time.process_time() - own_cpu0) * 1000
                    r["live_ms"] = (now - t_req) / 1e6
                    r["t_live_ns"] = now
                    live_seq = frame["seq"]
                    r["live_seq"] = live_seq
                    # VXS-4.9-1: every chunk before live.seq received, and nothing more.
                    r["live_seq_ok"] = live_seq == expected and len(seen) == live_seq - from_seq
                    r["caught_up_chunks"] = live_seq - from_seq
                    # Chunks due by the live frame's receipt that live.seq does not cover:
                    # 0 or 1 (the newest may be on its way from the talker) unless the
                    # frame waited in buffers behind the catch-up (a slow reader).
                    r["live_seq_behind_schedule"] = (now - t0) // FRAME_NS + 1 - live_seq
                elif kind == "end":
                    raise RuntimeError(f"the message ended during the join: {frame}")
                else:
                    raise RuntimeError(f"unexpected frame: {frame}")
            if t_live is not None and now >= t_live + after_live_s * 1e9:
                break
        else:
            raise RuntimeError("listen stream ended before the join was done")
    finally:
        r.update(counts)
        r["distinct"] = len(seen)
        # Everything from from_seq up to the highest seq seen must be there.
        r["lost"] = (expected - r["from_seq"] - len(seen)) if "from_seq" in r else 0
        if after_live_lat_us:
            after_live_lat_us.sort()
            r["after_live_latency_ms"] = {
                "p50": round(after_live_lat_us[len(after_live_lat_us) // 2] / 1000, 3),
                "max": round(after_live_lat_us[-1] / 1000, 3),
            }
        with contextlib.suppress(Exception):
            if stream is not None:
                await stream.reset()
        await conn.aclose()


# -- the plan -----------------------------------------------------------------


def make_plans(args: argparse.Namespace) -> tuple[list[JoinPlan], float]:
    """The joins and the message length (seconds) that holds them all."""
    plans: list[JoinPlan] = []
    t = max(args.backlog) + 0.5
    for i in range(args.joins * len(args.backlog)):
        backlog = args.backlog[i % len(args.backlog)]
        plans.append(JoinPlan(len(plans), "fast", 0.0, backlog, t, 2.0 + args.after_live))
        t += args.slot
    for _ in range(args.paced_joins):
        backlog = args.backlog[0]
        catch_up = backlog / (args.speed - 1)
        budget = catch_up + 1.0 + args.after_live
        plans.append(JoinPlan(len(plans), "paced", args.speed, backlog, t, budget))
        t += catch_up + args.after_live + args.paced_gap
    # Room for joins that overrun their slot (each start waits for the previous end).
    return plans, t + 5.0 + 0.05 * t


# -- one run ------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plans, duration = make_plans(args)
    count = math.ceil(duration / CHUNK_S)
    distinct = opus_packets(min(count, DISTINCT_PACKETS), workdir)
    packets = list(itertools.islice(itertools.cycle(distinct), count))
    data_dir = workdir / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    finished = False
    cpu_samples: list[tuple[int, float]] = []
    try:
        talk_token, listen_token, thread = trio.run(setup_accounts, server.url)
        msg = f"bench-{uuid.uuid4().hex[:16]}"
        talker_pipe, child = ctx.Pipe()
        talker = ctx.Process(
            target=talker_main, args=(server.url, talk_token, thread, msg, packets, child)
        )
        talker.start()
        procs.append(talker)
        _expect(talker_pipe, "opened", 30, "talker")

        n = args.listeners
        listener_pipe, child = ctx.Pipe()
        recording = list(range(min(args.record, n)))
        listeners = ctx.Process(
            target=listener_main,
            args=(server.url, listen_token, msg, list(range(n)), recording, 50, child),
        )
        listeners.start()
        procs.append(listeners)
        joiner_pipe, child = ctx.Pipe()
        joiner = ctx.Process(
            target=joiner_main,
            args=(
                server.url,
                listen_token,
                msg,
                [asdict(p) for p in plans],
                server.proc.pid,
                args.after_live,
                args.min_gap,
                args.wire_decoder,
                child,
            ),
        )
        joiner.start()
        procs.append(joiner)
        _expect(listener_pipe, "ready", 60, "listeners")

        t0 = time.monotonic_ns() + 300_000_000
        end_ns = t0 + count * FRAME_NS
        talker_pipe.send(("go", t0))
        joiner_pipe.send(("go", t0, end_ns))
        print(
            f"talking {duration:.0f} s: {len(plans)} joins from {plans[0].start_s:.1f} s on",
            flush=True,
        )
        # Server CPU every 0.5 s: the live-only baseline that catch-up CPU is net of.
        while time.monotonic_ns() < end_ns:
            cpu_samples.append((time.monotonic_ns(), server.cpu_seconds()))
            if talker_pipe.poll(0.5):
                break  # an early message from the talker is an error: read it below
        timeout = 60 + count * CHUNK_S
        talker_result = _expect(talker_pipe, "done", timeout, "talker")
        listener_results = _expect(listener_pipe, "done", timeout, "listeners")
        check_sinks(listener_results)  # the live listeners that are byte-counting sinks
        joins = _expect(joiner_pipe, "done", timeout, "joiner")
        finished = True
    finally:
        stop_processes(procs, finished)
        server.stop()
    return analyse(
        args, plans, t0, count, talker_result, listener_results, joins, cpu_samples, server
    )


# -- analysis -----------------------------------------------------------------


def hdr_summary(values_us: Any, *, percentiles: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict:
    """Percentiles (ms) from an HDR histogram (1 us .. 1 h, 3 significant digits).

    A percentile is reported only when at least one sample lies beyond it (p90
    from 10 samples, p99 from 100, p99.9 from 1000): 20 joins give p50, p90 and
    max, not a pretend p99.
    """
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in values_us:
        if not histogram.record_value(max(1, round(float(value)))):
            raise ValueError(f"{value} us is beyond the histogram's range")
    n = histogram.get_total_count()
    out: dict[str, Any] = {"samples": n}
    if n == 0:
        return out
    for p in percentiles:
        if p == 50 or n * (100 - p) / 100 >= 1:
            out[f"p{p:g}".replace(".", "_")] = round(histogram.get_value_at_percentile(p) / 1000, 3)
    out["max"] = round(histogram.get_max_value() / 1000, 3)
    out["mean"] = round(histogram.get_mean_value() / 1000, 3)
    return out


def _group_name(kind: str, speed: float, backlog: float) -> str:
    return f"{kind} (speed {speed:g}), backlog {backlog:g} s"


def analyse(
    args: argparse.Namespace,
    plans: list[JoinPlan],
    t0: int,
    count: int,
    talker: dict[str, Any],
    listeners: list[dict[str, Any]],
    joins: list[dict[str, Any]],
    cpu_samples: list[tuple[int, float]],
    server: Server,
) -> dict[str, Any]:
    import numpy as np

    from voxer_stream.transports.server import ServerConfig

    tail_limit = ServerConfig().tail_limit
    warm_end = t0 + int(args.warmup * 1e9)
    done = [j for j in joins if not j["skipped"] and "t_live_ns" in j]

    # Live listeners: every arrival as (due time, latency).
    due_ns: list[int] = []
    lat_us: list[float] = []
    for listener in listeners:
        for seq, arrived in listener["arrivals"]:
            due = t0 + seq * FRAME_NS
            due_ns.append(due)
            lat_us.append((arrived - due) / 1000)
    due_arr = np.array(due_ns, dtype=np.int64)
    lat_arr = np.array(lat_us, dtype=np.float64)
    measured = due_arr >= warm_end

    def between(lo: int, hi: int) -> Any:
        return measured & (due_arr >= lo) & (due_arr <= hi)

    def cpu_rate(lo: int, hi: int) -> float | None:
        """The server's CPU share between the first and last samples within [lo, hi]."""
        inside = [(t, c) for t, c in cpu_samples if lo <= t <= hi]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1e9:
            return None
        return (inside[-1][1] - inside[0][1]) / ((inside[-1][0] - inside[0][0]) / 1e9)

    # Server CPU rate with live traffic only: warm-up end to the first join.
    first_req = min((j["t_req_ns"] for j in done), default=t0 + count * FRAME_NS)
    base_rate = cpu_rate(warm_end, first_req - GUARD_NS) or 0.0

    # Join windows against the quiet gap before each join. The live-only phase before
    # the first join is quiet too, for the paced joins' comparison (see below).
    groups: dict[str, dict[str, Any]] = {}
    previous_busy_end = warm_end
    all_quiet = between(warm_end, first_req - GUARD_NS)
    for j in sorted(done, key=lambda j: j["t_req_ns"]):
        name = _group_name(j["kind"], j["speed"], j["backlog_s"])
        g = groups.setdefault(
            name,
            {
                "kind": j["kind"],
                "speed": j["speed"],
                "backlog_s": j["backlog_s"],
                "joins": [],
                "during": np.zeros(len(due_arr), bool),
                "quiet": np.zeros(len(due_arr), bool),
            },
        )
        g["joins"].append(j)
        during = between(j["t_req_ns"], j["t_live_ns"] + FRAME_NS)
        quiet_lo = max(previous_busy_end, j["t_req_ns"] - int(args.slot * 1e9))
        quiet = between(quiet_lo, j["t_req_ns"] - GUARD_NS)
        g["during"] |= during
        g["quiet"] |= quiet
        all_quiet |= quiet
        # Net of the live-only rate in the gap just before the join (the whole-run rate
        # drifts by more than a paced join costs), else the rate before the first join.
        local_rate = cpu_rate(previous_busy_end, j["t_req_ns"] - GUARD_NS)
        j["server_cpu_share_before"] = None if local_rate is None else round(local_rate, 4)
        previous_busy_end = j["closed_ns"] + GUARD_NS
        span = (j["t_live_ns"] - j["t_req_ns"]) / 1e9
        rate = base_rate if local_rate is None else local_rate
        j["server_cpu_net_ms"] = round(j["server_cpu_ms"] - rate * span * 1000, 2)

    summaries = []
    all_fast_during = np.zeros(len(due_arr), bool)
    all_fast_quiet = np.zeros(len(due_arr), bool)
    for name, g in groups.items():
        js = g["joins"]
        summary: dict[str, Any] = {
            "group": name,
            "kind": g["kind"],
            "speed": g["speed"],
            "backlog_s": g["backlog_s"],
            "joins": len(js),
            "backlog_chunks_mean": round(sum(j["backlog_chunks"] for j in js) / len(js), 1),
            # The tail holds the newest ``tail_limit`` chunks (a few more until the
            # next commit trims it): the rest of the backlog is read from SQLite.
            "from_storage_chunks_est": max(0, round(g["backlog_s"] / CHUNK_S) - tail_limit),
            "served_from": "memory"
            if g["backlog_s"] / CHUNK_S <= tail_limit
            else "storage, then memory",
            "time_to_message_ms": hdr_summary([j["message_ms"] * 1000 for j in js]),
            "time_to_first_chunk_ms": hdr_summary([j["first_chunk_ms"] * 1000 for j in js]),
            "time_to_live_edge_ms": hdr_summary([j["live_ms"] * 1000 for j in js]),
            "connect_ms_max": round(max(j["connect_ms"] for j in js), 3),
            "server_cpu_ms_per_join_mean": round(sum(j["server_cpu_ms"] for j in js) / len(js), 1),
            "server_cpu_net_ms_per_join_mean": round(
                sum(j["server_cpu_net_ms"] for j in js) / len(js), 1
            ),
            # Per chunk sent before the live frame (chunks arriving meanwhile included).
            "server_cpu_net_us_per_chunk": round(
                sum(j["server_cpu_net_ms"] for j in js)
                / sum(j["caught_up_chunks"] for j in js)
                * 1000,
                2,
            ),
            "joiner_cpu_ms_per_join_mean": round(sum(j["joiner_cpu_ms"] for j in js) / len(js), 1),
            "lost": sum(j["lost"] for j in js),
            "duplicated": sum(j["duplicated"] for j in js),
            "reordered": sum(j["reordered"] for j in js),
            "live_seq_ok": all(j["live_seq_ok"] for j in js),
            "live_seq_behind_schedule_max": max(j["live_seq_behind_schedule"] for j in js),
            "live_during_ms": hdr_summary(lat_arr[g["during"]]),
        }
        if g["kind"] == "paced":
            # A paced join lasts minutes, its gaps seconds: it is compared with every
            # quiet window of the run, the live-only phase before the first join included.
            summary["live_quiet_ms"] = hdr_summary(lat_arr[all_quiet])
            summary["live_quiet_window"] = "all gaps between joins and the phase before them"
            # At speed s the backlog B' present at the first chunk is caught up
            # B' / (s - 1) seconds later (VXS-6.4-1), 2 B' at 1.5x. The live frame may
            # come up to one chunk (20 ms / (s - 1)) earlier: the server says live as
            # soon as its cursor passes the newest chunk, between two paced sends.
            errors = []
            for j in js:
                backlog_at_first = (j["t_first_ns"] - t0) / 1e9 - j["from_seq"] * CHUNK_S
                j["expected_live_ms"] = round(
                    j["first_chunk_ms"] + backlog_at_first / (j["speed"] - 1) * 1000, 1
                )
                j["live_minus_expected_ms"] = round(j["live_ms"] - j["expected_live_ms"], 1)
                errors.append(j["live_minus_expected_ms"])
            summary["expected_live_edge_ms_mean"] = round(
                sum(j["expected_live_ms"] for j in js) / len(js), 1
            )
            summary["live_edge_minus_expected_ms"] = {"min": min(errors), "max": max(errors)}
            summary["live_edge_matches_expected"] = all(
                abs(e) <= PACED_TOLERANCE_MS for e in errors
            )
        else:
            summary["live_quiet_ms"] = hdr_summary(lat_arr[g["quiet"]])
            summary["live_quiet_window"] = "the gap before each join of this group"
            all_fast_during |= g["during"]
            all_fast_quiet |= g["quiet"]
        summary["live_p99_delta_ms"] = _p99_delta(summary)
        summaries.append(summary)

    fast_impact: dict[str, Any] = {
        "during": hdr_summary(lat_arr[all_fast_during]),
        "quiet_before": hdr_summary(lat_arr[all_fast_quiet]),
    }
    fast_impact["p99_delta_ms"] = _p99_delta(
        {
            "live_during_ms": fast_impact["during"],
            "live_quiet_ms": fast_impact["quiet_before"],
        }
    )

    joins_all = [j for j in joins if not j["skipped"]]
    errors = [j["error"] for j in joins if j["error"]]
    live_lost = sum(x["lost"] if x["ended"] else count - x["distinct"] for x in listeners)
    fast = [s for s in summaries if s["kind"] == "fast"]
    return {
        "joins_planned": len(plans),
        "joins_done": len(done),
        "joins_skipped": sum(1 for j in joins if j["skipped"]),
        "join_errors": errors[:5],
        "join_lost": sum(j.get("lost", 0) for j in joins_all),
        "join_duplicated": sum(j.get("duplicated", 0) for j in joins_all),
        "join_reordered": sum(j.get("reordered", 0) for j in joins_all),
        "groups": summaries,
        "live_impact_fast_joins": fast_impact,
        "targets": _targets(done, fast, fast_impact, args),
        "live_listeners": {
            "listeners": len(listeners),
            "recording": len([x for x in listeners if x["arrivals"]]),
            "chunks_sent": talker["chunks"],
            "lost": live_lost,
            "reordered": sum(x["reordered"] for x in listeners),
            "duplicated": sum(x["duplicated"] for x in listeners),
            "ended": sum(1 for x in listeners if x["ended"]),
            "errors": [x["error"] for x in listeners if x["error"]][:5],
            "latency_ms": hdr_summary(lat_arr[measured]),
        },
        "server_cpu_share_live_only": round(base_rate, 3),
        # [seconds after t0, server CPU share over the second before], for the plot.
        "server_cpu_series": _cpu_series(cpu_samples, t0),
        "talker_send_lag_us": {
            "p50": talker["send_lag_us_p50"],
            "p99": talker["send_lag_us_p99"],
            "max": talker["send_lag_us_max"],
        },
        "talker_closed": talker["closed"],
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "server_exit": server.proc.returncode,
        "server_stderr_tail": server.stderr_tail() if errors else "",
        "server_command": shlex.join(["python", *server.command[1:-1], "TMP"]),
        "tail_limit": tail_limit,
        "joins": [_public(j, t0) for j in joins],
        # For the plot: p99 of live latency per 0.5 s bin.
        "_series": _bins(due_arr[measured], lat_arr[measured], t0),
        "_zoom": _zoom(done, due_arr, lat_arr, measured, t0),
    }


def _p99_delta(summary: dict[str, Any]) -> float | None:
    during, quiet = summary["live_during_ms"], summary["live_quiet_ms"]
    if "p99" not in during or "p99" not in quiet:
        return None
    return round(during["p99"] - quiet["p99"], 3)


def _targets(
    done: list[dict[str, Any]], fast: list[dict[str, Any]], impact: dict[str, Any], args: Any
) -> dict[str, Any]:
    """The issue's targets, each with the statistic actually used."""
    first = hdr_summary([j["first_chunk_ms"] * 1000 for j in done])
    stat = "p99" if "p99" in first else "max"
    targets: dict[str, Any] = {
        "first_chunk_p99_under_50ms": {
            "statistic": f"{stat} of {first.get('samples', 0)} joins (all kinds)",
            "value_ms": first.get(stat),
            "met": first.get(stat) is not None and first[stat] < 50,
        }
    }
    for group in fast:
        live = group["time_to_live_edge_ms"]
        stat = "p99" if "p99" in live else "max"
        targets[f"live_edge_backlog_{group['backlog_s']:g}s_under_200ms"] = {
            "statistic": f"{stat} of {live['samples']} fast joins",
            "value_ms": live.get(stat),
            "met": live.get(stat) is not None and live[stat] < 200,
        }
    delta = impact["p99_delta_ms"]
    targets["live_p99_moves_under_5ms"] = {
        "statistic": "live p99 while fast joins catch up - live p99 in the gaps before them",
        "value_ms": delta,
        "met": delta is not None and abs(delta) < 5,
    }
    return targets


def _public(j: dict[str, Any], t0: int) -> dict[str, Any]:
    """A join for the JSON: absolute clock values as seconds after t0."""
    out = {k: v for k, v in j.items() if not k.endswith("_ns")}
    for key in ("t_req_ns", "t_live_ns", "closed_ns"):
        if key in j:
            out[key.removesuffix("_ns") + "_s"] = round((j[key] - t0) / 1e9, 4)
    for key in (
        "connect_ms",
        "message_ms",
        "first_chunk_ms",
        "live_ms",
        "server_cpu_ms",
        "joiner_cpu_ms",
    ):
        if key in out:
            out[key] = round(out[key], 3)
    return out


def _zoom(
    done: list[dict[str, Any]], due: Any, lat_us: Any, measured: Any, t0: int
) -> dict[str, list[float]]:
    """For the plot: the worst live listener's latency of each chunk around the fast joins."""
    import numpy as np

    fast = [j for j in done if j["kind"] == "fast"]
    if not fast:
        return {"t_s": [], "max_ms": []}
    lo = min(j["t_req_ns"] for j in fast) - 3_000_000_000
    hi = max(j["closed_ns"] for j in fast) + 1_000_000_000
    mask = measured & (due >= lo) & (due <= hi)
    order = np.argsort(due[mask], kind="stable")
    d, lat = due[mask][order], lat_us[mask][order]
    if len(d) == 0:
        return {"t_s": [], "max_ms": []}
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    worst = np.maximum.reduceat(lat, starts)
    return {
        "t_s": [round(float(x), 3) for x in (d[starts] - t0) / 1e9],
        "max_ms": [round(float(x) / 1000, 3) for x in worst],
    }


def _cpu_series(samples: list[tuple[int, float]], t0: int) -> list[list[float]]:
    out = []
    for (t_a, c_a), (t_b, c_b) in itertools.pairwise(samples[::2]):
        if t_b > t_a:
            out.append([round((t_b - t0) / 1e9, 2), round((c_b - c_a) / ((t_b - t_a) / 1e9), 3)])
    return out


def _bins(due: Any, lat_us: Any, t0: int, width_s: float = 0.5) -> dict[str, list[float]]:
    import numpy as np

    if len(due) == 0:
        return {"t_s": [], "p99_ms": []}
    t = (due - t0) / 1e9
    index = np.floor(t / width_s).astype(np.int64)
    ts, p99 = [], []
    for b in np.unique(index):
        values = lat_us[index == b]
        ts.append(round(float(b * width_s), 2))
        p99.append(round(float(np.percentile(values, 99)) / 1000, 3))
    return {"t_s": ts, "p99_ms": p99}


# -- report -------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, zoom, series) = plt.subplots(
        1, 3, figsize=(19.2, 4.8), gridspec_kw={"width_ratios": [1, 1.3, 1]}
    )
    for group in result["groups"]:
        js = [
            j
            for j in result["joins"]
            if _group_name(j["kind"], j["speed"], j["backlog_s"]) == group["group"]
            and "live_ms" in j
        ]
        if group["kind"] != "fast" or not js:
            continue
        for key, style, label in (
            ("live_ms", "-", "live edge"),
            ("first_chunk_ms", ":", "1st chunk"),
        ):
            values = sorted(j[key] for j in js)
            values, ys = [values[0], *values], [0.0, *((i + 1) / len(js) for i in range(len(js)))]
            cdf.step(
                values,
                ys,
                style,
                where="post",
                label=f"{label}, backlog {group['backlog_s']:g} s (n={len(js)})",
            )
    cdf.axvline(200, color="grey", linestyle="--", linewidth=0.8, label="target: live edge 200 ms")
    cdf.axvline(50, color="grey", linestyle=":", linewidth=0.8, label="target: 1st chunk 50 ms")
    cdf.set_xscale("log")
    cdf.set_xlabel("time from request (ms), speed 0 joins")
    cdf.set_ylabel("fraction of joins")
    cdf.set_title("catch-up: time to first chunk and to the live edge")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=8)

    # Middle: each live chunk's worst latency over the listeners, around the fast joins.
    z = result["_zoom"]
    zoom.plot(
        z["t_s"], z["max_ms"], linewidth=0.6, color="tab:blue", label="live chunk, worst listener"
    )
    colors = {60.0: "tab:red", 90.0: "tab:green"}
    labelled: set[Any] = set()
    for j in result["joins"]:
        if j["kind"] != "fast" or "t_live_s" not in j:
            continue
        key = j["backlog_s"]
        # A line, not a span: a catch-up of tens of ms is under a pixel at this scale.
        zoom.axvline(
            j["t_req_s"],
            color=colors.get(key, "tab:purple"),
            alpha=0.6,
            linewidth=0.8,
            label=None if key in labelled else f"join request, backlog {key:g} s",
        )
        labelled.add(key)
    zoom.set_xlabel("message time (s)")
    zoom.set_ylabel("latency, intended send to receipt (ms)")
    zoom.set_title("live listeners while speed-0 joins catch up")
    zoom.grid(True, alpha=0.3)
    zoom.legend(fontsize=8)

    # Right: the whole run in 0.5 s bins, paced joins shaded, fast joins as ticks.
    s = result["_series"]
    series.plot(
        s["t_s"], s["p99_ms"], linewidth=0.6, color="tab:blue", label="live p99 (0.5 s bins)"
    )
    paced = [j for j in result["joins"] if j["kind"] == "paced" and "t_live_s" in j]
    for i, j in enumerate(paced):
        label = f"paced join (speed {j['speed']:g}): request to live" if i == 0 else None
        series.axvspan(
            j["t_req_s"], j["t_live_s"], color="tab:orange", alpha=0.3, linewidth=0, label=label
        )
    fast_starts = [j["t_req_s"] for j in result["joins"] if j["kind"] == "fast" and "t_req_s" in j]
    series.plot(
        fast_starts,
        [0.97] * len(fast_starts),
        "|",
        color="tab:red",
        markersize=12,
        label="speed-0 join",
        transform=series.get_xaxis_transform(),
    )
    series.set_xlabel("message time (s)")
    series.set_ylabel("live listeners' latency p99 (ms)")
    series.set_ylim(bottom=0)
    cpu = series.twinx()
    points = result["server_cpu_series"]
    cpu.plot(
        [p[0] for p in points],
        [p[1] for p in points],
        linewidth=0.5,
        color="tab:gray",
        alpha=0.7,
        label="server CPU share (1 s)",
    )
    cpu.set_ylabel("server CPU share (1.0 = one core)", color="tab:gray")
    cpu.set_ylim(bottom=0)
    series.set_title(f"{result['live_listeners']['listeners']} live listeners, whole run")
    series.grid(True, which="both", alpha=0.3)
    series.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    lines = [
        "| joins | n | 1st chunk p50 / max ms | live edge p50 / max ms | lost/dup/reord "
        "| live p99 quiet -> during ms | server CPU ms/join |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g in result["groups"]:
        first, live = g["time_to_first_chunk_ms"], g["time_to_live_edge_ms"]
        quiet, during = g["live_quiet_ms"], g["live_during_ms"]
        lines.append(
            f"| {g['group']} | {g['joins']} | {first.get('p50', '-')} / {first.get('max', '-')} "
            f"| {live.get('p50', '-')} / {live.get('max', '-')} "
            f"| {g['lost']}/{g['duplicated']}/{g['reordered']} "
            f"| {quiet.get('p99', '-')} -> {during.get('p99', '-')} "
            f"| {g['server_cpu_net_ms_per_join_mean']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks catch-up", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s backlog, 4 + 1 joins (~35 s)")
    parser.add_argument(
        "--backlog",
        type=float,
        nargs="+",
        default=None,
        help="backlog(s) in seconds, alternated across fast joins (60 90)",
    )
    parser.add_argument("--joins", type=int, default=None, help="fast joins per backlog (20)")
    parser.add_argument("--paced-joins", type=int, default=None, help="joins at --speed (3)")
    parser.add_argument("--speed", type=float, default=1.5, help="paced joins' speed (> 1)")
    parser.add_argument("--listeners", type=int, default=10, help="live listeners (10)")
    parser.add_argument("--record", type=int, default=None, help="recording live listeners (all)")
    parser.add_argument("--slot", type=float, default=None, help="seconds between fast joins (3)")
    parser.add_argument("--paced-gap", type=float, default=None, help="quiet s after paced (5)")
    parser.add_argument(
        "--after-live",
        type=float,
        default=1.0,
        help="seconds a joiner stays live, checking the switch (1)",
    )
    parser.add_argument("--min-gap", type=float, default=1.0, help="least s between joins")
    parser.add_argument(
        "--wire-decoder",
        action="store_true",
        help="joiner decodes with voxer_stream.wire.FrameDecoder (validating, ~40 us/frame)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded (1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.backlog is None:
        args.backlog = [5.0] if quick else [60.0, 90.0]
    if args.joins is None:
        args.joins = 4 if quick else 20
    if args.paced_joins is None:
        args.paced_joins = 1 if quick else 3
    if args.slot is None:
        args.slot = 2.0 if quick else 3.0
    if args.paced_gap is None:
        args.paced_gap = 2.0 if quick else 5.0
    if args.record is None:
        args.record = args.listeners
    if args.paced_joins and not 1 < args.speed <= 16:
        parser.error("--speed must be within (1, 16]: slower never reaches the live edge")
    if min(args.backlog) <= args.warmup:
        parser.error("--backlog must be longer than --warmup")
    if args.joins + args.paced_joins < 1:
        parser.error("nothing to do: no joins")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "-m", "benchmarks", "catch-up", *argv])
    with tempfile.TemporaryDirectory(prefix="voxer-bench-") as tmp:
        result = run(args, Path(tmp))
    report = {
        "scenario": "catch-up",
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {
            "backlog_s": args.backlog,
            "fast_joins_per_backlog": args.joins,
            "paced_joins": args.paced_joins,
            "paced_speed": args.speed,
            "live_listeners": args.listeners,
            "recording_listeners": min(args.record, args.listeners),
            "slot_s": args.slot,
            "paced_gap_s": args.paced_gap,
            "after_live_s": args.after_live,
            "joiner_decoder": "voxer_stream.wire.FrameDecoder"
            if args.wire_decoder
            else "cbor2.CBORDecoder (C)",
            "warmup_s": args.warmup,
            "chunk_ms": 20,
            "packets_per_chunk": 1,
            "server": result["server_command"],
            "transport": "HTTP/2 cleartext (h2c prior knowledge), TCP_NODELAY on clients; "
            "one fresh connection per join, one per live listener",
        },
        "result": {k: v for k, v in result.items() if not k.startswith("_")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "catch-up.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(result, args.out / "catch-up.png")
    print(table(result))
    for name, target in result["targets"].items():
        print(f"{name}: {target['value_ms']} ms ({target['statistic']}) met={target['met']}")
    live = result["live_listeners"]
    print(
        f"live listeners: lost {live['lost']} reordered {live['reordered']} duplicated "
        f"{live['duplicated']}; joins done {result['joins_done']}/{result['joins_planned']}, "
        f"errors {result['join_errors']}"
    )
    print(f"wrote {args.out / 'catch-up.json'} and {args.out / 'catch-up.png'}")
    return 0
