"""``python -m benchmarks <scenario> [options]``: run one benchmark scenario by name."""

from __future__ import annotations

import importlib
import runpy
import sys

#: Scenario name -> module with ``main(argv: list[str]) -> int``.
SCENARIOS = {
    "live-latency": "benchmarks.live_latency",
    "catch-up": "benchmarks.catch_up",
    "slow-listeners": "benchmarks.slow_listeners",
    "durability": "benchmarks.durability",
    "capacity": "benchmarks.capacity",
}
#: Older stand-alone scripts, run as ``__main__`` with the remaining arguments.
SCRIPTS = {
    "store-append": "benchmarks.store_append",
}


def usage() -> str:
    names = ", ".join([*SCENARIOS, *SCRIPTS])
    return f"usage: python -m benchmarks <scenario> [options]; scenarios: {names}"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
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
