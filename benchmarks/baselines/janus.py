"""The WebRTC baseline: Janus 1.1.2 (C, Debian's ``janus``) relaying one Opus RTP stream.

``benchmarks/rtc_latency.py`` (``python -m benchmarks rtc-latency``) runs the same load
against voxer-stream's WebRTC binding and against this, alternately, and reports the
ratios. Janus is a production SFU written in C: the ratio says what voxer-stream's
WHIP/WHEP path (Python, aiortc, plus storage) costs against a mature relay of the
same packets to the same kind of subscriber, not against a straw man.

What runs here (``Janus``): ``janus -F <dir> -C <dir>/janus.jcfg`` with a configuration
folder generated in a temporary directory, so nothing in ``/etc/janus`` is read:

* only the HTTP transport (``libjanus_http.so``: plain HTTP on 127.0.0.1, a free port,
  admin API off) and only the Streaming plugin (``libjanus_streaming.so``); every other
  plugin, transport, event handler and logger found in Debian's library folder is
  listed in ``disable``, and ``/janus/info`` is checked to say so after start;
* ICE on loopback only: ``ice_enforce_list = "lo"``, ``interface = "127.0.0.1"``, no
  STUN or TURN server, no IPv6, ``ignore_mdns`` (no ``.local`` lookups). That is not
  enough on its own: Janus never gathers on an ``IFF_LOOPBACK`` interface, and with
  nothing gathered libnice takes every other address of the host. So Janus runs with
  ``LD_PRELOAD`` of a small ``getifaddrs`` wrapper (``SHIM_SOURCE``, built with ``cc``
  into the run's temporary directory) that shows 127.0.0.1 as an ordinary interface
  and every other address as down: its only candidate is then 127.0.0.1, and
  ``rtc_latency`` checks from ``/proc`` that every socket Janus holds is on 127.0.0.1;
* one RTP mountpoint (id 1): audio only, Opus, payload type 111, bound to 127.0.0.1 on
  a free UDP port. No skew compensation (``audioskew`` off, the default): Janus keeps
  the source's RTP timestamps, shifted by a constant per subscriber.

The load-generator side is here too, as the relay baseline's is in ``relay.py``:

* the talker (``janus_talker_main``) sends each 20 ms Opus packet as a plain RTP packet
  (``aiortc.rtp.RtpPacket``: PT 111, ``seq`` = i, timestamp = i * 960, one SSRC) over
  UDP to the mountpoint, on ``rtc_latency.send_on_schedule``'s open-loop schedule;
* a subscriber (``JanusSubscription``) uses the Janus HTTP API: ``create`` a session,
  ``attach`` ``janus.plugin.streaming``, ``watch`` the mountpoint; Janus answers with a
  JSEP *offer* (read from the session's long-poll ``GET``); the aiortc peer answers
  (recvonly, Opus only) and sends it with ``start``. A task keeps the session alive
  (long-poll, and a ``keepalive`` every ``KEEPALIVE_S``), recording Janus's events
  (``webrtcup``, ``hangup`` ...) for the run's diagnostics.

Every wait is bounded: Janus that never answers, never sends the offer or never gets
ICE up fails the run with a message, it does not hang it. Janus is stopped with
SIGTERM (then SIGKILL after ``STOP_TIMEOUT_S``) whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The streaming mountpoint every run uses, and its Opus payload type.
MOUNTPOINT_ID = 1
OPUS_PT = 111
#: The talker's SSRC (any constant: one source for the whole run).
TALKER_SSRC = 0x5643_5352
#: Janus drops a session after ``session_timeout`` (60 s) without a request.
KEEPALIVE_S = 25.0
#: Janus's long poll returns after at most 30 s; the HTTP timeout must be longer.
LONG_POLL_TIMEOUT_S = 40.0
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 15.0
KEEP = ("libjanus_streaming.so", "libjanus_http.so")
VERSION_RE = re.compile(r"Janus version:\s*\d+\s*\(([^)]+)\)")

#: ``getifaddrs`` as Janus should see it on a loopback-only benchmark: 127.0.0.1 as an
#: ordinary interface, every other address down. Janus skips ``IFF_LOOPBACK`` interfaces
#: when it picks the addresses ICE gathers on (``janus_ice_setup_local`` in
#: ``src/ice.c``: "Skip loopback interfaces"), whatever ``ice_enforce_list`` says; with no
#: address picked, libnice falls back to every non-loopback address of the host. So
#: without this shim Janus offers (and binds) the machine's real addresses and never
#: 127.0.0.1. It changes what Janus is told about interfaces, nothing else: the same
#: binary, plugin and media path run. glibc allocates the whole list as one block, so
#: entries are masked in place, never unlinked (``freeifaddrs`` frees the head).
SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

int getifaddrs(struct ifaddrs **ifap) {
    int (*real)(struct ifaddrs **) =
        (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL)
        return -1;
    int rc = real(ifap);
    if (rc != 0)
        return rc;
    for (struct ifaddrs *ifa = *ifap; ifa != NULL; ifa = ifa->ifa_next) {
        int v4_loopback = ifa->ifa_addr != NULL && ifa->ifa_addr->sa_family == AF_INET
            && ((struct sockaddr_in *)ifa->ifa_addr)->sin_addr.s_addr
                == htonl(INADDR_LOOPBACK);
        if (v4_loopback)
            ifa->ifa_flags &= ~IFF_LOOPBACK;
        else
            ifa->ifa_flags &= ~(IFF_UP | IFF_RUNNING);
    }
    return 0;
}
"""


# -- the server -------------------------------------------------------------------


def janus_binary() -> str:
    path = shutil.which("janus")
    if path is None:
        raise RuntimeError(
            "janus is not installed: run ./dev test, which installs it "
            "(or apt-get install -y janus)"
        )
    return path


def janus_version() -> str | None:
    """``janus --version``'s version (``1.1.2``); None without Janus.

    Janus prints its version banner, then rejects ``--version`` as an unknown option and
    exits non-zero: the banner is what counts."""
    path = shutil.which("janus")
    if path is None:
        return None
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VERSION_RE.search(proc.stdout + proc.stderr)
    return match.group(1) if match else None


def library_folder() -> Path:
    """Debian's Janus modules (``/usr/lib/<multiarch>/janus``): the folder with the
    Streaming plugin in ``plugins/``."""
    for candidate in sorted(Path("/usr/lib").glob("*/janus")):
        if (candidate / "plugins" / "libjanus_streaming.so").exists():
            return candidate
    for candidate in (Path("/usr/lib/janus"), Path("/usr/local/lib/janus")):
        if (candidate / "plugins" / "libjanus_streaming.so").exists():
            return candidate
    raise RuntimeError("no Janus library folder with plugins/libjanus_streaming.so")


def build_shim(workdir: Path) -> Path:
    """Compile ``SHIM_SOURCE`` into ``workdir/janus-loopback.so`` (once per workdir)."""
    out = workdir / "janus-loopback.so"
    if out.exists():
        return out
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) for the Janus loopback shim: run ./dev test")
    source = workdir / "janus-loopback.c"
    source.write_text(SHIM_SOURCE)
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(source), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the Janus loopback shim failed: {proc.stderr[-2000:]}")
    return out


def free_port(kind: socket.SocketKind) -> int:
    """A port free on 127.0.0.1 now (``SOCK_STREAM`` or ``SOCK_DGRAM``). Janus takes
    ports from its configuration, not 0, so the port is chosen here; the race with
    another process taking it in between is harmless on a benchmark machine."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _modules(folder: Path) -> list[str]:
    """The loadable modules of one of Janus's folders, as ``disable`` names them."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".so"))


def disabled_modules(lib: Path) -> dict[str, list[str]]:
    """Everything in Debian's Janus folders but the Streaming plugin and HTTP transport."""
    return {
        section: [m for m in _modules(lib / sub) if m not in KEEP]
        for section, sub in (
            ("plugins", "plugins"),
            ("transports", "transports"),
            ("events", "events"),
            ("loggers", "loggers"),
        )
    }


def write_config(
    conf: Path, *, http_port: int, rtp_port: int, lib: Path, debug_level: int = 4
) -> None:
    """``janus.jcfg``, ``janus.transport.http.jcfg`` and ``janus.plugin.streaming.jcfg``
    in ``conf`` (libconfig syntax)."""
    disabled = disabled_modules(lib)

    def listed(section: str) -> str:
        return ",".join(disabled[section])

    conf.mkdir(parents=True, exist_ok=True)
    (conf / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{conf}"
    plugins_folder = "{lib / "plugins"}"
    transports_folder = "{lib / "transports"}"
    events_folder = "{lib / "events"}"
    loggers_folder = "{lib / "loggers"}"
    debug_level = {debug_level}
    debug_colors = false
    interface = "127.0.0.1"
    server_name = "voxer-bench-janus"
    session_timeout = 60
    hide_dependencies = true
}}
certificates: {{
}}
media: {{
    ipv6 = false
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "lo"
    ignore_mdns = true
}}
plugins: {{
    disable = "{listed("plugins")}"
}}
transports: {{
    disable = "{listed("transports")}"
}}
loggers: {{
    disable = "{listed("loggers")}"
}}
events: {{
    broadcast = false
    disable = "{listed("events")}"
}}
"""
    )
    (conf / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
cors: {{
}}
"""
    )
    (conf / "janus.plugin.streaming.jcfg").write_text(
        f"""general: {{
    events = false
}}
voxer-bench: {{
    type = "rtp"
    id = {MOUNTPOINT_ID}
    description = "voxer-stream rtc-latency baseline: one Opus talker"
    audio = true
    video = false
    audioport = {rtp_port}
    audioiface = "127.0.0.1"
    audiopt = {OPUS_PT}
    audiocodec = "opus"
}}
"""
    )


class Janus:
    """Janus as a child process with a generated configuration; ``url`` is its HTTP API
    (``http://127.0.0.1:PORT/janus``), ``rtp_port`` the mountpoint's UDP port.

    Has ``cpu_seconds`` and ``stop`` like ``live_latency.Server``, so that
    ``live_latency.measure_window`` measures either."""

    def __init__(self, workdir: Path, name: str = "janus", debug_level: int = 4) -> None:
        self.binary = janus_binary()
        self.shim = build_shim(workdir)
        self.lib = library_folder()
        self.conf = workdir / f"{name}-conf"
        self.http_port = free_port(socket.SOCK_STREAM)
        self.rtp_port = free_port(socket.SOCK_DGRAM)
        write_config(
            self.conf,
            http_port=self.http_port,
            rtp_port=self.rtp_port,
            lib=self.lib,
            debug_level=debug_level,
        )
        self.url = f"http://127.0.0.1:{self.http_port}/janus"
        self.command = [self.binary, "-F", str(self.conf), "-C", str(self.conf / "janus.jcfg")]
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "LD_PRELOAD": str(self.shim)},
        )
        self.info: dict[str, Any] = {}
        try:
            self.info = self._wait_ready(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll ``GET /janus/info`` until Janus answers; check what it loaded."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"janus exited ({self.proc.returncode}) before answering: {self.log_tail(1500)}"
                )
            try:
                # No proxy from the environment: this is 127.0.0.1 and must stay so.
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(f"{self.url}/info", timeout=2) as response:
                    info: dict[str, Any] = json.load(response)
            except (OSError, urllib.error.URLError, json.JSONDecodeError) as exc:
                last = repr(exc)
                time.sleep(0.1)
                continue
            plugins = sorted(info.get("plugins", {}))
            transports = sorted(info.get("transports", {}))
            if plugins != ["janus.plugin.streaming"] or transports != ["janus.transport.http"]:
                raise RuntimeError(f"janus loaded plugins {plugins}, transports {transports}")
            if "[voxer-bench]" not in self.log_tail(200_000):
                # Janus logs the mountpoint's name when it creates it (and binds its port).
                raise RuntimeError(f"janus did not create mountpoint {MOUNTPOINT_ID}")
            return info
        raise RuntimeError(f"janus did not answer {self.url}/info within {timeout} s: {last}")

    def loaded(self) -> dict[str, Any]:
        """What Janus says it runs (from ``/janus/info``), for the result JSON."""
        return {
            "version": self.info.get("version_string"),
            "plugins": sorted(self.info.get("plugins", {})),
            "transports": sorted(self.info.get("transports", {})),
        }

    def cpu_seconds(self) -> float:
        from benchmarks.live_latency import cpu_seconds

        return cpu_seconds(self.proc.pid)

    def log_tail(self, size: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")

    def stderr_tail(self, size: int = 3000) -> str:
        return self.log_tail(size)

    def stop(self) -> None:
        """SIGTERM (Janus's clean shutdown), SIGKILL if it takes over ``STOP_TIMEOUT_S``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


# -- the talker: plain RTP over UDP -----------------------------------------------------


def janus_talker_main(rtp_port: int, packets: list[bytes], pipe: Any) -> None:
    """The Janus variant's talker process (see ``rtc_latency.voxer_talker_main`` for the
    other): the same packets on the same open-loop schedule, as plain RTP."""
    from benchmarks.rtc_latency import run_asyncio_in_process

    run_asyncio_in_process(pipe, "janus talker", _janus_talk, rtp_port, packets, pipe)


async def _janus_talk(rtp_port: int, packets: list[bytes], pipe: Any) -> Any:
    from aiortc.rtp import RtpPacket

    from benchmarks.live_latency import TalkerResult
    from benchmarks.rtc_latency import receive_go, send_on_schedule

    result = TalkerResult()
    unsent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", rtp_port))
        sock.setblocking(False)
        pipe.send(("opened",))
        t0 = await receive_go(pipe)

        def send(seq: int, ts: int, packet: bytes) -> None:
            nonlocal unsent
            rtp = RtpPacket(
                payload_type=OPUS_PT,
                marker=1 if seq == 0 else 0,
                sequence_number=seq & 0xFFFF,
                timestamp=ts & 0xFFFFFFFF,
                ssrc=TALKER_SSRC,
                payload=packet,
            )
            try:
                sock.send(rtp.serialize())
            except BlockingIOError:
                unsent += 1  # never seen on loopback at 50 packets/s; counted if it happens

        await send_on_schedule(packets, t0, send, result)
    # RTP has no close and no ack: "closed" means every packet left the socket.
    result.closed = unsent == 0
    result.acked = len(packets) - 1 - unsent
    return result


# -- a subscriber: the Janus HTTP API ---------------------------------------------------


@dataclass(eq=False)
class JanusSubscription:
    """One viewer of the mountpoint: a Janus session with a Streaming plugin handle."""

    url: str
    session: int = 0
    handle: int = 0
    events: list[str] = field(default_factory=list)
    keeper: asyncio.Task[None] | None = None
    #: Events for the negotiation (the JSEP offer, ``webrtcup``) wait here.
    _queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def _post(self, http: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": uuid.uuid4().hex}
        response = await http.post(f"{self.url}{path}", json=body, timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus {body.get('janus')}: {reply.get('error')}")
        return reply

    async def _message(
        self, http: Any, request: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> None:
        body: dict[str, Any] = {"janus": "message", "body": request}
        if jsep is not None:
            body["jsep"] = jsep
        reply = await self._post(http, f"/{self.session}/{self.handle}", body)
        if reply.get("janus") not in ("ack", "success"):
            raise RuntimeError(f"janus {request['request']}: {reply}")

    async def _next_event(self, http: Any) -> list[dict[str, Any]]:
        response = await http.get(
            f"{self.url}/{self.session}", params={"maxev": 10}, timeout=LONG_POLL_TIMEOUT_S
        )
        response.raise_for_status()
        data = response.json()
        return data if isinstance(data, list) else [data]

    async def _keep_alive(self, http: Any) -> None:
        """Long-poll the session for as long as it lives (its events go to ``_queue`` and
        ``events``), with a ``keepalive`` request every ``KEEPALIVE_S``."""
        last = time.monotonic()
        while True:
            try:
                for event in await self._next_event(http):
                    if event.get("janus") != "keepalive":
                        self.events.append(_describe(event))
                    self._queue.put_nowait(event)
            except Exception as exc:  # httpx's errors, bad JSON: note it, poll again
                self.events.append(f"poll failed: {exc!r}")
                await asyncio.sleep(1.0)
            if time.monotonic() - last >= KEEPALIVE_S:
                last = time.monotonic()
                with contextlib.suppress(Exception):
                    await self._post(http, f"/{self.session}", {"janus": "keepalive"})

    async def _wait_for(self, predicate: Any, within_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"janus: no {what} within {within_s} s; events {self.events}")
            try:
                event = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                continue
            if event.get("janus") == "hangup" or event.get("janus") == "detached":
                raise RuntimeError(f"janus hung up while waiting for {what}: {event}")
            if predicate(event):
                return event

    async def open(self, http: Any, answer_offer: Any) -> None:
        """Create, attach, watch; ``answer_offer(offer_sdp)`` gives the answer SDP, sent
        with ``start``. Returns once Janus has the answer (ICE may still be running)."""
        reply = await self._post(http, "", {"janus": "create"})
        self.session = int(reply["data"]["id"])
        self.keeper = asyncio.ensure_future(self._keep_alive(http))
        reply = await self._post(
            http, f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.streaming"}
        )
        self.handle = int(reply["data"]["id"])
        await self._message(http, {"request": "watch", "id": MOUNTPOINT_ID})
        event = await self._wait_for(
            lambda e: e.get("jsep", {}).get("type") == "offer", REQUEST_TIMEOUT_S, "JSEP offer"
        )
        error = event.get("plugindata", {}).get("data", {}).get("error")
        if error:
            raise RuntimeError(f"janus watch: {error}")
        answer = await answer_offer(event["jsep"]["sdp"])
        await self._message(http, {"request": "start"}, {"type": "answer", "sdp": answer})

    async def close(self, http: Any) -> None:
        """Detach and destroy the session (best effort, bounded), stop the keeper."""
        if self.keeper is not None:
            self.keeper.cancel()
            with contextlib.suppress(BaseException):
                await self.keeper
        if self.session:
            with contextlib.suppress(Exception):
                if self.handle:
                    await self._message(http, {"request": "stop"})
                    await self._post(http, f"/{self.session}/{self.handle}", {"janus": "detach"})
                await self._post(http, f"/{self.session}", {"janus": "destroy"})


def _describe(event: dict[str, Any]) -> str:
    kind = str(event.get("janus"))
    result = event.get("plugindata", {}).get("data", {}).get("result")
    if isinstance(result, dict) and "status" in result:
        return f"{kind}:{result['status']}"
    if kind == "hangup":
        return f"hangup:{event.get('reason')}"
    return kind
