"""The WebSocket binding's connections, served with ``wsproto`` directly on the socket.

Why not hypercorn: the same reason as ``h2server``. Through hypercorn each
frame to a WebSocket listener took an ASGI message, a queue and a task switch,
about 80 us of server CPU per delivery; here a listener at the live edge is
written by the talker's ``publish`` (``try_send``), one WebSocket frame header
and one non-blocking ``send``.

The app still sees ASGI (``websocket.connect``, ``websocket.receive``, ...), so
``websocket.py`` is the one place where the binding's rules live; this module
is only the server. The scope carries this connection as
``extensions["voxer.ws"]`` for the live path.

Incoming messages go to the app through a small channel: when the app does not
keep up, the reader stops reading the socket and TCP slows the peer down.
Messages are reassembled from fragments up to ``MAX_MESSAGE`` bytes; a longer
one closes the connection with 1009 (message too big), as hypercorn did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..wire import MAX_FRAME_SIZE
from .output import HIGH_WATER, Output
from .peer import Peer

log = logging.getLogger(__name__)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: Longest message reassembled (a frame may be at most MAX_FRAME_SIZE; twice that
#: leaves room for the binding to answer FRAME_TOO_LARGE before closing with 1009).
MAX_MESSAGE: Final = 2 * MAX_FRAME_SIZE
RECEIVE_SIZE: Final = 65536
#: How long a closing handshake may take before the socket is closed anyway.
CLOSE_TIMEOUT: Final = 2.0


class WebSocketConnection:
    """One WebSocket connection, from the HTTP/1.1 upgrade request on."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        app: App,
        peer: Peer,
        *,
        initial: bytes,
    ) -> None:
        self.stream = stream
        self.app = app
        self.peer = peer
        self._initial = initial
        self.ws = WSConnection(ConnectionType.SERVER)
        self.output = Output(stream, self._lost)
        self._to_app, self._from_peer = trio.open_memory_channel[dict[str, Any]](16)
        self._batch: list[bytes] = []
        self.accepted = False
        self._peer_closed = trio.Event()

    # -- the live path (a DirectSink's two methods, see pipeline.sink) ---------------

    def try_send(self, frame: bytes) -> bool:
        if not self._open or self.output.buffered > HIGH_WATER:
            return False
        self._batch.append(self.ws.send(BytesMessage(data=frame)))
        return True

    def flush(self) -> None:
        if self._batch:
            data = b"".join(self._batch)
            self._batch.clear()
            self.output.write(data)

    @property
    def _open(self) -> bool:
        return self.accepted and self.ws.state is ConnectionState.OPEN and not self.output.closed

    # -- the connection --------------------------------------------------------------

    def _lost(self) -> None:
        self._to_app.close()
        self._peer_closed.set()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.output.run)
                request = self._handshake(self._initial)
                if request is not None:
                    nursery.start_soon(self._read_loop)
                    await self._serve(request)
                    await self._finish_close()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.output.aclose()

    def _handshake(self, data: bytes) -> Request | None:
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    return event
        except RemoteProtocolError as exc:
            self.output.write(self.ws.send(exc.event_hint or RejectConnection(status_code=400)))
        return None

    async def _read_loop(self) -> None:
        parts: list[bytes | str] = []
        size = 0
        try:
            while self.ws.state not in (ConnectionState.CLOSED, ConnectionState.REJECTING):
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.ws.receive_data(bytes(data) if data else None)
                for event in self.ws.events():
                    if isinstance(event, Message):
                        parts.append(event.data)
                        size += len(event.data)
                        if size > MAX_MESSAGE:
                            self._close(1009, "message too big")
                            return
                        if event.message_finished:
                            message = self._message(parts)
                            parts, size = [], 0
                            await self._to_app.send(message)
                    elif isinstance(event, Ping):
                        self.output.write(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if self.ws.state is ConnectionState.REMOTE_CLOSING:
                            self.output.write(self.ws.send(event.response()))
                        await self._disconnect(event.code)
                        return
                if not data:
                    await self._disconnect(1006)
                    return
        except RemoteProtocolError as exc:
            log.info("WebSocket protocol error from %s: %s", self.peer.client, exc)
            self._close(1002, "protocol error")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._peer_closed.set()
            self._to_app.close()

    @staticmethod
    def _message(parts: list[bytes | str]) -> dict[str, Any]:
        if parts and isinstance(parts[0], str):
            return {"type": "websocket.receive", "text": "".join(str(p) for p in parts)}
        return {
            "type": "websocket.receive",
            "bytes": b"".join(p if isinstance(p, bytes | bytearray) else p.encode() for p in parts),
        }

    async def _disconnect(self, code: int) -> None:
        self._peer_closed.set()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._to_app.send({"type": "websocket.disconnect", "code": code})

    def _close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (or finish the one the peer started)."""
        if self.ws.state is ConnectionState.OPEN:
            self.output.write(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def _finish_close(self) -> None:
        """Wait (a little) for the peer's close frame, so it reads ours before the FIN."""
        self._close(1000)
        await self.output.drain()
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._peer_closed.wait()

    # -- the ASGI bridge -------------------------------------------------------------

    def _scope(self, request: Request) -> dict[str, Any]:
        path, _, query = request.target.partition("?")
        headers = [(b"host", request.host.encode("latin-1"))]
        headers += [(bytes(k).lower(), bytes(v)) for k, v in request.extra_headers]
        return {
            "type": "websocket",
            "asgi": {"spec_version": "2.3", "version": "3.0"},
            "http_version": "1.1",
            "scheme": "wss" if self.peer.scheme == "https" else "ws",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": self.peer.client,
            "server": self.peer.server,
            "subprotocols": list(request.subprotocols),
            "state": dict(self.peer.state),
            "extensions": {"voxer.ws": self},
        }

    async def _serve(self, request: Request) -> None:
        connected = False

        async def receive() -> dict[str, Any]:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            try:
                return await self._from_peer.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "websocket.accept" and not self.accepted:
                self.accepted = True
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                self.output.write(
                    self.ws.send(
                        AcceptConnection(
                            subprotocol=message.get("subprotocol"), extra_headers=headers
                        )
                    )
                )
            elif kind == "websocket.send":
                while self._open and self.output.buffered > HIGH_WATER:
                    await self.output.wait_progress()
                if not self._open:
                    return  # the peer is gone or closing; the app will hear of it
                if message.get("bytes") is not None:
                    event: Message[Any] = BytesMessage(data=bytes(message["bytes"]))
                else:
                    event = TextMessage(data=str(message.get("text", "")))
                self.flush()  # anything publish wrote goes first
                self.output.write(self.ws.send(event))
                # Let the live path in between the messages of a long catch-up.
                await trio.lowlevel.checkpoint()
            elif kind == "websocket.close":
                if not self.accepted:
                    self.output.write(self.ws.send(RejectConnection(status_code=403)))
                else:
                    self.flush()
                    self._close(int(message.get("code", 1000)), str(message.get("reason", "")))

        try:
            await self.app(self._scope(request), receive, send)
        except LocalProtocolError:
            log.exception("WebSocket app broke the protocol")
        except Exception:
            log.exception("error serving WebSocket %s", request.target)
            if self.ws.state is ConnectionState.CONNECTING:
                self.output.write(self.ws.send(RejectConnection(status_code=500)))
            else:
                self._close(1011, "internal error")
        if self.ws.state is ConnectionState.CONNECTING:
            self.output.write(self.ws.send(RejectConnection(status_code=403)))
        self.flush()
