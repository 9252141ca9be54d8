"""``python -m benchmarks <scenario> [options]``: run one benchmark scenario by name.

``python -m benchmarks all [--quick] [--out DIR]`` runs every scenario, each in a
subprocess, then ``report`` on the results.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Scenario name -> module with ``main(argv: list[str]) -> int``.
SCENARIOS = {
    "live-latency": "benchmarks.live_latency",
    "catch-up": "benchmarks.catch_up",
    "slow-listeners": "benchmarks.slow_listeners",
    "durability": "benchmarks.durability",
    "capacity": "benchmarks.capacity",
    "workers": "benchmarks.workers",
    "rtc-latency": "benchmarks.rtc_latency",
    "report": "benchmarks.report",
}
#: Older stand-alone scripts, run as ``__main__`` with the remaining arguments.
SCRIPTS = {
    "store-append": "benchmarks.store_append",
}
#: What ``all`` runs, in order: (scenario and its arguments, subdirectory of --out).
#: The one-connection-per-listener and WebSocket variants stop at N = 100 (unless
#: --quick): 1,000 connections each would double the run for one more point.
ALL_RUNS: list[tuple[list[str], str]] = [
    (["live-latency"], ""),
    (["live-latency", "--streams-per-conn", "1"], "one-connection-per-listener"),
    (["live-latency", "--transport", "ws"], "websocket"),
    (["capacity"], ""),
    (["workers"], ""),
    (["catch-up"], ""),
    (["durability"], ""),
    (["slow-listeners"], ""),
    (["rtc-latency"], ""),
]
VARIANT_LISTENERS = {
    "one-connection-per-listener": ["--listeners", "1", "10", "100"],
    "websocket": ["--listeners", "1", "10", "100"],
}
HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"


def usage() -> str:
    names = ", ".join([*SCENARIOS, *SCRIPTS, "all"])
    return f"usage: python -m benchmarks <scenario> [options]; scenarios: {names}"


def run_all(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks all",
        description="Run every scenario one after the other, each in its own "
        "subprocess (`python -m benchmarks NAME ... --out DIR`, so one crash does not "
        "hide the others), then `report` on the results. Without --quick this takes "
        "about 55 minutes on 2 cores (rtc-latency, voxer and Janus over WebRTC, about 5 of "
        "them; workers, 1, 2 and 4 server processes on Redis, about 12).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="pass --quick to every scenario (a few minutes in all); results then go to a "
        "new temporary directory unless --out is given, so benchmarks/results is not "
        "overwritten by quick runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="results directory (default: benchmarks/results; with --quick a new temporary "
        "directory). The report rewrites benchmarks/README.md when DIR is "
        "benchmarks/results, otherwise DIR/README.md",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="voxer-bench-quick-")) if args.quick else DEFAULT_RESULTS
        )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    summary: list[str] = []
    for k, (scenario, sub) in enumerate(ALL_RUNS, 1):
        command = [
            sys.executable,
            "-m",
            "benchmarks",
            *scenario,
            *(["--quick"] if args.quick else VARIANT_LISTENERS.get(sub, [])),
            "--out",
            str(out / sub if sub else out),
        ]
        name = " ".join(scenario)
        print(f"\n=== [{k}/{len(ALL_RUNS)}] {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        try:
            code = subprocess.run(command, cwd=HERE.parent, check=False).returncode
        except OSError as exc:
            print(f"could not start {name}: {exc}", file=sys.stderr)
            code = -1
        took = time.monotonic() - start
        summary.append(f"{'ok    ' if code == 0 else 'FAILED'} {name} ({took:.0f} s, exit {code})")
        if code != 0:
            failed.append(name)
    readme = HERE / "README.md" if out.resolve() == DEFAULT_RESULTS else out / "README.md"
    print(f"\n=== report on {out} -> {readme}", flush=True)
    from benchmarks import report

    report_code = report.main(["--results", str(out), "--readme", str(readme)])
    print("\n" + "\n".join(summary))
    if failed:
        print(f"{len(failed)} of {len(ALL_RUNS)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results in {out}")
    return report_code


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all(rest)
    if name in SCENARIOS:
        module = importlib.import_module(SCENARIOS[name])
        result: int = module.main(rest)
        return result
    if name in SCRIPTS:
        sys.argv = [name, *rest]
        runpy.run_module(SCRIPTS[name], run_name="__main__", alter_sys=True)
        return 0
    print(f"unknown scenario {name!r}; {usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
