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
from functools import partial
from ssl import SSLContext
from typing import Any, Final

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from .h2server import PREFACE, RECEIVE_SIZE, Http2Connection, Http2Settings
from .peer import Peer, socket_address
from .wsserver import WebSocketConnection

#: The longest HTTP/1.1 request head looked at (hypercorn takes over beyond it).
MAX_HEAD: Final = 65536
#: The WebSocket binding's path (VXS-11-1), served by ``wsserver``.
WS_PATH: Final = b"/v1/ws"

log = logging.getLogger(__name__)


class Replayed(trio.abc.HalfCloseableStream):
    """A stream with bytes already read from it put back in front.

    Every other attribute is the wrapped stream's, so hypercorn's ``TCPServer``
    tells a TLS stream (``do_handshake``, already done, returns at once;
    ``selected_alpn_protocol``) from a plain one (``socket``) as usual."""

    def __init__(self, stream: trio.abc.Stream, initial: bytes) -> None:
        self.transport = stream
        self._initial = initial

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

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
        await self.transport.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.transport.aclose()


async def read_head(stream: trio.abc.Stream, patience: float) -> bytes:
    """The connection's first bytes: the HTTP/2 preface, or a whole HTTP/1.1 request
    head (up to ``MAX_HEAD`` bytes); fewer if the peer stops sending, goes away, or
    takes longer than ``patience`` seconds."""
    initial = b""
    with trio.move_on_after(patience):
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            initial += data
            if len(initial) < len(PREFACE) and PREFACE.startswith(initial):
                continue  # perhaps HTTP/2: wait for the whole preface
            if initial.startswith(PREFACE) or b"\r\n\r\n" in initial or len(initial) > MAX_HEAD:
                break
    return initial


def is_websocket_upgrade(head: bytes) -> bool:
    """Whether an HTTP/1.1 request head asks for ``GET /v1/ws`` with Upgrade: websocket."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    request = lines[0].split(b" ")
    if len(request) != 3 or request[0] != b"GET" or request[1].split(b"?")[0] != WS_PATH:
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


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

    async def serve(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        self.hconfig.set_statsd_logger_class(StatsdLogger)
        lifespan = Lifespan(self.wrapped, self.hconfig, self.state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            if reuse_port:
                listeners = [await reuse_port_listener(host, port)]
            else:
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
        peer = Peer.of(sock, tls=self.ssl_context is not None, state=self.state)
        return Http2Connection(stream, self.app, peer, settings=self.settings, initial=initial)

    async def _http1(self, stream: trio.abc.Stream, sock: Any, head: bytes) -> None:
        """An HTTP/1.1 connection: the WebSocket binding to ``wsserver``, the rest to
        hypercorn (REST, and any later request on a kept-alive connection)."""
        if is_websocket_upgrade(head):
            peer = Peer.of(sock, tls=self.ssl_context is not None, state=self.state)
            await WebSocketConnection(stream, self.app, peer, initial=head).run()
            return
        server: Any = TCPServer(
            self.wrapped,
            self.hconfig,
            self.context,
            self.state,
            Replayed(stream, head),  # type: ignore[arg-type]
        )
        await server.run()

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
                elif head := await read_head(tls, self.settings.keep_alive):
                    await self._http1(tls, stream.socket, head)
                else:
                    await trio.aclose_forcefully(tls)
                return
            head = await read_head(stream, self.settings.keep_alive)
            if not head:
                await trio.aclose_forcefully(stream)
            elif head.startswith(PREFACE):
                await self._http2(stream, stream.socket, head).run()
            else:
                await self._http1(stream, stream.socket, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
        except Exception:
            # One connection's bug must not take the server (and everyone's calls) down.
            log.exception("connection from %s failed", socket_address(stream.socket, True))
            await trio.aclose_forcefully(stream)


async def reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    """A listening socket with SO_REUSEPORT: the kernel spreads the connections of one
    port over every process bound to it (``serve --workers``)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
