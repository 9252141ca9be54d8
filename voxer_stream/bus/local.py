"""The bus within one process: what a single server uses, and the reference the Redis
bus is tested against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .base import SUBSCRIPTION_BUFFER, Subscription


class LocalBus:
    def __init__(self, buffer: int = SUBSCRIPTION_BUFFER) -> None:
        self.buffer = buffer
        self._subscriptions: dict[str, set[Subscription]] = {}

    def publish(self, channel: str, data: bytes) -> None:
        for subscription in list(self._subscriptions.get(channel, ())):
            subscription.deliver(data)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        await trio.lowlevel.checkpoint()
        subscription = Subscription(channel, self.buffer)
        self._subscriptions.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscriptions[channel]
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[channel]
            subscription.close()
