"""A throwaway ``redis-server`` on a free 127.0.0.1 port, for the tests and benchmarks.

``redis_process(directory)`` starts Debian's ``redis-server`` (``./dev test`` installs
it) bound to 127.0.0.1 only, with no persistence (no RDB snapshots, no AOF: it holds
only what the bus and the membership put there), waits until it answers PING and
kills it on exit. ``tests/conftest.py`` (the ``redis_server`` and ``redis_url``
fixtures) and ``benchmarks/workers.py`` both use it: there is one copy.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_process(directory: Path) -> Iterator[RedisServer]:
    """Debian's ``redis-server`` on a free loopback port, no persistence (it holds only
    what the bus and the membership put there)."""
    port = _free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        else:
            raise RuntimeError("redis-server did not start")
        client.close()
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        process.kill()
        process.wait()
