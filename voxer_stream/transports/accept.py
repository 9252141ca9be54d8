"""One port for every binding: HTTP/2 to ``h2server``, the rest to hypercorn.

Each accepted connection is looked at once. A TLS connection whose ALPN chose
``h2``, or a plain one that opens with the HTTP/2 preface (prior knowledge, as
``curl --http2-prior-knowledge`` and our own clients do), is served by
``h2server.Http2Connection``: that is the live path, and the reason this module
exists (see ``h2server``'s docstring for what it saves). Anything else (HTTP/1.1
REST from curl and browsers, the WebSocket binding, an ``Upgrade: h2c``) goes
to hypercorn's own connection handler with the bytes already read put back in
front, so both servers share one port and one ASGI app.

Hypercorn's ``Lifespan`` runs the app's startup and shutdown as
``hypercorn.trio.serve`` would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from ssl import SSLContext
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from .h2server import PREFACE, RECEIVE_SIZE, Http2Connection, Http2Settings

log = logging.getLogger(__name__)


class Replayed(trio.abc.HalfCloseableStream):
    """A socket stream with bytes already read from it put back in front.

    No ``do_handshake`` attribute, so hypercorn's ``TCPServer`` takes it for the
    plain TCP stream it is and reads ``.socket`` for the addresses."""

    def __init__(self, stream: trio.SocketStream, initial: bytes) -> None:
        self.transport = stream
        self.socket = stream.socket
        self._initial = initial

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._initial:
            size = len(self._initial) if max_bytes is None else max_bytes
            data, self._initial = self._initial[:size], self._initial[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


def _address(sock: trio.socket.SocketType, peer: bool) -> tuple[str, int] | None:
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    return (str(address[0]), int(address[1]))


class Acceptor:
    def __init__(
        self,
        app: Any,
        hconfig: HypercornConfig,
        settings: Http2Settings,
        ssl_context: SSLContext | None,
    ) -> None:
        self.app = app
        self.hconfig = hconfig
        self.settings = settings
        self.ssl_context = ssl_context
        self.wrapped = ASGIWrapper(app)
        self.state: dict[str, Any] = {}
        self.context = WorkerContext(None)

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[list[str]]) -> None:
        self.hconfig.set_statsd_logger_class(StatsdLogger)
        lifespan = Lifespan(self.wrapped, self.hconfig, self.state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            listeners = await trio.open_tcp_listeners(port, host=host)
            scheme = "https" if self.ssl_context else "http"
            binds = []
            for listener in listeners:
                name = listener.socket.getsockname()
                binds.append(f"{scheme}://{name[0]}:{name[1]}")
            async with trio.open_nursery() as handlers:
                handlers.start_soon(
                    partial(trio.serve_listeners, self.handle, listeners, handler_nursery=handlers)
                )
                task_status.started(binds)
                await trio.sleep_forever()

    def _http2(self, stream: trio.abc.Stream, sock: Any, initial: bytes = b"") -> Http2Connection:
        return Http2Connection(
            stream,
            self.app,
            settings=self.settings,
            scheme="https" if self.ssl_context else "http",
            client=_address(sock, True),
            server=_address(sock, False),
            state=self.state,
            initial=initial,
        )

    def _hypercorn(self, stream: trio.abc.Stream) -> Callable[[], Any]:
        server: Any = TCPServer(self.wrapped, self.hconfig, self.context, self.state, stream)  # type: ignore[arg-type]
        return server.run  # type: ignore[no-any-return]

    async def handle(self, stream: trio.SocketStream) -> None:
        """Sniff one connection and hand it to the server that speaks its protocol."""
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(
                    stream, self.ssl_context, server_side=True, https_compatible=True
                )
                try:
                    with trio.fail_after(self.hconfig.ssl_handshake_timeout):
                        await tls.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError):
                    await trio.aclose_forcefully(stream)
                    return
                if tls.selected_alpn_protocol() == "h2":
                    await self._http2(tls, stream.socket).run()
                else:
                    await self._hypercorn(tls)()
                return
            initial = b""
            with trio.move_on_after(self.settings.keep_alive):
                while len(initial) < len(PREFACE) and PREFACE.startswith(initial):
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    initial += data
            if not initial:
                await trio.aclose_forcefully(stream)
            elif initial.startswith(PREFACE):
                await self._http2(stream, stream.socket, initial).run()
            else:
                await self._hypercorn(Replayed(stream, initial))()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
        except Exception:
            # One connection's bug must not take the server (and everyone's calls) down.
            log.exception("connection from %s failed", _address(stream.socket, True))
            await trio.aclose_forcefully(stream)
