"""A tiny JSON client for the messaging service's tests: one account's device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def name(self) -> str:
        return str(self.body["error"]["name"])


@dataclass
class Device:
    """One logged-in session of an account, over its own HTTP/2 connection."""

    http: httpx.AsyncClient
    username: str
    token: str
    id: str
    session_id: str

    async def call(self, method: str, path: str, json: Any = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        response = await self.http.request(method, path, json=json, headers=headers, **kw)
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.json())
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("POST", path, json, **kw)

    async def sync_all(self, since: str | None = None, limit: int = 1000) -> tuple[list[Any], str]:
        """Every event after ``since``, page by page; the events and the last token."""
        events: list[Any] = []
        while True:
            params = {"limit": str(limit)} | ({"since": since} if since else {})
            page = await self.get("/v1/sync", params=params)
            events += page["events"]
            since = page["next"]
            if not page["more"]:
                assert since is not None
                return events, since


async def register(http: httpx.AsyncClient, username: str, password: str = "correct horse") -> None:
    response = await http.post("/v1/accounts", json={"username": username, "password": password})
    assert response.status_code == 201, response.text


async def login(
    http: httpx.AsyncClient, username: str, password: str = "correct horse", device: str = ""
) -> Device:
    response = await http.post(
        "/v1/sessions", json={"username": username, "password": password, "device": device}
    )
    assert response.status_code == 201, response.text
    data = response.json()
    return Device(http, username, data["token"], data["account_id"], data["session_id"])
