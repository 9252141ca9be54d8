"""The bus interface, and the subscription both implementations hand out."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import trio

#: Messages a subscription holds for a reader that has not taken them yet.
SUBSCRIPTION_BUFFER: Final = 1000


class Subscription:
    """What one subscriber receives on one channel, in publish order.

    ``overflowed`` is set (and the subscription stops receiving) when the reader
    fell more than ``buffer`` messages behind: the publisher never waits for a slow
    subscriber; the subscriber resyncs from storage instead.
    """

    def __init__(self, channel: str, buffer: int = SUBSCRIPTION_BUFFER) -> None:
        self.channel = channel
        self._send, self._receive = trio.open_memory_channel[bytes](buffer)
        self.overflowed = False

    def deliver(self, data: bytes) -> None:
        """From the bus, in the trio thread; never blocks."""
        if self.overflowed:
            return
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        self._send.close()

    async def receive(self) -> bytes:
        """The next message; ``trio.EndOfChannel`` once closed or overflowed and
        drained."""
        return await self._receive.receive()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._receive.__aiter__()


class Bus(Protocol):
    def publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to the channel's subscribers (in every process); returns at
        once. Messages of one publisher arrive in the order they were published."""

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[Subscription]:
        """Receive what is published on ``channel`` from the moment this returns (the
        subscription is active when ``__aenter__`` returns) until exit."""


async def follow_json(
    bus: Bus, channel: str, *, on_gap: Callable[[], None] | None = None
) -> AsyncGenerator[dict[str, Any]]:
    """The JSON objects published on ``channel``, for as long as the caller reads (close
    it with ``contextlib.aclosing``). A subscription that overflowed (this process fell
    behind) is taken up again, after ``on_gap``: what was missed is gone, the caller
    re-reads whatever it depends on."""
    while True:
        async with bus.subscribe(channel) as subscription:
            async for data in subscription:
                try:
                    message = json.loads(data)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    yield message
        if on_gap is not None:
            on_gap()
