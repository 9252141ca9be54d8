"""Keep hypercorn's HTTP/2 server alive when a response ends before its request.

A server may answer a request before it has read the whole body (RFC 9113
section 8.1): we do so for every refused upload (401, 403, 404) and after an
error frame. hypercorn 0.18 then looks up the finished stream for the client's
next DATA frame, gets a ``KeyError`` its trio worker does not catch, and the
whole process exits (pgjones/hypercorn#329, see shared/STACK-NOTES.md). One
unauthenticated request could take the server down.

The fix below drops DATA for streams the server has finished: it returns the
flow-control credit (so the connection's window does not shrink for good) and
asks the client to stop sending with RST_STREAM(NO_ERROR), as section 8.1
suggests. It wraps the original handler, so any other event is untouched.

A hang of the same family: hypercorn hands request body pieces to the app
through a memory channel of 10 items and never closes it when the app returns.
An app that answered without reading the rest of the body leaves hypercorn's
connection task blocked forever on a full channel, and with it every other
stream of that connection; worse, hypercorn puts the ``http.disconnect`` event
from inside the app's own last ``send``, so with a full channel the app waits
on itself. The third replacement closes the channel when the app is done,
drops body pieces nobody will read, and never blocks on a disconnect.

A second crash of the same kind: when a client closes its connection while a
response is being written, ``TCPServer._close`` calls ``send_eof`` without the
send lock, the concurrent ``send_all`` raises ``trio.BusyResourceError``, which
hypercorn catches nowhere, and the process exits. A listener that hangs up in
the middle of a message must not take the server down; the second wrapper
treats that error as what it is, a connection that is gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h2.errors
import h2.events
import h2.exceptions
import trio
from hypercorn.events import Closed, Event
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.task_group import _handle as _handle_app
from hypercorn.trio.tcp_server import TCPServer

_INSTALLED = "_voxer_stream_fix"

Handler = Callable[[Any, list[h2.events.Event]], Awaitable[None]]


def _drop_orphan_data(original: Handler) -> Handler:
    async def handle_events(self: Any, events: list[h2.events.Event]) -> None:
        # Events are handled one by one: whether a stream exists must be judged
        # after the events before it (a HEADERS in the same read creates it).
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                # While the response is still being written (its buffer exists), only
                # drop the data: RST_STREAM must follow a *complete* response (8.1).
                if event.stream_id not in self.stream_buffers:
                    # StreamClosedError: already reset by us or by the client.
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                await self._flush()
            else:
                await original(self, [event])

    setattr(handle_events, _INSTALLED, True)
    return handle_events


Send = Callable[[Any, Event], Awaitable[None]]


def _closed_on_busy(original: Send) -> Send:
    async def protocol_send(self: Any, event: Event) -> None:
        try:
            await original(self, event)
        except trio.BusyResourceError:
            # _close() is sending EOF on this stream right now: the peer is gone.
            await self.protocol.handle(Closed())

    setattr(protocol_send, _INSTALLED, True)
    return protocol_send


async def _spawn_app_closing_queue(
    self: Any, app: Any, config: Any, scope: Any, send: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    send_channel, receive_channel = trio.open_memory_channel[Any](config.max_app_queue_size)
    disconnect = {
        "type": "websocket.disconnect" if scope["type"] == "websocket" else "http.disconnect"
    }

    async def receive() -> Any:
        try:
            return await receive_channel.receive()
        except trio.EndOfChannel:
            return disconnect  # ``put`` closed the queue instead of blocking on it

    async def app_then_close(*args: Any) -> None:
        try:
            await app(*args)
        finally:
            # Closed as soon as the app returns: blocked and later puts fail fast.
            await receive_channel.aclose()

    async def run() -> None:
        async with receive_channel:
            await _handle_app(
                cast(Any, app_then_close),
                config,
                scope,
                receive,
                send,
                trio.to_thread.run_sync,
                trio.from_thread.run,
            )

    async def put(event: Any) -> None:
        try:
            if event["type"] == disconnect["type"]:
                # hypercorn puts the disconnect from inside the app's own final send;
                # waiting for room in a full queue there would deadlock the app on
                # itself. Closing the queue delivers the disconnect after what is queued.
                try:
                    send_channel.send_nowait(event)
                except trio.WouldBlock:
                    send_channel.close()
            else:
                await send_channel.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the app has returned or was told of the disconnect: drop it

    self._nursery.start_soon(run)
    return put


setattr(_spawn_app_closing_queue, _INSTALLED, True)


def install() -> None:
    """Patch hypercorn once per process (idempotent)."""
    current = H2Protocol._handle_events
    if not getattr(current, _INSTALLED, False):
        H2Protocol._handle_events = _drop_orphan_data(current)  # type: ignore[method-assign,assignment]
    if not getattr(TaskGroup.spawn_app, _INSTALLED, False):
        TaskGroup.spawn_app = _spawn_app_closing_queue  # type: ignore[method-assign]
    send = TCPServer.protocol_send
    if not getattr(send, _INSTALLED, False):
        TCPServer.protocol_send = _closed_on_busy(send)  # type: ignore[method-assign,assignment]
