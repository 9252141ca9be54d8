"""``voxer-stream serve --workers N``: N server processes on one port, one service.

One Python process uses one core. The supervisor reserves the port (a socket bound
with SO_REUSEPORT that never listens, so that the port stays ours), starts N ordinary
``serve`` processes that bind it with SO_REUSEPORT (the kernel spreads connections over
them), and prints the URL once every worker is listening. The workers share the data
directory (SQLite in WAL mode takes one writer at a time, across processes) and a
Redis (``--redis``), through which a talker on one worker reaches listeners on the
others and timelines and presence are one (``voxer_stream.bus``, ``pipeline.remote``).

A worker that dies is started again (its talkers and listeners reconnect to the
others meanwhile, and resume). SIGTERM or SIGINT stops every worker gracefully.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

log = logging.getLogger(__name__)

#: A worker that keeps dying is restarted no faster than this (seconds).
RESTART_BACKOFF: Final = 1.0
STOP_GRACE: Final = 15.0
PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM it when the supervisor dies (Linux
    ``PR_SET_PDEATHSIG``), so that a killed supervisor leaves no orphan workers."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_argv(argv: Sequence[str], port: int) -> list[str]:
    """``serve``'s own arguments without ``--workers``, on the reserved port."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [*out, f"--port={port}", "--reuse-port"]


class Supervisor:
    def __init__(self, argv: Sequence[str], *, host: str, port: int, count: int) -> None:
        if count < 1:
            raise ValueError("--workers must be at least 1")
        self.count = count
        self.host = host
        self._reserved = _reserve(host, port)
        self.port = int(self._reserved.getsockname()[1])
        serve = worker_argv(argv, self.port)
        self.command = [sys.executable, "-m", "voxer_stream", "serve", *serve]
        self.workers: list[subprocess.Popen[str]] = []
        self.stopping = threading.Event()

    def _spawn(self) -> subprocess.Popen[str]:
        # A worker's stdout is its "serving on" line: read here, not shown twice.
        return subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent
        )

    def _ready(self, worker: subprocess.Popen[str]) -> str:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited before serving (code {worker.wait()})")
        return line.strip()

    def run(self, scheme: str = "http") -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        try:
            self.workers = [self._spawn() for _ in range(self.count)]
            for worker in self.workers:
                self._ready(worker)
            print(
                f"voxer-stream serving on {scheme}://{self.host}:{self.port}"
                f" ({self.count} workers)",
                flush=True,
            )
            while not self.stopping.wait(0.2):
                for i, worker in enumerate(self.workers):
                    code = worker.poll()
                    if code is None or self.stopping.is_set():
                        continue
                    log.warning("worker %d (pid %d) exited (%s): restarting", i, worker.pid, code)
                    if worker.stdout is not None:
                        worker.stdout.close()
                    time.sleep(RESTART_BACKOFF)
                    self.workers[i] = self._spawn()
                    self._ready(self.workers[i])
            return self._stop()
        finally:
            for worker in self.workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
                if worker.stdout is not None:
                    worker.stdout.close()
            self._reserved.close()

    def _stop(self) -> int:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(worker.wait())
        return 0 if all(code == 0 for code in codes) else 1
