"""Shared fixtures: a real server on a loopback port, accounts, Opus packets."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from benchmarks.redis_server import RedisServer, redis_process
from voxer_stream.transports.server import ServerConfig, run_server


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    cancel_scope: trio.CancelScope


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The real server (hypercorn, HTTP/2, SQLite) on 127.0.0.1, port 0."""
    config = ServerConfig(port=0, data_dir=tmp_path / "data", synchronous="NORMAL")
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            binds = await nursery.start(run_server, config)
            yield RunningServer(url=binds[0], data_dir=config.data_dir, cancel_scope=scope)
            nursery.cancel_scope.cancel()


@dataclass
class Tls:
    """A server configuration with a certificate from a throwaway CA, and a client
    context that trusts that CA."""

    config: ServerConfig
    client_context: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "data",
        synchronous="NORMAL",
        certfile=str(certfile),
        keyfile=str(keyfile),
    )
    return Tls(config, client_context)


@dataclass
class User:
    username: str
    token: str
    id: str


async def make_user(url: str, username: str, password: str = "correct horse") -> User:
    async with httpx.AsyncClient(base_url=url, http2=True) as http:
        response = await http.post(
            "/v1/accounts", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        response = await http.post(
            "/v1/sessions", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        data = response.json()
        return User(username=username, token=data["token"], id=data["account_id"])


async def make_thread(url: str, owner: User, *others: User, thread_id: str | None = None) -> str:
    async with httpx.AsyncClient(base_url=url, http2=True) as http:
        body: dict[str, object] = {"title": "test", "participants": [u.username for u in others]}
        if thread_id:
            body["id"] = thread_id
        response = await http.post(
            "/v1/threads", json=body, headers={"Authorization": f"Bearer {owner.token}"}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> int:
        """SIGTERM (graceful shutdown) and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


@contextmanager
def server_process(
    data_dir: Path, *options: str, log: Path | None = None
) -> Iterator[ServerProcess]:
    """``voxer-stream serve --port 0`` as a real process; its URL is the first stdout line.

    Its stderr goes to ``log`` if given. On exit the process is stopped (killed if a
    test left it running) and reaped."""
    stderr = log.open("w") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxer_stream",
            "serve",
            "--port=0",
            f"--data-dir={data_dir}",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"https?://127\.0\.0\.1:\d+", line)
        assert match, f"no URL in the server's first line: {line!r}"
        yield ServerProcess(process, match.group(0))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if log is not None:
            stderr.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_process(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A flushed Redis for each test (one server for the session)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def vapid() -> Any:
    """A fresh VAPID key (Web Push, RFC 8292) for the push tests."""
    from voxer_stream.service.webpush import Vapid

    return Vapid.generate()


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    """A local push service and user agent that check VAPID and decrypt."""
    from conformance.push_receiver import PushReceiver

    async with PushReceiver.start() as push_service:
        yield push_service
