"""Capacity: how many live conversations one server process carries.

``python -m benchmarks capacity [--quick] [--start 5] [--factor 2] [--limit-ms 20]``

Each live thread is one open-loop real-time talker (20 ms Opus chunks) and 5 listeners
on its message, every listener on its own HTTP/2 connection, spread over several
load-generator processes. The number of threads doubles (``--factor``) until the
listeners' p99 latency (from each chunk's intended send time) passes ``--limit-ms``
(one 20 ms frame) or a chunk is lost or doubled; the last step that held is the
capacity. Reported per step: threads, deliveries per second, server CPU share and CPU
per delivery, latency percentiles. The server runs on SQLite (FULL), as shipped.

On a 2-core machine the load generators share the cores with the server, so the
figure is a lower bound of what the server alone would carry; the server's CPU share
at the last step says how close to one core it got.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from .durability import run_once
from .live_latency import DEFAULT_OUT, machine, opus_packets

LISTENERS_PER_THREAD = 5


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks capacity")
    parser.add_argument("--quick", action="store_true", help="2 then 4 threads, 3 s each")
    parser.add_argument("--start", type=int, default=5, help="threads at the first step")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--max-threads", type=int, default=640)
    parser.add_argument("--limit-ms", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.start, args.max_threads, args.duration, args.warmup = 2, 4, 3.0, 0.5
    return args


def plot(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7, 4))
    xs = [s["talkers"] for s in steps]
    for key, style in (("p50", "o--"), ("p99", "o-"), ("p99_9", "o:")):
        left.plot(xs, [s["live_latency_ms"][key] for s in steps], style, label=f"live {key}")
    left.axhline(steps[0]["limit_ms"], color="grey", linewidth=0.8)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("live threads (1 talker + 5 listeners each)")
    left.set_ylabel("ms")
    right = left.twinx()
    right.plot(xs, [s["server_cpu_share"] for s in steps], "s-", color="tab:red", label="CPU")
    right.set_ylabel("server CPU (cores)")
    left.legend(loc="upper left", fontsize=8)
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    capacity = 0
    with tempfile.TemporaryDirectory(prefix="vxs-capacity-") as tmp:
        workdir = Path(tmp)
        packets = opus_packets(int(args.duration * 50), workdir)
        threads = args.start
        while threads <= args.max_threads:
            processes = min(args.processes, threads)
            step = run_once(
                "sqlite",
                threads,
                packets,
                args.warmup,
                workdir,
                listeners_per_talker=LISTENERS_PER_THREAD,
                processes=processes,
            )
            step["limit_ms"] = args.limit_ms
            step["load_processes"] = processes
            held = (
                step["live_latency_ms"]["p99"] <= args.limit_ms
                and not step["lost"]
                and not step["duplicated"]
                and not step["errors"]
            )
            step["held"] = held
            steps.append(step)
            print(
                f"threads={threads:<4} deliveries/s={step['deliveries_per_s']:<8} "
                f"p50={step['live_latency_ms']['p50']} p99={step['live_latency_ms']['p99']} ms "
                f"cpu={step['server_cpu_share']} ({step['server_cpu_us_per_delivery']} us/del) "
                f"lost={step['lost']} {'ok' if held else 'OVER'}",
                flush=True,
            )
            if not held:
                break
            capacity = threads
            threads = max(threads + 1, round(threads * args.factor))
    best = next((s for s in reversed(steps) if s["held"]), None)
    result = {
        "scenario": "capacity",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["python", "-m", "benchmarks", "capacity", *argv]),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "capacity_threads": capacity,
        "deliveries_per_s_at_capacity": best["deliveries_per_s"] if best else 0,
        "steps": steps,
    }
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(steps, args.out / "capacity.png")
    print(
        f"capacity: {capacity} live threads ({result['deliveries_per_s_at_capacity']} "
        f"deliveries/s) with p99 <= {args.limit_ms} ms and nothing lost"
    )
    return 0 if steps and all(not s["lost"] and not s["duplicated"] for s in steps) else 1
