"""Workers: live threads carried by 1, 2 and 4 server processes on one port (issue 7).

``python -m benchmarks workers [--quick] [--workers 1 2 4] [--limit-ms 50] [--duration S]``

For each N of ``--workers`` the shipped server runs as ``serve --workers N --redis URL
--storage sqlite``: a supervisor holding the port and N ``serve`` processes bound to it
with SO_REUSEPORT (``voxer_stream.workers``). The kernel spreads the connections over
the workers, so a message's talker and most of its listeners are on different
processes and its chunks cross through Redis (``pipeline.remote``). ``serve --workers
1`` is one plain ``serve`` process (the CLI starts a supervisor only for N > 1), still
on ``--redis``: the fair reference, as every N then pays for the bus. With ``--alone``
(the default without ``--quick``) one more series runs plain ``serve`` without Redis,
the one-process server as shipped, to show what the bus itself costs.

Each series is the ``capacity`` search with a 50 ms limit: live threads (one
open-loop real-time talker of 20 ms Opus chunks and 5 HTTP/2 listeners each, every
listener on its own connection, spread over ``--processes`` load-generator processes,
``durability.run_once``) doubled from ``--start`` until the listeners' p99 (from each
chunk's intended send time) passes ``--limit-ms`` or a chunk is lost or doubled; then
``--refine`` bisection steps (geometric midpoints) between the last count that held
and the first that did not. The series are interleaved: at each thread count every
series still holding runs once, in an order that rotates, so that a drift of the
shared machine hits them all. A step that misses the limit with nothing lost runs
once more (``--confirm``) after the others of its round, and holds if either run held:
other processes on a shared machine can only slow a run down. One Redis
(``benchmarks.redis_server``, 127.0.0.1, no persistence) serves the whole run and is
flushed before every step; every step's server gets a fresh data directory.

Server CPU is the sum over the server's process tree (the supervisor and all its
workers, ``live_latency.tree_cpu_seconds``) over the measured window; Redis's CPU and
the whole machine's busy time (``/proc/stat``) are recorded beside it. With every
talker and listener connected, each step checks from ``/proc`` that every socket of
every server process and of Redis is on 127.0.0.1 (``rtc_latency.bound_addresses``)
and records how many server processes there are.

Reported per N: threads carried, deliveries per second, p50 / p99 / p99.9 and server
CPU at the last step that held, and ratios to N = 1 (on Redis): threads carried, and
CPU per delivery both at each one's capacity and at the largest thread count both
held (``compared_at_threads``; CPU per delivery falls as a server gets busier, so the
same-load ratio is the cleaner one). Each step also says where the machine's CPU went:
server, Redis, load generators, and the rest (other processes on the machine: noise).
Results: ``<out>/workers.json``, ``<out>/workers.png``.

On a 2-core machine the load generators, Redis and every worker share the two cores:
more workers than cores cannot carry more, and the figures say how much the extra
processes and the bus cost.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .durability import run_once
from .live_latency import (
    DEFAULT_OUT,
    Server,
    cpu_seconds,
    machine,
    opus_packets,
    process_tree,
)
from .redis_server import RedisServer, redis_process
from .rtc_latency import bound_addresses, busy_seconds, not_loopback

LISTENERS_PER_THREAD = 5
#: A step whose run fails (not one that misses the limit: one that raises, such as a
#: server error while the accounts are made) is tried this many times in all; every
#: failure is recorded in the step's ``failed_attempts``.
ATTEMPTS = 2
#: The series every ratio is taken against: N = 1 on Redis.
REFERENCE = "1"
#: The Redis URL as results show it (its port changes every run).
REDIS_SHOWN = "redis://127.0.0.1:PORT/0"
N1_MODE = (
    "N = 1 runs `serve --workers 1 --redis URL`, which the CLI runs as one plain serve "
    "process on Redis (no supervisor: that starts only for N > 1)"
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N = 1 and 2 only, 2 then 4 threads, 2 s each, no refinement, no second runs, "
        "no --alone",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], metavar="N")
    parser.add_argument(
        "--alone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also one plain serve process without Redis (default: yes, not with --quick)",
    )
    parser.add_argument("--start", type=int, default=5, help="threads at the first step")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--max-threads", type=int, default=640)
    parser.add_argument(
        "--refine",
        type=int,
        default=2,
        help="bisection steps per series between the last count held and the first not",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=1,
        help="runs again of a step that missed the limit (nothing lost) before it counts as "
        "over: it holds if any run held",
    )
    parser.add_argument("--limit-ms", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.start, args.max_threads = [1, 2], 2, 4
        args.duration, args.warmup, args.refine, args.alone = 2.0, 0.5, 0, False
        args.confirm = 0
    if 1 not in args.workers:
        parser.error("--workers must include 1: the ratios are taken against N = 1")
    args.workers = sorted(set(args.workers))
    return args


@dataclass
class Series:
    """One server setup and its capacity search."""

    name: str
    workers: int
    redis: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    held: int = 0  # the largest thread count that held
    over: int | None = None  # the smallest that did not

    def server_args(self, redis_url: str) -> list[str]:
        if not self.redis:
            return []
        return ["--workers", str(self.workers), "--redis", redis_url]


def check_sockets(redis: RedisServer, expected: int) -> Callable[[Server], dict[str, Any]]:
    """``run_once``'s ``on_ready``: with every connection up, every socket of every server
    process and of Redis must be on 127.0.0.1; records them and the server's processes."""

    def check(server: Server) -> dict[str, Any]:
        pids = process_tree(server.proc.pid)
        addresses = sorted({a for pid in pids for a in bound_addresses(pid)})
        redis_addresses = bound_addresses(redis.process.pid)
        stray = not_loopback(addresses) + not_loopback(redis_addresses)
        if stray:
            raise RuntimeError(f"sockets off loopback: {stray}")
        if len(pids) != expected:
            raise RuntimeError(f"{len(pids)} server processes, {expected} expected: {pids}")
        listening = sorted({a for a in addresses if a.endswith(f":{server_port(server)}")})
        return {
            "server_processes": len(pids),
            "server_sockets_on": listening,
            "server_sockets_other": len(addresses) - len(listening),
            "redis_sockets_on": sorted({a.rsplit(":", 1)[0] for a in redis_addresses}),
            "sockets_loopback_only": True,
        }

    return check


def newest_stderr_tail(workdir: Path, size: int = 2000) -> str:
    """The end of the most recent server's stderr (``run_once`` keeps it in ``workdir``)."""
    files = sorted(workdir.glob("*.stderr"), key=lambda f: f.stat().st_mtime)
    if not files:
        return "(none)"
    return files[-1].read_bytes()[-size:].decode("utf-8", "replace")


def server_port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def run_step(
    series: Series,
    threads: int,
    args: argparse.Namespace,
    packets: list[bytes],
    workdir: Path,
    redis: RedisServer,
    run: int = 1,
) -> dict[str, Any]:
    """One step (one server, one load) of ``series`` at ``threads``, appended to its
    steps; ``run`` counts the runs at this thread count (see ``run_round``)."""
    import redis as redis_py

    processes = min(args.processes, threads)
    expected = series.workers + 1 if series.redis and series.workers > 1 else 1
    failures: list[str] = []
    step: dict[str, Any] = {}
    for _attempt in range(ATTEMPTS):
        if series.redis:
            client = redis_py.Redis.from_url(redis.url)
            client.flushall()
            client.close()
        loadavg = round(os.getloadavg()[0], 2)
        try:
            step = run_once(
                "sqlite",
                threads,
                packets,
                args.warmup,
                workdir,
                listeners_per_talker=LISTENERS_PER_THREAD,
                processes=processes,
                extra_args=series.server_args(redis.url),
                on_ready=check_sockets(redis, expected),
                extra_cpu={
                    "redis": lambda: cpu_seconds(redis.process.pid),
                    "machine": busy_seconds,
                },
            )
            break
        except Exception as exc:  # a server error in set-up, a load process that died
            tail = newest_stderr_tail(workdir)
            failures.append(f"{type(exc).__name__}: {exc}; server stderr: {tail}")
            print(f"{series.name:<8} threads={threads:<4} FAILED ({exc}); again", flush=True)
    if not step:
        step = {
            "talkers": threads,
            "listeners": threads * LISTENERS_PER_THREAD,
            "lost": None,
            "duplicated": None,
            "errors": [f"run failed {ATTEMPTS} times: {failures[-1][:500]}"],
        }
    step["failed_attempts"] = failures
    if "other_cpu_share" in step:
        parts = ("server_cpu_share", "clients_cpu_share")
        known = sum(step[k] for k in parts) + step["other_cpu_share"]["redis"]
        step["rest_of_machine_cpu_share"] = round(step["other_cpu_share"]["machine"] - known, 3)
    if "server_command" in step:
        step["server_command"] = step["server_command"].replace(redis.url, REDIS_SHOWN)
    step["loadavg_1min_before"] = loadavg
    step["series"] = series.name
    step["workers"] = series.workers
    step["redis"] = series.redis
    step["limit_ms"] = args.limit_ms
    step["load_processes"] = processes
    latency = step.get("live_latency_ms") or {}
    step["held"] = bool(
        latency
        and latency["p99"] <= args.limit_ms
        and step["lost"] == 0
        and step["duplicated"] == 0
        and not step["errors"]
    )
    step["run"] = run
    series.steps.append(step)
    others = step.get("other_cpu_share") or {}
    print(
        f"{series.name:<8} threads={threads:<4} run={run} "
        f"deliveries/s={step.get('deliveries_per_s', 0):<8} "
        f"p50={latency.get('p50')} p99={latency.get('p99')} ms "
        f"cpu={step.get('server_cpu_share')} ({step.get('server_cpu_us_per_delivery')} us/del) "
        f"redis={others.get('redis')} load={step.get('clients_cpu_share')} "
        f"rest={step.get('rest_of_machine_cpu_share')} "
        f"lost={step['lost']} {'ok' if step['held'] else 'OVER'}"
        + (f" {step['errors'][0]}" if step["errors"] else ""),
        flush=True,
    )
    return step


def run_round(
    todo: list[tuple[Series, int]],
    args: argparse.Namespace,
    packets: list[bytes],
    workdir: Path,
    redis: RedisServer,
) -> None:
    """Each (series, threads) once, in order; then, ``--confirm`` times, those that
    missed the latency limit with nothing lost, doubled or failed run again after the
    others: a step holds if any of its runs held. Other processes on a shared machine
    can only make a run slower, so one run that held shows what the server carries; a
    lost or doubled chunk is never run again."""
    pending = todo
    for run in range(1, args.confirm + 2):
        again = []
        for series, threads in pending:
            step = run_step(series, threads, args, packets, workdir, redis, run)
            if step["held"]:
                series.held = max(series.held, threads)
                continue
            slow_only = step["lost"] == 0 and step["duplicated"] == 0 and not step["errors"]
            if slow_only and run <= args.confirm:
                again.append((series, threads))
            else:
                series.over = threads if series.over is None else min(series.over, threads)
        pending = again


def search(
    all_series: list[Series],
    args: argparse.Namespace,
    packets: list[bytes],
    workdir: Path,
    redis: RedisServer,
) -> None:
    """Doubling, interleaved over the series still holding; then per series
    ``--refine`` geometric midpoints between ``held`` and ``over``."""
    threads, k = args.start, 0
    while threads <= args.max_threads:
        active = [s for s in all_series if s.over is None]
        if not active:
            break
        shift = k % len(active)
        order = active[shift:] + active[:shift]
        run_round([(series, threads) for series in order], args, packets, workdir, redis)
        threads, k = max(threads + 1, round(threads * args.factor)), k + 1
    for _ in range(args.refine):
        todo = []
        for series in all_series:
            if series.held and series.over is not None and series.over - series.held > 1:
                middle = round(math.sqrt(series.held * series.over))
                todo.append((series, min(max(middle, series.held + 1), series.over - 1)))
        run_round(todo, args, packets, workdir, redis)


def at(series: Series, threads: int) -> dict[str, Any] | None:
    """The held step of ``series`` at ``threads``, if any."""
    return next((s for s in series.steps if s["talkers"] == threads and s["held"]), None)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


def _cpu(step: dict[str, Any]) -> dict[str, Any]:
    """Where a step's CPU went, in cores over its measured window."""
    others = step.get("other_cpu_share") or {}
    return {
        "server": step.get("server_cpu_share"),
        "redis": others.get("redis"),
        "load_generators": step.get("clients_cpu_share"),
        "rest_of_machine": step.get("rest_of_machine_cpu_share"),
        "machine_busy": others.get("machine"),
    }


def summarize(series: Series, reference: Series, redis_url: str) -> dict[str, Any]:
    """One series' figures at its capacity, and its ratios to ``reference``: threads
    carried, and CPU per delivery at each one's capacity and at the same load (the
    largest thread count both held, ``compared_at_threads``)."""
    best = at(series, series.held) if series.held else None
    latency = (best or {}).get("live_latency_ms") or {}
    ref_best = at(reference, reference.held) if reference.held else None
    both = {s["talkers"] for s in series.steps if s["held"]} & {
        s["talkers"] for s in reference.steps if s["held"]
    }
    compared = max(both) if both else None
    same = at(series, compared) if compared else None
    ref_same = at(reference, compared) if compared else None
    command = ["python", "-m", "voxer_stream", "serve", "--storage", "sqlite"]
    command += [a if a != redis_url else REDIS_SHOWN for a in series.server_args(redis_url)]
    entry: dict[str, Any] = {
        "name": series.name,
        "workers": series.workers,
        "redis": series.redis,
        "server": shlex.join(command),
        "server_processes": (best or {}).get("server_processes"),
        "capacity_threads": series.held,
        "first_over_threads": series.over,
        "listeners_at_capacity": series.held * LISTENERS_PER_THREAD,
        "deliveries_per_s": (best or {}).get("deliveries_per_s", 0),
        "live_latency_ms": {k: latency.get(k) for k in ("p50", "p99", "p99_9", "max")},
        "server_cpu_share": (best or {}).get("server_cpu_share"),
        "server_cpu_us_per_delivery": (best or {}).get("server_cpu_us_per_delivery"),
        "cpu_cores_at_capacity": _cpu(best or {}),
        "compared_at_threads": compared,
        "at_compared_threads": None
        if same is None
        else {
            "live_latency_ms": same["live_latency_ms"],
            "server_cpu_us_per_delivery": same["server_cpu_us_per_delivery"],
            "cpu_cores": _cpu(same),
        },
    }
    entry["ratio_vs_1"] = {
        "of": f"{series.name} / {reference.name} (N = 1 on Redis)",
        "threads_carried": _ratio(series.held, reference.held),
        "deliveries_per_s": _ratio(
            entry["deliveries_per_s"], (ref_best or {}).get("deliveries_per_s")
        ),
        "cpu_per_delivery_at_capacity": _ratio(
            entry["server_cpu_us_per_delivery"],
            (ref_best or {}).get("server_cpu_us_per_delivery"),
        ),
        "cpu_per_delivery_at_compared_threads": None
        if same is None or ref_same is None
        else _ratio(same["server_cpu_us_per_delivery"], ref_same["server_cpu_us_per_delivery"]),
        "p99_at_compared_threads": None
        if same is None or ref_same is None
        else _ratio(same["live_latency_ms"]["p99"], ref_same["live_latency_ms"]["p99"]),
    }
    entry["steps"] = sorted(series.steps, key=lambda s: (s["talkers"], s["run"]))
    return entry


def _label(entry: dict[str, Any]) -> str:
    n = entry["workers"]
    return f"{n} worker{'s' if n > 1 else ''}" + (" (Redis)" if entry["redis"] else ", no Redis")


def plot(entries: list[dict[str, Any]], limit_ms: float, path: Path) -> None:
    """p99 and server CPU per delivery against threads, per series; and where the
    machine's two cores went at each series' capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 3, 2]}
    )
    ticks = sorted({s["talkers"] for e in entries for s in e["steps"]})
    for entry in entries:
        # Per thread count the run that held, else the last one.
        chosen: dict[int, dict[str, Any]] = {}
        for step in entry["steps"]:
            if step.get("live_latency_ms") and not chosen.get(step["talkers"], {}).get("held"):
                chosen[step["talkers"]] = step
        steps = [chosen[t] for t in sorted(chosen)]
        style = "o-" if entry["redis"] else "s:"
        xs = [s["talkers"] for s in steps]
        left.plot(xs, [s["live_latency_ms"]["p99"] for s in steps], style, label=_label(entry))
        middle.plot(
            xs, [s["server_cpu_us_per_delivery"] for s in steps], style, label=_label(entry)
        )
    left.axhline(limit_ms, color="grey", linewidth=0.8)
    left.set_yscale("log")
    left.set_ylabel("listeners' p99, ms")
    left.set_title(f"live p99 (limit {limit_ms:g} ms)")
    middle.set_ylabel("us (supervisor + workers)")
    middle.set_title("server CPU per delivery")
    for axis in (left, middle):
        axis.set_xscale("log")
        axis.set_xticks(ticks)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("live threads (1 talker + 5 listeners each)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    parts = (
        ("server", "tab:blue"),
        ("redis", "tab:red"),
        ("load_generators", "tab:grey"),
        ("rest_of_machine", "tab:olive"),
    )
    names = [
        f"N = {e['workers']}{'' if e['redis'] else ', no Redis'}\n{e['capacity_threads']} threads"
        for e in entries
    ]
    bottoms = [0.0] * len(entries)
    for key, colour in parts:
        values = [max(0.0, e["cpu_cores_at_capacity"].get(key) or 0.0) for e in entries]
        right.bar(names, values, bottom=bottoms, color=colour, label=key.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    right.axhline(os.cpu_count() or 2, color="grey", linewidth=0.8)
    right.set_ylabel("cores")
    right.set_title("CPU at capacity")
    right.set_ylim(0, 2.8)
    right.tick_params(axis="x", labelsize=7)
    right.legend(fontsize=7, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redis_version() -> str:
    try:
        done = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip()


def source_revision() -> str:
    """The checkout's commit, with ``+changes`` when the server's code differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "voxer_stream"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    all_series = [Series(str(n), n, True) for n in args.workers]
    if args.alone:
        all_series.append(Series("1 alone", 1, False))
    reference = all_series[0]
    started = time.monotonic()
    revision = source_revision()
    with tempfile.TemporaryDirectory(prefix="vxs-workers-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(int(args.duration * 50), workdir)
        redis_dir = workdir / "redis"
        redis_dir.mkdir()
        with redis_process(redis_dir) as redis:
            search(all_series, args, packets, workdir, redis)
            redis_url = redis.url
    entries = [summarize(s, reference, redis_url) for s in all_series]
    workers = [e for e in entries if e["redis"]]
    alone = next((e for e in entries if not e["redis"]), None)
    info = machine()
    try:
        info["packages"]["redis"] = importlib.metadata.version("redis")
    except importlib.metadata.PackageNotFoundError:
        info["packages"]["redis"] = None
    result = {
        "scenario": "workers",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["python", "-m", "benchmarks", "workers", *argv]),
        "machine": info,
        "redis_server": redis_version(),
        "source": revision,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n1_mode": N1_MODE,
        "reference": reference.name,
        "listeners_per_thread": LISTENERS_PER_THREAD,
        "storage": "sqlite (FULL), one data directory shared by the workers",
        "redis": "one redis-server for the run (127.0.0.1, no persistence), FLUSHALL before "
        "every step",
        "wall_s": round(time.monotonic() - started, 1),
        "workers": workers,
        "alone": alone,
    }
    (args.out / "workers.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(entries, args.limit_ms, args.out / "workers.png")
    for e in entries:
        r = e["ratio_vs_1"]
        lat = e["live_latency_ms"]
        print(
            f"{e['name']:<8}: {e['capacity_threads']} threads ({e['deliveries_per_s']} "
            f"deliveries/s), p99 {lat['p99']} ms, {e['server_cpu_us_per_delivery']} us/delivery;"
            f" x {r['threads_carried']} threads, x {r['cpu_per_delivery_at_capacity']} CPU per "
            f"delivery (x {r['cpu_per_delivery_at_compared_threads']} at "
            f"{e['compared_at_threads']} threads)"
        )
    steps = [s for series in all_series for s in series.steps]
    clean = all(s["lost"] == 0 and s["duplicated"] == 0 for s in steps)
    return 0 if steps and clean else 1
