"""Bytes on their way to one peer: written at once when the socket takes them.

Why synchronous: the live path writes one small frame per listener per chunk
from inside the talker's ``publish`` (``LiveMessage.follow``), where there is
no task to wake and nothing to await. On plain TCP ``write`` tries a
non-blocking ``send`` right away; what the socket does not take (a full send
buffer: a slow peer), and anything over TLS (which has no synchronous send),
waits in a buffer that the connection's writer task (``run``) drains.

The buffer is bounded by its users: they look at ``buffered`` and stop adding
beyond ``HIGH_WATER`` (waiting in ``wait_progress``, or refusing a live frame so
that the listener's own task takes over), so a peer that stops reading costs
bounded memory and never blocks anyone else's connection (VXS-6.5-1).
"""

from __future__ import annotations

import os
import socket as stdlib_socket
from collections.abc import Callable
from typing import Final

import trio

#: Unsent bytes a connection may hold before its writers wait (or, live, are refused).
HIGH_WATER: Final = 256 * 1024


class Output:
    def __init__(self, stream: trio.abc.Stream, on_lost: Callable[[], None]) -> None:
        self.stream = stream
        self.closed = False
        self._on_lost = on_lost
        self._pending = bytearray()
        self._write_wanted = trio.Event()
        self._progress = trio.Event()
        # Plain TCP: a duplicate of the socket's descriptor for synchronous,
        # non-blocking sends (same open file, so the same O_NONBLOCK flag).
        self._sock: stdlib_socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            self._sock = stdlib_socket.socket(fileno=os.dup(stream.socket.fileno()))
            self._sock.setblocking(False)

    @property
    def buffered(self) -> int:
        """Bytes handed over and not yet taken by the socket."""
        return len(self._pending)

    def write(self, data: bytes) -> None:
        """Send ``data`` now if the socket takes it, else queue it for ``run``."""
        if not data or self.closed:
            return
        if self._pending or self._sock is None:
            self._pending += data
            self._write_wanted.set()
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.lost()
            return
        if sent < len(data):
            self._pending += data[sent:]
            self._write_wanted.set()

    async def run(self) -> None:
        """The writer task: drain what the socket did not take at once. Raises
        ``OSError`` or ``trio.BrokenResourceError`` when the peer is gone."""
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            while self._pending:
                if self._sock is None:
                    data = bytes(self._pending)
                    self._pending.clear()
                    await self.stream.send_all(data)
                else:
                    await trio.lowlevel.wait_writable(self._sock)
                    try:
                        sent = self._sock.send(self._pending)
                    except BlockingIOError:
                        continue
                    del self._pending[:sent]
                if len(self._pending) <= HIGH_WATER:
                    self.wake()

    async def drain(self) -> None:
        """Give the writer a moment (a second at most) to send what is queued (a
        GOAWAY, a close frame) before the connection is closed."""
        with trio.move_on_after(1.0):
            while self._pending and not self.closed:
                await self.wait_progress()

    def wake(self) -> None:
        """Wake everyone in ``wait_progress`` (they re-check their own condition)."""
        self._progress.set()
        self._progress = trio.Event()

    async def wait_progress(self) -> None:
        """Wait until the buffer drains below ``HIGH_WATER``, or ``wake`` is called
        for any other reason (flow-control credit, a stream or the connection gone)."""
        await self._progress.wait()

    def lost(self) -> None:
        """The peer is gone: drop what is queued, tell the owner once."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._on_lost()
        self.wake()

    async def aclose(self) -> None:
        """The connection is over: drop what is queued, close the socket (even while
        being cancelled)."""
        self.lost()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)
