"""Run the server: storage, hub, and the ASGI app behind one port.

HTTP/2 is served by ``h2server`` (the live path), HTTP/1.1 and WebSocket by
hypercorn's trio worker; ``accept`` decides per connection.

``run_server`` is a trio task that reports its bound URLs through
``task_status`` (so tests do ``urls = await nursery.start(run_server, config)``
with port 0) and stops cleanly when cancelled.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from hypercorn.config import Config as HypercornConfig

from ..pipeline import Hub
from ..service.identity import Identity
from ..service.threads import Threads
from ..store import Store, open_store
from ..store.memory import MemoryStore
from ..wire import MAX_FRAME_SIZE
from . import hypercorn_fix
from .accept import Acceptor
from .app import Router
from .h2server import Http2Settings
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
    #: "sqlite" (durable, the default) or "memory" (nothing survives the process:
    #: for measuring what storage costs, never for data anyone wants to keep).
    storage: str = "sqlite"
    max_streams: int = 2000
    #: A WHIP session quiet for this long closes its message (VXS-12-4).
    rtc_idle_timeout: float = 5.0
    #: A WebRTC peer not connected this long after the answer is given up (VXS-12-10).
    rtc_connect_timeout: float = 30.0
    #: WebRTC sessions one account may have open at once (VXS-12-12).
    rtc_max_sessions: int = 20


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
    if config.storage == "memory":
        log.warning("storage in memory: acknowledged chunks do NOT survive this process")
        opened: Store = MemoryStore()
    elif config.storage == "sqlite":
        opened = open_store(config.data_dir, synchronous=config.synchronous)
    else:
        raise ValueError(f"unknown storage {config.storage!r}")
    async with opened as store, trio.open_nursery() as nursery:
        hub = Hub(store, nursery, tail_limit=config.tail_limit, abandon_after=config.abandon_after)
        nursery.start_soon(hub.run_abandon_watchdog)
        services = Services(hub=hub, identity=Identity(store), threads=Threads(store))
        rtc = RtcGateway(
            services,
            host=config.host,
            idle_timeout=config.rtc_idle_timeout,
            connect_timeout=config.rtc_connect_timeout,
            max_sessions=config.rtc_max_sessions,
        )
        await nursery.start(rtc.serve)
        app: Any = Router(services, rtc)
        hconfig = hypercorn_config(config)
        acceptor = Acceptor(
            app,
            hconfig,
            Http2Settings(max_streams=config.max_streams, keep_alive=hconfig.keep_alive_timeout),
            hconfig.create_ssl_context(),
        )
        binds = await nursery.start(partial(acceptor.serve, config.host, config.port))
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
