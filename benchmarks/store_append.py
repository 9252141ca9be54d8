"""SQLiteStore append: group-commit throughput and ack latency (append_chunks round trip).

Two shapes, each for synchronous=FULL and NORMAL:

* ``closed``: N talkers each append one chunk, wait for it to be durable, append the
  next, as fast as the store allows (the throughput ceiling; batches grow with N).
* ``paced``: N talkers each append one chunk every 20 ms, as live talkers do (the
  latency a talker sees at a given load).

Usage: ``.venv/bin/python benchmarks/store_append.py [--seconds 3] [--talkers 1 10 100]``.
Prints one JSON object per run, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxer_stream.store import MessageRecord, SQLiteStore, StoredChunk, Thread

FRAME = 960  # 20 ms at 48 kHz
PACKET = bytes(range(100))  # a typical 20 ms Opus packet at ~40 kbit/s


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


async def run(
    path: Path, *, shape: str, talkers: int, seconds: float, synchronous: str
) -> dict[str, object]:
    latencies: list[float] = []
    async with SQLiteStore(path, synchronous=synchronous) as store:  # type: ignore[arg-type]
        await store.create_thread(
            Thread(id="t", title="bench", created_by="a", created=0, participants=frozenset())
        )
        for n in range(talkers):
            await store.create_message(
                MessageRecord(
                    id=f"m{n}", thread_id="t", sender="a", codec="opus", created=n, state="live"
                )
            )
        commits0, requests0 = store.commits, store.write_requests
        start = trio.current_time()
        stop_at = start + seconds

        async def talker(n: int) -> None:
            seq = 0
            next_at = start + (n / talkers) * 0.020  # spread paced talkers over a frame
            while True:
                if shape == "paced":
                    await trio.sleep_until(next_at)
                    next_at += 0.020
                t0 = trio.current_time()
                if t0 >= stop_at:
                    return
                chunk = StoredChunk(seq=seq, ts=seq * FRAME, duration=FRAME, packets=(PACKET,))
                await store.append_chunks(f"m{n}", [chunk])
                latencies.append(trio.current_time() - t0)
                seq += 1

        cpu0 = time.process_time()
        async with trio.open_nursery() as nursery:
            for n in range(talkers):
                nursery.start_soon(talker, n)
        elapsed = trio.current_time() - start
        cpu = time.process_time() - cpu0
        commits = store.commits - commits0
        requests = store.write_requests - requests0
        max_batch = store.max_batch
    latencies.sort()
    return {
        "shape": shape,
        "synchronous": synchronous,
        "talkers": talkers,
        "appends": requests,
        "appends_per_s": round(requests / elapsed),
        "commits_per_s": round(commits / elapsed),
        "mean_batch": round(requests / max(commits, 1), 1),
        "max_batch": max_batch,
        "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 2),
        "max_ms": round(latencies[-1] * 1e3, 2) if latencies else None,
        "cpu_per_append_us": round(cpu / max(requests, 1) * 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--talkers", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--paced-talkers", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument("--dir", default=None, help="where the databases go (default: a tmp dir)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        runs = [("closed", n) for n in args.talkers] + [("paced", n) for n in args.paced_talkers]
        for synchronous in args.sync:
            for i, (shape, talkers) in enumerate(runs):
                path = Path(tmp) / f"{synchronous}-{shape}-{i}.sqlite3"
                result = await run(
                    path,
                    shape=shape,
                    talkers=talkers,
                    seconds=args.seconds,
                    synchronous=synchronous,
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    cols = ["shape", "synchronous", "talkers", "appends_per_s", "commits_per_s", "mean_batch"]
    cols += ["p50_ms", "p99_ms", "max_ms", "cpu_per_append_us"]
    print()
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {Path(tmp).parent}")


if __name__ == "__main__":
    trio.run(main)
