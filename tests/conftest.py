"""Shared fixtures: a real server on a loopback port, accounts, Opus packets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

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
