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
treats that error as what it is, a connection that is gone. The same wrapper
shields the close itself: over HTTP/1.1 a response that ends before its request
body makes hypercorn close the connection from the app's task, which quart-trio
cancels at that moment; half-closed, the connection hung the client's next
keep-alive request (seen by the conformance suite, 2-3% of refused POSTs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio
from h2.stream import StreamState
from hypercorn.events import Closed, Event
from hypercorn.protocol.events import Body
from hypercorn.protocol.h2 import BUFFER_LOW_WATER, H2Protocol, StreamBuffer
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.task_group import _handle as _handle_app
from hypercorn.trio.tcp_server import TCPServer

_INSTALLED = "_voxer_stream_fix"

Handler = Callable[[Any, list[h2.events.Event]], Awaitable[None]]


def _drop_data(
    connection: h2.connection.H2Connection, event: h2.events.DataReceived, *, resetting: bool
) -> None:
    """Give back the flow-control credit of DATA nobody will read; reset if the response
    is complete. While it is still being written (hypercorn's send task has yet to send
    END_STREAM), RST_STREAM would cut it short (RFC 9113 8.1 wants a complete response
    first), so the credit is returned at once with explicit WINDOW_UPDATEs instead: h2's
    own acknowledgement may wait for more data that a client out of window never sends.
    """
    stream_id, length = event.stream_id, event.flow_controlled_length
    if resetting:
        connection.acknowledge_received_data(length, stream_id)
        # StreamClosedError: already reset by us or by the client.
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
    elif length > 0:
        connection.increment_flow_control_window(length)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            connection.increment_flow_control_window(length, stream_id=stream_id)


def _drop_orphan_data(original: Handler) -> Handler:
    async def handle_events(self: Any, events: list[h2.events.Event]) -> None:
        # Events are handled one by one: whether a stream exists must be judged
        # after the events before it (a HEADERS in the same read creates it).
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                _drop_data(
                    self.connection, event, resetting=event.stream_id not in self.stream_buffers
                )
                await self._flush()
            else:
                await original(self, [event])

    setattr(handle_events, _INSTALLED, True)
    return handle_events


SendData = Callable[[Any, int], Awaitable[None]]


def _reset_after_complete_response(original: SendData) -> SendData:
    """Once END_STREAM of a response is out while its request is still open, send
    RST_STREAM(NO_ERROR) (RFC 9113 section 8.1): the client stops sending a body nobody
    will read. Without it a client that ran out of window waits forever, since a
    finished stream gets no more WINDOW_UPDATEs from anyone."""

    async def send_data(self: Any, stream_id: int) -> None:
        await original(self, stream_id)
        if stream_id in self.stream_buffers:
            return  # the response is still being written
        stream = self.connection.streams.get(stream_id)
        if stream is not None and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            await self._flush()

    setattr(send_data, _INSTALLED, True)
    return send_data


StreamSend = Callable[[Any, Any], Awaitable[None]]


def _direct_body(original: StreamSend) -> StreamSend:
    """Write a response body piece straight to the connection when it is the
    connection's only response being sent, nothing is queued before it and the
    flow-control window allows, instead of through the stream buffer and the
    connection's send task: one task switch and the priority tree less per delivered
    chunk, the live path's unit of work. Anything else (other streams, a queued buffer,
    a closed window, a large piece, END_STREAM) takes hypercorn's own path, so order
    and flow control are kept. With many streams on one connection the send task's
    single writer stays: writes from every stream's own task queue on the send lock
    and cost more latency than they save (benchmarks/README.md)."""

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, Body) and len(self.stream_buffers) == 1:
            buffer = self.stream_buffers.get(event.stream_id)
            if buffer is not None and not buffer.buffer and not buffer._complete:
                connection = self.connection
                try:
                    room = min(
                        connection.local_flow_control_window(event.stream_id),
                        connection.max_outbound_frame_size,
                    )
                except h2.exceptions.StreamClosedError:
                    room = 0
                if 0 < len(event.data) <= room:
                    try:
                        connection.send_data(event.stream_id, event.data)
                    except h2.exceptions.ProtocolError:
                        # The peer reset the stream (a listener that left) between the
                        # window check and now: the data has nowhere to go, and the app
                        # learns of the end from its disconnect event.
                        return
                    await self._flush()
                    return
        await original(self, event)

    setattr(stream_send, _INSTALLED, True)
    return stream_send


Send = Callable[[Any, Event], Awaitable[None]]


def _closed_on_busy(original: Send) -> Send:
    async def protocol_send(self: Any, event: Event) -> None:
        try:
            if isinstance(event, Closed):
                # Closing must finish even when the task doing it is being cancelled:
                # the app task that sends a response's last byte runs it, and the app
                # may be cancelling that task at that very moment (quart-trio does
                # once it sees the disconnect). Cancelled half-way, the socket stays
                # open with nobody reading it: the client's next request hangs.
                with trio.CancelScope(shield=True):
                    await original(self, event)
            else:
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


async def _pop_then_release_below_low_water(self: StreamBuffer, max_length: int) -> bytes:
    """hypercorn's ``StreamBuffer.pop``, releasing a blocked ``push`` only when what is
    *left* falls below the low-water mark.

    The original tests the size of what it popped: ``pop(0)``, which its sender calls
    whenever the client's window is closed, pops nothing and releases the writer. A
    listener that stops reading thus made the server buffer the whole message in
    memory, without limit, and the reader never fell back to storage (VXS-6.5-2).
    """
    length = min(len(self.buffer), max_length)
    data = bytes(self.buffer[:length])
    del self.buffer[:length]
    if len(self.buffer) < BUFFER_LOW_WATER:
        await self._paused.set()
    if not self.buffer:
        await self._is_empty.set()
    return data


setattr(_pop_then_release_below_low_water, _INSTALLED, True)


def install() -> None:
    """Patch hypercorn once per process (idempotent)."""
    current = H2Protocol._handle_events
    if not getattr(current, _INSTALLED, False):
        H2Protocol._handle_events = _drop_orphan_data(current)  # type: ignore[method-assign,assignment]
    if not getattr(H2Protocol._send_data, _INSTALLED, False):
        H2Protocol._send_data = _reset_after_complete_response(  # type: ignore[method-assign,assignment]
            H2Protocol._send_data
        )
    if not getattr(H2Protocol.stream_send, _INSTALLED, False):
        H2Protocol.stream_send = _direct_body(H2Protocol.stream_send)  # type: ignore[method-assign,assignment]
    if not getattr(TaskGroup.spawn_app, _INSTALLED, False):
        TaskGroup.spawn_app = _spawn_app_closing_queue  # type: ignore[method-assign]
    if not getattr(StreamBuffer.pop, _INSTALLED, False):
        StreamBuffer.pop = _pop_then_release_below_low_water  # type: ignore[method-assign]
    send = TCPServer.protocol_send
    if not getattr(send, _INSTALLED, False):
        TCPServer.protocol_send = _closed_on_busy(send)  # type: ignore[method-assign,assignment]
