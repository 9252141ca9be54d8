"""Headless Chromium (Debian's) driven by Playwright, for the web client's tests.

Never ``playwright install``: that downloads a browser build and fails on these
machines. ``./dev test`` installs Debian's ``chromium`` (``ensure_system_packages``),
and Playwright is pointed at it with ``executable_path``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")

#: The flags the machine's probe ran Chromium with (as root, with no network but the
#: package registries), and what WebRTC with a fake microphone on loopback needs.
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The microphone: granted without a prompt, and a WAV file in place of a device.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # ICE on loopback: the server's only candidate is 127.0.0.1, and it cannot resolve
    # the mDNS (.local) names Chromium would otherwise put in place of its addresses.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # No --autoplay-policy: the page must play after the person's click, as it would.
]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: `./dev test` installs it (Debian package chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium(fake_audio: Path) -> Iterator[Browser]:
    """A headless Chromium whose microphone plays ``fake_audio`` (a WAV file, looped).

    Playwright gives it a fresh, empty profile (``--user-data-dir`` in a new temporary
    folder) and kills it if closing it does not finish."""
    require_chromium()
    flags = [*BASE_FLAGS, f"--use-file-for-fake-audio-capture={fake_audio}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=flags, headless=True, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.1
) -> T:
    """Call ``probe`` until it returns something truthy (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(every)


#: ``window.voxer.stats()``, bounded: ``page.evaluate`` itself has no timeout.
STATS_JS = """() => Promise.race([
    window.voxer.stats(),
    new Promise((_, reject) => setTimeout(() => reject(new Error("stats() hung")), 5000)),
])"""


def page_stats(page: Page) -> dict[str, Any]:
    """``window.voxer.stats()``: the page's WebRTC statistics (inbound-rtp of its player
    and monitor, outbound-rtp of its talk)."""
    stats: dict[str, Any] = page.evaluate(STATS_JS)
    return stats


def received(page: Page, which: str, *, at_least: int = 1) -> dict[str, Any] | None:
    """The inbound-rtp stats of ``which`` (player, monitor) once packets and sound came."""
    stats = page_stats(page)[which]
    if (
        stats
        and (stats.get("packetsReceived") or 0) >= at_least
        and (stats.get("totalAudioEnergy") or 0) > 0
    ):
        return stats  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    method: str
    url: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)


class RequestLog:
    """Every request the page makes from now on (``page.on("request")``), in order."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        page.on(
            "request", lambda r: self.requests.append(Request(time.monotonic(), r.method, r.url))
        )

    def mark(self) -> int:
        """A point in the log, for ``since``."""
        return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        return self.requests[mark:]

    def to(self, pattern: str, method: str = "GET") -> list[Request]:
        """The requests whose path matches the regular expression ``pattern``."""
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]


def sync_live(page: Page, *, timeout: float = 10) -> None:
    """Wait until the page holds its event stream (``GET /v1/sync/stream``) open."""
    # Not page.wait_for_function with an expression: the page's CSP forbids eval.
    wait_until(
        lambda: page.evaluate("window.voxer.state().sync") == "live",
        timeout=timeout,
        what="the event stream",
    )
