"""Durability: what acknowledging only durable chunks costs, SQLite against a no-op store.

``python -m benchmarks durability [--quick] [--talkers 1 10 50] [--duration S]``

For each talker count T, the shipped server runs twice per round, alternating storage
(``--storage sqlite``, the default with ``synchronous=FULL``, then ``--storage memory``,
which acknowledges at once and keeps nothing), ``--rounds`` rounds:

- T talkers, one load-generator process, each an open-loop real-time upload (one 20 ms
  Opus packet per chunk, chunk ``seq`` due at ``t0 + seq * 20 ms``) on its own HTTP/2
  connection. **Ack latency** of chunk k = arrival of the first ack covering k minus the
  moment k was handed to the socket. **Acked chunks per second** over the measured
  window.
- 5 listeners on talker 0's message, each on its own connection: **live latency** from
  the chunk's intended send time to its arrival, as in ``live-latency``.

The issue's target: durable ack p99 under 20 ms; live p99 with storage within 10 % of
the no-op store. Ratios sqlite/memory come from the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .live_latency import (
    CBOR_SEQ,
    DEFAULT_OUT,
    FRAME_NS,
    SPIN_S,
    Server,
    _expect,
    cpu_seconds,
    machine,
    opus_packets,
    run_in_process,
)

LISTENERS = 5


def storage_server(data_dir: Path, storage: str, extra_args: Sequence[str] = ()) -> Server:
    """The shipped server with ``--storage`` (and ``extra_args``, more ``serve`` options),
    started and stopped as ``live_latency.Server``."""
    return Server(
        data_dir,
        stderr_name=f"{data_dir.name}.stderr",
        options=["--storage", storage, *extra_args],
    )


@dataclass
class LoadResult:
    ack_us: list[int] = field(default_factory=list)  # measured chunks only
    acked_in_window: int = 0
    live_us: list[int] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    errors: list[str] = field(default_factory=list)


async def _setup(url: str, talkers: int) -> tuple[list[str], str, list[str]]:
    """Tokens of ``talkers`` accounts (each with its own thread) and one listener."""
    from voxer_stream.client.rest import Rest

    suffix = uuid.uuid4().hex[:8]
    tokens: list[str] = []
    threads: list[str] = []
    async with Rest(url) as listener:
        await listener.register(f"ear{suffix}", "benchmark-password")
        listen_token = await listener.login(f"ear{suffix}", "benchmark-password")
        for i in range(talkers):
            async with Rest(url) as rest:
                name = f"t{i}x{suffix}"
                await rest.register(name, "benchmark-password")
                tokens.append(await rest.login(name, "benchmark-password"))
                thread = await rest.create_thread("durability", [f"ear{suffix}"])
                threads.append(str(thread["id"]))
    return tokens, listen_token, threads


def load_main(
    url: str,
    tokens: list[str],
    listen_token: str,
    threads: list[str],
    packets: list[bytes],
    warmup_chunks: int,
    follow: list[int],
    pipe: Any,
) -> None:
    args = (url, tokens, listen_token, threads, packets, warmup_chunks, follow, pipe)
    run_in_process(pipe, "load", _load, *args)


async def _load(
    url: str,
    tokens: list[str],
    listen_token: str,
    threads: list[str],
    packets: list[bytes],
    warmup_chunks: int,
    follow: list[int],
    pipe: Any,
) -> LoadResult:
    """Talkers ``tokens`` (one message each) and one listener per entry of ``follow``,
    which names the talker (index into ``tokens``) whose message it follows."""
    from voxer_stream.client.h2conn import H2Connection
    from voxer_stream.media.opus import packet_duration
    from voxer_stream.wire import Ack, Chunk, Closed, End, Error, FrameDecoder, Open, encode_frame

    result = LoadResult()
    msgs = [f"dur-{uuid.uuid4().hex[:12]}-{i}" for i in range(len(tokens))]
    ts = [0]
    for packet in packets:
        ts.append(ts[-1] + packet_duration(packet))
    start = trio.Event()
    t0_box: list[int] = []
    opened_count = [0]
    all_opened = trio.Event()
    listening = [0]
    all_listening = trio.Event()

    async def talker(index: int) -> None:
        sent_at = [0] * len(packets)
        acked = -1
        async with await H2Connection.connect(url) as conn:
            headers = [("content-type", CBOR_SEQ), ("authorization", f"Bearer {tokens[index]}")]
            stream = await conn.request("POST", "/v1/upload", headers)
            await conn.ping()
            open_frame = Open(msg=msgs[index], thread=threads[index], created=1)
            await stream.send(encode_frame(open_frame))
            decoder = FrameDecoder()

            async def read() -> None:
                nonlocal acked
                while (data := await stream.receive()) is not None:
                    now = time.monotonic_ns()
                    decoder.feed(data)
                    for frame in decoder:
                        if isinstance(frame, Error):
                            result.errors.append(f"talker {index}: {frame}")
                        elif isinstance(frame, Ack | Closed):
                            top = frame.seq if isinstance(frame, Ack) else frame.chunks - 1
                            t0 = t0_box[0] if t0_box else 0
                            window_end = t0 + len(packets) * FRAME_NS
                            for seq in range(acked + 1, top + 1):
                                if seq >= warmup_chunks and sent_at[seq]:
                                    result.ack_us.append((now - sent_at[seq]) // 1000)
                                    if now <= window_end:
                                        result.acked_in_window += 1
                            acked = max(acked, top)
                        else:
                            opened_count[0] += 1
                            if opened_count[0] == len(tokens):
                                all_opened.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await start.wait()
                t0 = t0_box[0]
                for seq, packet in enumerate(packets):
                    intended = t0 + seq * FRAME_NS
                    delay = (intended - time.monotonic_ns()) / 1e9 - SPIN_S
                    if delay > 0:
                        await trio.sleep(delay)
                    # Not live_latency.send_on_schedule: its busy spin would hold up
                    # every other talker of this process; here the spin yields.
                    while time.monotonic_ns() < intended:
                        await trio.lowlevel.checkpoint()
                    sent_at[seq] = time.monotonic_ns()
                    chunk = Chunk(seq=seq, ts=ts[seq], packets=(packet,))
                    await stream.send(encode_frame(chunk))
                from voxer_stream.wire import Close

                await stream.send(encode_frame(Close(chunks=len(packets))))
                await stream.end()

    async def listener(index: int) -> None:
        msg = msgs[follow[index]]
        seen: set[int] = set()
        async with await H2Connection.connect(url) as conn:
            stream = await conn.request(
                "GET",
                f"/v1/messages/{msg}/listen",
                [("authorization", f"Bearer {listen_token}")],
                end_stream=True,
            )
            decoder = FrameDecoder()
            counted = False
            while (data := await stream.receive()) is not None:
                now = time.monotonic_ns()
                decoder.feed(data)
                for frame in decoder:
                    if not counted:
                        counted = True
                        listening[0] += 1
                        if listening[0] == len(follow):
                            all_listening.set()
                    if isinstance(frame, Chunk):
                        if frame.seq in seen:
                            result.duplicated += 1
                        seen.add(frame.seq)
                        if frame.seq >= warmup_chunks and t0_box:
                            result.live_us.append(
                                (now - (t0_box[0] + frame.seq * FRAME_NS)) // 1000
                            )
                    elif isinstance(frame, End):
                        result.lost += frame.chunks - len(seen)
                    elif isinstance(frame, Error):
                        result.errors.append(f"listener {index}: {frame}")

    async with trio.open_nursery() as nursery:
        for i in range(len(tokens)):
            nursery.start_soon(talker, i)
        with trio.fail_after(60):
            await all_opened.wait()
        for i in range(len(follow)):
            nursery.start_soon(listener, i)
        if follow:
            with trio.fail_after(60):
                await all_listening.wait()
        pipe.send(("ready",))
        (_, t0) = await trio.to_thread.run_sync(pipe.recv)
        t0_box.append(t0)
        start.set()
    return result


def percentiles(values: list[int]) -> dict[str, Any]:
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(1, 60_000_000, 3)
    for value in values:
        histogram.record_value(max(1, value))

    def ms(p: float) -> float:
        return round(histogram.get_value_at_percentile(p) / 1000, 3)

    return {
        "samples": histogram.get_total_count(),
        "p50": ms(50),
        "p99": ms(99),
        "p99_9": ms(99.9),
        "max": round(histogram.get_max_value() / 1000, 3),
    }


def run_once(
    storage: str,
    talkers: int,
    packets: list[bytes],
    warmup: float,
    workdir: Path,
    *,
    listeners_per_talker: int | None = None,
    processes: int = 1,
    extra_args: Sequence[str] = (),
    on_ready: Callable[[Server], dict[str, Any]] | None = None,
    extra_cpu: Mapping[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """One server, ``talkers`` live messages, listeners, ``processes`` load processes.

    ``listeners_per_talker`` None: ``LISTENERS`` listeners on talker 0's message only
    (the durability question); a number: that many on every talker's message (capacity).
    ``extra_args``: more ``serve`` options (``--workers 2 --redis URL``). ``on_ready``
    is called once every talker and listener is connected, before the first chunk (a
    check of the server's sockets, say); what it returns is added to the result.
    ``extra_cpu``: more CPU clocks (seconds) read over the measured window, reported as
    cores in the result's ``other_cpu_share`` under the same names (the server's and the
    load processes' own are always there: ``server_cpu_share``, ``clients_cpu_share``).
    """
    data_dir = workdir / f"data-{storage}-{talkers}-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    server = storage_server(data_dir, storage, extra_args)
    inspected: dict[str, Any] = {}
    clocks = dict(extra_cpu or {})
    ctx = multiprocessing.get_context("spawn")
    warmup_chunks = int(warmup * 1e9 // FRAME_NS)
    procs: list[Any] = []
    pipes: list[Any] = []
    try:
        tokens, listen_token, threads = trio.run(_setup, server.url, talkers)
        for p in range(processes):
            mine = list(range(p, talkers, processes))
            if listeners_per_talker is None:
                follow = [0] * LISTENERS if p == 0 else []
            else:
                follow = [i for i in range(len(mine)) for _ in range(listeners_per_talker)]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=load_main,
                args=(
                    server.url,
                    [tokens[i] for i in mine],
                    listen_token,
                    [threads[i] for i in mine],
                    packets,
                    warmup_chunks,
                    follow,
                    child,
                ),
            )
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        for parent in pipes:
            _expect(parent, "ready", 120, "load")
        if on_ready is not None:
            inspected = on_ready(server)
        t0 = time.monotonic_ns() + 300_000_000
        for parent in pipes:
            parent.send(("go", t0))
        warm_end = t0 + warmup_chunks * FRAME_NS
        window_end = t0 + len(packets) * FRAME_NS
        time.sleep(max(0.0, (warm_end - time.monotonic_ns()) / 1e9))
        cpu_start = server.cpu_seconds()
        clients_start = sum(cpu_seconds(proc.pid) for proc in procs)
        others_start = {name: clock() for name, clock in clocks.items()}
        time.sleep(max(0.0, (window_end - time.monotonic_ns()) / 1e9))
        cpu = server.cpu_seconds() - cpu_start
        clients_cpu = sum(cpu_seconds(proc.pid) for proc in procs) - clients_start
        others = {name: clock() - others_start[name] for name, clock in clocks.items()}
        parts = [_expect(parent, "done", 120 + len(packets) * 0.02, "load") for parent in pipes]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        server.stop()
    load: dict[str, Any] = {
        "ack_us": [v for part in parts for v in part["ack_us"]],
        "live_us": [v for part in parts for v in part["live_us"]],
        "acked_in_window": sum(part["acked_in_window"] for part in parts),
        "lost": sum(part["lost"] for part in parts),
        "duplicated": sum(part["duplicated"] for part in parts),
        "errors": [e for part in parts for e in part["errors"]],
    }
    window_s = (window_end - warm_end) / 1e9
    measured = len(packets) - warmup_chunks
    result: dict[str, Any] = {
        "storage": storage,
        "talkers": talkers,
        "chunks_per_talker": len(packets),
        "acked_chunks_per_s": round(load["acked_in_window"] / window_s, 1),
        "offered_chunks_per_s": round(talkers * measured / window_s, 1),
        "ack_latency_ms": percentiles(load["ack_us"]),
        "live_latency_ms": percentiles(load["live_us"]),
        "lost": load["lost"],
        "duplicated": load["duplicated"],
        "errors": load["errors"][:5],
        "server_cpu_share": round(cpu / window_s, 3),
        "clients_cpu_share": round(clients_cpu / window_s, 3),
        "listeners": LISTENERS if listeners_per_talker is None else talkers * listeners_per_talker,
        "deliveries_per_s": round(len(load["live_us"]) / window_s, 1),
        "server_cpu_us_per_delivery": round(cpu / len(load["live_us"]) * 1e6, 1)
        if load["live_us"]
        else None,
        "server_command": shlex.join(["python", *server_command(server.command[1:], data_dir)]),
    }
    if clocks:
        result["other_cpu_share"] = {k: round(v / window_s, 3) for k, v in others.items()}
    result.update(inspected)
    return result


def server_command(argv: Sequence[str], data_dir: Path) -> list[str]:
    """``argv`` with the run's temporary data directory shown as ``TMP``."""
    return ["TMP" if arg == str(data_dir) else arg for arg in argv]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per talker count: the median over rounds of each storage, and sqlite/memory ratios."""
    rows = []
    for talkers in sorted({r["talkers"] for r in runs}):

        def median(storage: str, key: str, sub: str, t: int = talkers) -> float:
            values = sorted(
                r[key][sub] for r in runs if r["talkers"] == t and r["storage"] == storage
            )
            return values[len(values) // 2]

        row: dict[str, Any] = {"talkers": talkers}
        for storage in ("sqlite", "memory"):
            row[storage] = {
                "ack_p50_ms": median(storage, "ack_latency_ms", "p50"),
                "ack_p99_ms": median(storage, "ack_latency_ms", "p99"),
                "live_p99_ms": median(storage, "live_latency_ms", "p99"),
                "acked_chunks_per_s": sorted(
                    r["acked_chunks_per_s"]
                    for r in runs
                    if r["talkers"] == talkers and r["storage"] == storage
                )[0],
            }
        row["live_p99_ratio_sqlite_over_memory"] = round(
            row["sqlite"]["live_p99_ms"] / max(row["memory"]["live_p99_ms"], 1e-3), 3
        )
        row["ack_p99_ratio_sqlite_over_memory"] = round(
            row["sqlite"]["ack_p99_ms"] / max(row["memory"]["ack_p99_ms"], 1e-3), 3
        )
        rows.append(row)
    return rows


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for storage, colour in (("sqlite", "tab:blue"), ("memory", "tab:orange")):
        mine = sorted((r for r in runs if r["storage"] == storage), key=lambda r: r["talkers"])
        xs = [r["talkers"] for r in mine]
        left.plot(
            xs,
            [r["ack_latency_ms"]["p99"] for r in mine],
            "o-",
            color=colour,
            label=f"{storage} ack p99",
        )
        left.plot(
            xs,
            [r["ack_latency_ms"]["p50"] for r in mine],
            "o--",
            color=colour,
            label=f"{storage} ack p50",
        )
        right.plot(
            xs,
            [r["live_latency_ms"]["p99"] for r in mine],
            "o-",
            color=colour,
            label=f"{storage} live p99",
        )
    for axis, title in ((left, "ack latency"), (right, "live latency, 5 listeners")):
        axis.set_xscale("log")
        axis.set_xlabel("talkers (20 ms chunks each)")
        axis.set_ylabel("ms")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks durability")
    parser.add_argument("--quick", action="store_true", help="1 and 5 talkers, 3 s, 1 round")
    parser.add_argument("--talkers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.talkers, args.duration, args.rounds, args.warmup = [1, 5], 3.0, 1, 0.5
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vxs-durability-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(int(args.duration * 50), workdir)
        for talkers in args.talkers:
            for round_ in range(args.rounds):
                # A/B alternating, starting with a different one each round.
                order = ("sqlite", "memory") if round_ % 2 == 0 else ("memory", "sqlite")
                for storage in order:
                    run = run_once(storage, talkers, packets, args.warmup, workdir)
                    run["round"] = round_
                    runs.append(run)
                    print(
                        f"T={talkers:<3} {storage:<6} acked/s={run['acked_chunks_per_s']:<8} "
                        f"ack p50={run['ack_latency_ms']['p50']} p99={run['ack_latency_ms']['p99']}"
                        f" ms  live p99={run['live_latency_ms']['p99']} ms  lost={run['lost']}",
                        flush=True,
                    )
    result = {
        "scenario": "durability",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["python", "-m", "benchmarks", "durability", *argv]),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
        "summary": summarize(runs),
    }
    (args.out / "durability.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.out / "durability.png")
    for row in result["summary"]:
        print(
            f"T={row['talkers']}: live p99 sqlite/memory = "
            f"{row['live_p99_ratio_sqlite_over_memory']}, ack p99 sqlite "
            f"{row['sqlite']['ack_p99_ms']} ms vs memory {row['memory']['ack_p99_ms']} ms"
        )
    bad = [r for r in runs if r["lost"] or r["duplicated"] or r["errors"]]
    return 1 if bad else 0
