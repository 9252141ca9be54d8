"""The bus and the membership between processes, on Redis (redis-py's sync client).

redis-py's asyncio client does not run under trio, so the Redis connections live in
threads of their own and nothing here blocks the trio loop:

* **Publishing** puts the message on a queue and returns. One publisher thread takes
  whatever is queued and sends it as one pipeline of PUBLISH commands (one round trip
  for a burst), so a process's messages reach Redis, and every subscriber, in the
  order they were published.
* **Subscribing** is one pub/sub connection read by one reader thread. Subscribe and
  unsubscribe commands are handed to that thread (a pub/sub connection is not for two
  threads at once); ``subscribe`` returns only when Redis has confirmed it, so that a
  caller who subscribes *then* reads storage misses nothing in between. Messages go
  to the trio thread with ``TrioToken.run_sync_soon``.
* **Membership** is a sorted set: each process adds itself with an expiry (Redis's own
  clock, in a Lua script, so hosts need not agree on the time) every ``period``
  seconds and reads who is alive; a process that stops heartbeating is dropped after
  ``ttl`` seconds. A process that leaves on purpose removes itself and says so on a
  channel, so the others converge at once.

If Redis goes away, publishes are dropped (and counted) until it is back: the bus is
at most once; what matters is made whole from storage by sequence number.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Self

import redis
import trio

from .base import SUBSCRIPTION_BUFFER, Subscription
from .ring import Ring

log = logging.getLogger(__name__)

#: The most PUBLISH commands one pipeline carries.
PIPELINE_MAX: Final = 512
#: How long the reader thread waits for a message before it looks at its commands.
READER_POLL: Final = 0.02
MEMBERS_KEY: Final = "voxer:members"
MEMBERS_CHANNEL: Final = "voxer:members"

_STOP = object()

_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')
"""


class RedisBus:
    """``async with RedisBus("redis://127.0.0.1:6379/0") as bus:``"""

    def __init__(self, url: str, *, buffer: int = SUBSCRIPTION_BUFFER) -> None:
        self.url = url
        self.buffer = buffer
        #: Messages that could not be sent (Redis unreachable).
        self.dropped = 0
        self.published = 0
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._confirmed: dict[str, trio.Event] = {}
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    async def __aenter__(self) -> Self:
        self._token = trio.lowlevel.current_trio_token()
        client = redis.Redis.from_url(self.url)
        await trio.to_thread.run_sync(client.ping)  # fail now, not in a thread later
        self._threads = [
            threading.Thread(target=self._publisher, args=(client,), name="voxer-bus-pub"),
            threading.Thread(target=self._reader, name="voxer-bus-sub", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        self._outbox.put(_STOP)
        with trio.CancelScope(shield=True):
            for thread in self._threads:
                await trio.to_thread.run_sync(thread.join)
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.close()

    # -- publishing --------------------------------------------------------------------

    def publish(self, channel: str, data: bytes) -> None:
        self._outbox.put((channel, data))

    def _publisher(self, client: redis.Redis) -> None:
        try:
            while True:
                first = self._outbox.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < PIPELINE_MAX:
                    try:
                        item = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._send(client, batch)
                        return
                    batch.append(item)
                self._send(client, batch)
        finally:
            client.close()

    def _send(self, client: redis.Redis, batch: list[tuple[str, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for channel, data in batch:
            pipe.publish(channel, data)
        try:
            pipe.execute()
            self.published += len(batch)
        except redis.RedisError as exc:
            self.dropped += len(batch)
            log.warning("bus: %d messages not published: %s", len(batch), exc)

    # -- subscribing -------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(channel, self.buffer)
        subscribers = self._subscriptions.setdefault(channel, set())
        first = not subscribers
        subscribers.add(subscription)
        try:
            if first:
                confirmed = self._confirmed.setdefault(channel, trio.Event())
                self._commands.put(("subscribe", channel))
                await confirmed.wait()
            else:
                await self._confirmed[channel].wait()
            yield subscription
        finally:
            subscribers.discard(subscription)
            subscription.close()
            if not subscribers:
                del self._subscriptions[channel]
                self._confirmed.pop(channel, None)
                self._commands.put(("unsubscribe", channel))

    def _reader(self) -> None:
        assert self._token is not None
        token = self._token
        client = redis.Redis.from_url(self.url)
        open_pubsub: Any = client.pubsub  # untyped in redis-py
        pubsub = open_pubsub()
        try:
            while not self._stopping.is_set():
                try:
                    self._read_some(pubsub, token)
                except redis.RedisError as exc:
                    log.warning("bus: the subscriber connection failed: %s; retrying", exc)
                    self._stopping.wait(0.5)
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
            client.close()

    def _read_some(self, pubsub: Any, token: trio.lowlevel.TrioToken) -> None:
        while True:
            try:
                command, channel = self._commands.get_nowait()
            except queue.Empty:
                break
            getattr(pubsub, command)(channel)
        message = pubsub.get_message(timeout=READER_POLL)
        if message is None:
            return
        kind = message["type"]
        channel = message["channel"].decode() if message["channel"] else ""
        if kind == "message":
            self._call(token, self._deliver, channel, bytes(message["data"]))
        elif kind == "subscribe":
            self._call(token, self._confirm, channel)

    @staticmethod
    def _call(token: trio.lowlevel.TrioToken, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn, *args)

    def _deliver(self, channel: str, data: bytes) -> None:
        for subscription in list(self._subscriptions.get(channel, ())):
            subscription.deliver(data)

    def _confirm(self, channel: str) -> None:
        event = self._confirmed.get(channel)
        if event is not None:
            event.set()


class Membership:
    """This process in the ring of live server processes, kept in Redis.

    ``run`` heartbeats every ``period`` seconds (start it in a nursery with
    ``await nursery.start(membership.run)``: it returns once the first heartbeat has
    seen the ring); ``ring`` is the current ring, ``changed`` is set and replaced each
    time its members change.
    """

    def __init__(self, url: str, member: str, *, ttl: float = 3.0, period: float = 1.0) -> None:
        if not 0 < period < ttl:
            raise ValueError("the heartbeat period must be shorter than the ttl")
        self.url = url
        self.member = member
        self.ttl = ttl
        self.period = period
        self.ring = Ring()
        self.changed = trio.Event()
        self._limiter = trio.CapacityLimiter(1)

    def _update(self, members: list[bytes] | list[str]) -> None:
        names = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if tuple(names) != self.ring.members:
            self.ring = Ring(names)
            changed, self.changed = self.changed, trio.Event()
            changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = redis.Redis.from_url(self.url)
        heartbeat = client.register_script(_HEARTBEAT)
        ttl_ms = str(int(self.ttl * 1000))

        def beat() -> list[bytes]:
            result: list[bytes] = heartbeat(keys=[MEMBERS_KEY], args=[self.member, ttl_ms])
            return result

        try:
            self._update(await trio.to_thread.run_sync(beat, limiter=self._limiter))
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen_for_changes, beat)
                while True:
                    await trio.sleep(self.period)
                    try:
                        self._update(await trio.to_thread.run_sync(beat, limiter=self._limiter))
                    except redis.RedisError as exc:
                        log.warning("membership: heartbeat failed: %s", exc)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._leave, client)

    def _leave(self, client: redis.Redis) -> None:
        with contextlib.suppress(redis.RedisError):
            client.zrem(MEMBERS_KEY, self.member)
            client.publish(MEMBERS_CHANNEL, self.member)
        client.close()

    async def _listen_for_changes(self, beat: Callable[[], list[bytes]]) -> None:
        """Another process left on purpose: heartbeat now rather than at the next tick."""
        async with RedisBus(self.url) as bus, bus.subscribe(MEMBERS_CHANNEL) as changes:
            async for _ in changes:
                with contextlib.suppress(redis.RedisError):
                    self._update(await trio.to_thread.run_sync(beat, limiter=self._limiter))

    def owner(self, key: str) -> str | None:
        return self.ring.owner(key)

    @property
    def dropped_after(self) -> float:
        """The longest a dead process stays in the ring of the others (seconds)."""
        return self.ttl + self.period if math.isfinite(self.ttl) else math.inf
