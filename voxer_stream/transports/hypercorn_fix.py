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
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
from hypercorn.protocol.h2 import H2Protocol

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
                # StreamClosedError: already reset by us or by the client.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                await self._flush()
            else:
                await original(self, [event])

    setattr(handle_events, _INSTALLED, True)
    return handle_events


def install() -> None:
    """Patch hypercorn's H2Protocol once per process (idempotent)."""
    current = H2Protocol._handle_events
    if not getattr(current, _INSTALLED, False):
        H2Protocol._handle_events = _drop_orphan_data(current)  # type: ignore[method-assign,assignment]
