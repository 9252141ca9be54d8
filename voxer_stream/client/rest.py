"""The REST part of the API (spec section 8) over httpx with HTTP/2."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any

import httpx

from .h2conn import ClientError, ConnectionLost, ServerError

__all__ = ["Rest"]


class Rest:
    """``async with Rest(url, token) as rest: await rest.me()``.

    ``login`` stores the token it returns, so later calls are authenticated.
    Errors come back as ``ServerError`` (code and name from the JSON error body).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.AsyncClient(
            base_url=self.url,
            http2=True,
            verify=ssl_context if ssl_context is not None else True,
            timeout=timeout,
        )

    async def __aenter__(self) -> Rest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        auth: bool = True,
        params: dict[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Response:
        headers = {}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        extra: dict[str, Any] = {} if read_timeout is None else {"timeout": read_timeout}
        try:
            response = await self._http.request(
                method, path, json=json, headers=headers, params=params, **extra
            )
        except httpx.TransportError as exc:
            raise ConnectionLost(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    async def register(self, username: str, password: str) -> dict[str, Any]:
        body = {"username": username, "password": password}
        result: dict[str, Any] = await self._json("POST", "/v1/accounts", json=body, auth=False)
        return result

    async def login(self, username: str, password: str) -> str:
        body = {"username": username, "password": password}
        data = await self._json("POST", "/v1/sessions", json=body, auth=False)
        self.token = str(data["token"])
        self.session: dict[str, Any] = data
        return self.token

    async def logout(self) -> None:
        await self._call("DELETE", "/v1/sessions/current")
        self.token = None

    async def me(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/accounts/me")
        return result

    async def create_thread(
        self, title: str, participants: list[str] | tuple[str, ...] = (), id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"title": title, "participants": list(participants)}
        if id is not None:
            body["id"] = id
        result: dict[str, Any] = await self._json("POST", "/v1/threads", json=body)
        return result

    async def threads(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/v1/threads"))["threads"])

    async def thread(self, thread_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/threads/{thread_id}")
        return result

    async def add_participants(self, thread_id: str, usernames: list[str]) -> dict[str, Any]:
        body = {"usernames": list(usernames)}
        path = f"/v1/threads/{thread_id}/participants"
        result: dict[str, Any] = await self._json("POST", path, json=body)
        return result

    async def messages(self, thread_id: str) -> list[dict[str, Any]]:
        return list((await self._json("GET", f"/v1/threads/{thread_id}/messages"))["messages"])

    async def message(self, message_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/messages/{message_id}")
        return result

    async def post_text(
        self, thread_id: str, text: str, *, id: str | None = None, to: str | None = None
    ) -> dict[str, Any]:
        """A text message (VXS-13.3-1); with ``id``, replaying it is harmless."""
        body: dict[str, Any] = {"kind": "text", "text": text}
        if id is not None:
            body["id"] = id
        if to is not None:
            body["to"] = to
        path = f"/v1/threads/{thread_id}/messages"
        result: dict[str, Any] = await self._json("POST", path, json=body)
        return result

    async def sync(
        self, since: str | None = None, *, limit: int = 100, wait: float = 0.0
    ) -> dict[str, Any]:
        """One page of the account's timeline after ``since`` (VXS-13.5-2); with
        ``wait`` (seconds, at most 60) the server holds an empty answer that long."""
        params = {"limit": str(limit), "timeout": str(int(wait * 1000))}
        if since is not None:
            params["since"] = since
        result: dict[str, Any] = await self._json(
            "GET", "/v1/sync", params=params, read_timeout=wait + 30.0
        )
        return result

    async def export(self, message_id: str) -> bytes:
        """The stored message as an Ogg/Opus file."""
        return (await self._call("GET", f"/v1/messages/{message_id}/audio.opus")).content

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/health", auth=False)
        return result


def _error(response: httpx.Response) -> ClientError:
    try:
        error = response.json()["error"]
        return ServerError(
            int(error["code"]),
            str(error["name"]),
            str(error.get("detail", "")),
            status=response.status_code,
        )
    except (ValueError, KeyError, TypeError):
        return ClientError(f"HTTP {response.status_code}: {response.text[:200]}")
