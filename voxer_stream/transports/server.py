"""Run the server: storage, hub, and the ASGI app behind one port.

HTTP/2 is served by ``h2server`` (the live path), HTTP/1.1 and WebSocket by
hypercorn's trio worker; ``accept`` decides per connection.

``run_server`` is a trio task that reports its bound URLs through
``task_status`` (so tests do ``urls = await nursery.start(run_server, config)``
with port 0) and stops cleanly when cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from hypercorn.config import Config as HypercornConfig

from ..bus import Bus, LocalBus, Membership, RedisBus
from ..pipeline import Hub
from ..pipeline.remote import Relay
from ..service.contacts import Contacts
from ..service.identity import Identity, now_ms
from ..service.messages import Messages
from ..service.notify import PushDispatch
from ..service.threads import Threads
from ..service.timeline import Timeline
from ..service.webpush import PushSender, Vapid
from ..store import Store, open_store
from ..wire import MAX_FRAME_SIZE
from . import hypercorn_fix
from .accept import Acceptor
from .app import Router
from .h2server import Http2Settings
from .rtc_shared import SharedSessions
from .streams import Services
from .webrtc import RtcGateway

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8750
    data_dir: Path = Path("data")
    certfile: str | None = None
    keyfile: str | None = None
    #: Chunks of a live message kept in memory (60 s of 20 ms chunks).
    tail_limit: int = 3000
    #: A live message with no talker for this long is closed (VXS-5.7-3).
    abandon_after: float = 300.0
    #: "FULL" survives power loss; "NORMAL" survives a killed process only.
    synchronous: str = "FULL"
    #: "sqlite" (durable, the default) or "memory" (SQLite on a RAM file without fsync;
    #: nothing survives the process: for measuring what the disk costs, never for data
    #: anyone wants to keep).
    storage: str = "sqlite"
    max_streams: int = 2000
    #: Timeline events older than this are trimmed (VXS-13.5-4); 0 keeps them all.
    timeline_retention_days: float = 90.0
    #: The contact the server's Web Push requests name (VAPID ``sub``, RFC 8292).
    push_subject: str = "mailto:admin@localhost"
    #: Accept push endpoints over http on loopback (tests, local development).
    allow_local_push: bool = False
    #: A Redis shared with other server processes on the same store (``redis://...``):
    #: timeline wake-ups and presence cross processes through it (issue 7).
    redis_url: str | None = None
    #: This process's name in the ring of processes sharing ``redis_url``.
    member: str | None = None
    #: "host[:port],..." of Cassandra/ScyllaDB nodes, for storage="cassandra".
    cassandra_hosts: str = "127.0.0.1"
    #: Bind with SO_REUSEPORT, so that several processes share the port (``--workers``).
    reuse_port: bool = False
    #: A WHIP session quiet for this long closes its message (VXS-12-4).
    rtc_idle_timeout: float = 5.0
    #: A WebRTC peer not connected this long after the answer is given up (VXS-12-10).
    rtc_connect_timeout: float = 30.0
    #: WebRTC sessions one account may have open at once (VXS-12-12).
    rtc_max_sessions: int = 20
    #: WebRTC sessions the server has open at once, all accounts together (VXS-12-12).
    rtc_max_total: int = 500


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [f"{config.host}:{config.port}"]
    if config.certfile:
        hconfig.certfile = config.certfile
        hconfig.keyfile = config.keyfile
    hconfig.alpn_protocols = ["h2", "http/1.1"]
    hconfig.h2_max_concurrent_streams = config.max_streams
    # Listen streams and uploads are long: never cut an idle-looking connection
    # that has open streams; hypercorn's keep-alive only applies between requests.
    hconfig.keep_alive_timeout = 75
    hconfig.websocket_max_message_size = 2 * MAX_FRAME_SIZE
    hconfig.graceful_timeout = 2.0
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


#: Where ``storage="memory"`` keeps its database: a RAM file system when there is one.
RAM_DIR: Final = "/dev/shm" if os.path.isdir("/dev/shm") else None

#: The server's VAPID key (Web Push, RFC 8292), created in the data directory.
VAPID_FILENAME: Final = "vapid.pem"


async def trim_timelines(store: Store, days: float) -> None:
    """Drop timeline events older than ``days``, hourly; a device whose since-token is
    older gets ``limited`` and re-reads its state (VXS-13.5-4)."""
    if not math.isfinite(days) or days <= 0:
        return
    while True:
        try:
            removed = await store.trim_events(now_ms() - int(days * 86_400_000))
            if removed:
                log.info("trimmed %d timeline events older than %g days", removed, days)
        except Exception:
            log.exception("could not trim the timelines")
        await trio.sleep(3600)


#: How long streams get to say SHUTTING_DOWN before the server stops for good.
SHUTDOWN_GRACE: Final = 2.0


async def run_server(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, or until ``shutdown`` is set: then every upload gets its
    last acks and every stream a SHUTTING_DOWN error (VXS-5.6-3) before the server stops."""
    hypercorn_fix.install()
    os.makedirs(config.data_dir, exist_ok=True)
    with contextlib.ExitStack() as scratch:
        if config.storage == "memory":
            # The same engine on a file in RAM (tmpfs) without fsync: what the disk
            # and its syncs cost, measured side by side with "sqlite".
            log.warning("storage in memory: acknowledged chunks do NOT survive this process")
            where = scratch.enter_context(tempfile.TemporaryDirectory(dir=RAM_DIR))
            opened: Store = open_store(where, synchronous="OFF")
        elif config.storage == "sqlite":
            opened = open_store(config.data_dir, synchronous=config.synchronous)
        elif config.storage == "cassandra":
            from ..store.cassandra import open_cassandra_store

            opened = open_cassandra_store(config.cassandra_hosts)
        else:
            raise ValueError(f"unknown storage {config.storage!r}")
        await _serve(config, opened, shutdown, task_status)


async def _serve(
    config: ServerConfig,
    opened: Store,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        bus: Bus = LocalBus()
        if config.redis_url is not None:
            bus = await stack.enter_async_context(RedisBus(config.redis_url))
            log.info("sharing timelines and presence through %s", config.redis_url)
        await _serve_on(config, opened, bus, shutdown, task_status)


async def _serve_on(
    config: ServerConfig,
    opened: Store,
    bus: Bus,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with opened as store, trio.open_nursery() as nursery:
        hub = Hub(store, nursery, tail_limit=config.tail_limit, abandon_after=config.abandon_after)
        membership = (
            None
            if config.redis_url is None
            else Membership(
                config.redis_url, config.member or f"{socket.gethostname()}/{os.getpid()}"
            )
        )
        if not isinstance(bus, LocalBus):
            hub.relay = Relay(hub, bus, nursery, membership)
            nursery.start_soon(hub.relay.run)
        nursery.start_soon(hub.run_abandon_watchdog)
        timeline = Timeline(store, bus)
        timeline.local_talkers = hub.talking
        hub.on_talkers = timeline.presence_changed
        nursery.start_soon(timeline.run)
        threads = Threads(store, timeline)
        messages = Messages(store, threads, timeline)
        hub.activity = messages.audio_activity
        nursery.start_soon(messages.run)
        vapid = Vapid.load_or_create(Path(config.data_dir) / VAPID_FILENAME)
        pusher = PushSender(vapid, subject=config.push_subject)
        push = PushDispatch(store, timeline, pusher)
        messages.notify = push
        nursery.start_soon(push.run)
        nursery.start_soon(trim_timelines, store, config.timeline_retention_days)
        services = Services(
            hub=hub,
            identity=Identity(store),
            threads=threads,
            timeline=timeline,
            messages=messages,
            contacts=Contacts(store),
            vapid_public_key=vapid.public_key,
            allow_local_push=config.allow_local_push,
            membership=membership,
        )
        rtc = RtcGateway(
            services,
            host=config.host,
            idle_timeout=config.rtc_idle_timeout,
            connect_timeout=config.rtc_connect_timeout,
            max_sessions=config.rtc_max_sessions,
            max_total=config.rtc_max_total,
        )
        if membership is not None:
            rtc.shared = SharedSessions(config.redis_url or "", bus, membership)
        await nursery.start(rtc.serve)
        app: Any = Router(services, rtc)
        hconfig = hypercorn_config(config)
        acceptor = Acceptor(
            app,
            hconfig,
            Http2Settings(max_streams=config.max_streams, keep_alive=hconfig.keep_alive_timeout),
            hconfig.create_ssl_context(),
        )
        binds = await nursery.start(
            partial(acceptor.serve, config.host, config.port, reuse_port=config.reuse_port)
        )
        if services.membership is not None:
            # In the ring of the processes sharing this Redis once it serves.
            await nursery.start(services.membership.run)
        log.info("voxer-stream serving on %s (data in %s)", ", ".join(binds), config.data_dir)
        task_status.started(binds)
        if shutdown is None:
            await trio.sleep_forever()
        assert shutdown is not None
        await shutdown.wait()
        log.info("shutting down: telling %d live messages' streams", len(hub))
        hub.shutting_down.set()
        # Streams answer at once; wait a little for their last frames to be written.
        await trio.sleep(min(SHUTDOWN_GRACE, 0.5) if len(hub) == 0 else SHUTDOWN_GRACE)
        nursery.cancel_scope.cancel()
