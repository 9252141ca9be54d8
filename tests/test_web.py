"""The web client (``voxer_stream/web``, served at ``/``) in a real browser.

Debian's headless Chromium, driven by Playwright (sync API, plain test functions),
against the real server process (``voxer-stream serve --port=0``). Chromium's fake
microphone plays a 440 Hz tone from a WAV file; the "other session" is the Python
client over HTTP/2. Screenshots of the main screens go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import array
import io
import itertools
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect

from tests.browser import RequestLog, chromium, page_stats, received, sync_live, wait_until
from tests.conftest import ServerProcess, server_process
from voxer_stream.client import chunks_from_packets, collect, realtime, talk
from voxer_stream.media.encode import decode_packets, encode_file, tone_wav
from voxer_stream.wire import Listen, Open

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
TONE_HZ = 440.0
PASSWORD = "correct horse"
TICKS = 48000

pytestmark = pytest.mark.timeout(60)


@dataclass
class User:
    username: str
    token: str
    id: str


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's sound (Chromium loops the file) and the other talkers'."""
    path = tmp_path_factory.mktemp("web") / "tone.wav"
    tone_wav(path, 2.0, TONE_HZ)
    return path


@pytest.fixture(scope="module")
def browser(tone: Path) -> Iterator[Browser]:
    with chromium(tone) as running:
        yield running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with server_process(tmp_path / "data", log=tmp_path / "server.log") as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own sessionStorage), 800x720; an uncaught error or a
    console error of the page fails the test."""
    context = browser.new_context(viewport={"width": 800, "height": 720})
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    def console(message: ConsoleMessage) -> None:
        # Chromium logs every HTTP error answer ("Failed to load resource: ... 401"): those
        # the page expects (a wrong password) are checked by what it shows instead.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console: {message.text}")

    page.on("console", console)
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors


# -- the other side: REST and HTTP/2 -------------------------------------------------------


def register(url: str, username: str) -> User:
    with httpx.Client(base_url=url, timeout=10) as http:
        response = http.post("/v1/accounts", json={"username": username, "password": PASSWORD})
        assert response.status_code == 201, response.text
        response = http.post("/v1/sessions", json={"username": username, "password": PASSWORD})
        assert response.status_code == 201, response.text
        data = response.json()
        return User(username, data["token"], data["account_id"])


def rest(url: str, user: User, method: str, path: str, json: Any = None) -> Any:
    with httpx.Client(base_url=url, timeout=10) as http:
        headers = {"Authorization": f"Bearer {user.token}"}
        response = http.request(method, path, headers=headers, json=json)
        assert response.is_success, response.text
        return response.json()


def make_thread(url: str, owner: User, *others: User, title: str) -> str:
    body = {"title": title, "participants": [u.username for u in others]}
    return str(rest(url, owner, "POST", "/v1/threads", body)["id"])


def messages(url: str, user: User, thread: str) -> list[dict[str, Any]]:
    return list(rest(url, user, "GET", f"/v1/threads/{thread}/messages")["messages"])


def post(url: str, user: User, thread: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(rest(url, user, "POST", f"/v1/threads/{thread}/messages", body))


def post_text(url: str, user: User, thread: str, text: str) -> dict[str, Any]:
    return post(url, user, thread, {"kind": "text", "text": text})


def thread_as(url: str, user: User, thread: str) -> dict[str, Any]:
    """The thread as ``user`` sees it: its ``unread`` and ``unheard`` counts."""
    return dict(rest(url, user, "GET", f"/v1/threads/{thread}"))


def png(width: int, height: int) -> bytes:
    """A gradient, as PNG bytes."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def upload(url: str, user: User, data: bytes) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10) as http:
        headers = {"Authorization": f"Bearer {user.token}", "Content-Type": "image/png"}
        response = http.post("/v1/media", headers=headers, content=data)
        assert response.status_code == 201, response.text
        return dict(response.json())


class Talker:
    """A message talked over HTTP/2 by the Python client, in its own thread (trio)."""

    def __init__(self, url: str, user: User, thread: str, msg: str, packets: list[bytes]) -> None:
        self.error: BaseException | None = None
        open_frame = Open(msg=msg, thread=thread, codec="opus", created=int(time.time() * 1000))
        chunks = chunks_from_packets(packets)

        async def run() -> None:
            with trio.fail_after(30):
                await talk(url, user.token, open_frame, realtime(chunks))

        def main() -> None:
            try:
                trio.run(run)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=main, name=f"talk-{msg}", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=35)
        assert not self.thread.is_alive(), "the talker did not finish"
        if self.error is not None:
            raise self.error


# -- the page ------------------------------------------------------------------------------


def log_in(page: Page, url: str, user: User, shot: Path | None = None) -> None:
    page.goto(url + "/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    if shot is not None:
        page.screenshot(path=shot)
    page.get_by_label("Username", exact=True).fill(user.username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Your threads")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text(f"Signed in as {user.username}")


def thread_link(page: Page, title: str) -> Locator:
    """The thread list's link to the thread ``title`` (its accessible name starts so)."""
    return page.get_by_role("link", name=re.compile(rf"^{re.escape(title)},"))


def open_thread(page: Page, title: str) -> None:
    thread_link(page, title).click()
    expect(page.get_by_role("heading", name=title)).to_be_visible()


def message_item(page: Page, msg: str) -> Locator:
    return page.locator(f'#message-list > li[data-id="{msg}"]')


def talk_button_state(page: Page) -> str:
    return str(page.locator("#ptt").get_attribute("data-state"))


def hold_to_talk(page: Page, seconds: float, *, shot: Path | None = None) -> None:
    """Hold the push-to-talk button with the mouse for ``seconds`` once it says "talking"."""
    button = page.get_by_role("button", name="Hold to talk")
    button.hover()
    page.mouse.down()
    expect(page.locator("#ptt")).to_have_attribute("data-state", "talking")
    started = time.monotonic()
    if shot is not None:
        time.sleep(seconds / 2)
        page.screenshot(path=shot)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    page.mouse.up()
    expect(page.locator("#ptt")).to_have_attribute("data-state", "idle")


def hold_space(page: Page, seconds: float) -> None:
    page.keyboard.down("Space")
    expect(page.locator("#ptt")).to_have_attribute("data-state", "talking")
    time.sleep(seconds)
    page.keyboard.up("Space")
    expect(page.locator("#ptt")).to_have_attribute("data-state", "idle")


def tone_frequency(pcm: bytes) -> tuple[float, float]:
    """The RMS (of full scale 32768) and the zero-crossing frequency of s16 mono PCM."""
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    rms = (sum(s * s for s in samples) / len(samples)) ** 0.5
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return rms, crossings / 2 / (len(samples) / TICKS)


def heard_over_http2(url: str, user: User, msg: str) -> list[bytes]:
    async def run() -> list[bytes]:
        with trio.fail_after(15):
            result = await collect(url, user.token, Listen(msg=msg, from_seq=0))
        assert result.info is not None and result.info.state == "closed"
        assert result.end is not None
        return result.packets

    return trio.run(run)


# -- the cases -----------------------------------------------------------------------------


def test_push_to_talk_is_heard_by_another_session(
    server: ServerProcess, page: Page, artifacts: Path, tone: Path
) -> None:
    """Log in, open a thread, hold push-to-talk for 3 s: bob, over HTTP/2, then hears a
    stored, closed message of about 3 s whose packets decode to the microphone's tone.
    Holding the space bar talks too."""
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    thread = make_thread(server.url, alice, bob, title="walkie")

    log_in(page, server.url, alice, shot=artifacts / "login.png")
    expect(page.get_by_role("link", name="walkie")).to_contain_text("No messages yet")
    open_thread(page, "walkie")

    hold_to_talk(page, 3.0, shot=artifacts / "talking.png")
    expect(page.locator("#status")).to_contain_text("Sent:")
    (message,) = messages(server.url, alice, thread)
    assert message["state"] == "closed" and message["sender"] == alice.id
    msg = str(message["id"])
    assert len(msg) == 22 and msg.replace("-", "").replace("_", "").isalnum()
    duration = message["duration"] / TICKS
    assert 2.6 <= duration <= 3.6, duration

    packets = heard_over_http2(server.url, bob, msg)
    assert len(packets) == message["chunks"]
    assert abs(len(packets) * 0.02 - duration) < 0.1  # 20 ms Opus packets, one per chunk
    pcm = decode_packets(packets)[2 * TICKS // 2 :]  # s16: from 0.5 s on
    rms, frequency = tone_frequency(pcm)
    assert rms > 300, rms  # not silence (the browser's noise suppression lowers a tone)
    assert abs(frequency - TONE_HZ) < 25, frequency

    # The keyboard: the space bar held, with the focus on the page, or on the button
    # itself (no click when it is released); Enter on the button starts and stops.
    ptt = page.locator("#ptt")
    page.get_by_role("heading", name="walkie").focus()
    hold_space(page, 1.0)
    ptt.focus()
    page.keyboard.press("Enter")
    expect(ptt).to_have_attribute("data-state", "talking")
    time.sleep(0.6)
    page.keyboard.press("Enter")
    expect(ptt).to_have_attribute("data-state", "idle")
    hold_space(page, 0.6)
    time.sleep(0.3)
    expect(ptt).to_have_attribute("data-state", "idle")  # released means released
    # A button that holds the focus because it was clicked (Monitor) does not take the
    # space bar; the monitor stays on, and quiet while its person talks.
    monitor = page.get_by_role("button", name="Monitor")
    monitor.click()
    expect(monitor).to_have_attribute("aria-pressed", "true")
    page.keyboard.down("Space")
    expect(ptt).to_have_attribute("data-state", "talking")
    assert page.evaluate("document.getElementById('monitor-audio').muted")
    time.sleep(0.6)
    page.keyboard.up("Space")
    expect(ptt).to_have_attribute("data-state", "idle")
    expect(monitor).to_have_attribute("aria-pressed", "true")
    assert not page.evaluate("document.getElementById('monitor-audio').muted")
    monitor.click()
    expect(monitor).to_have_attribute("aria-pressed", "false")

    first, *others = messages(server.url, alice, thread)
    assert first["id"] == msg
    assert [m["state"] for m in others] == ["closed"] * 4
    lengths = [m["duration"] / TICKS for m in others]
    assert 0.6 <= lengths[0] <= 1.6 and all(0.2 <= s <= 1.2 for s in lengths[1:]), lengths

    items = page.locator("#message-list > li")
    expect(items).to_have_count(5)
    expect(items.nth(0)).to_contain_text("you")
    expect(items.nth(0)).to_contain_text(f"{duration:.1f} s")
    expect(items.nth(0)).to_contain_text("closed")

    # bob answers (over HTTP/2): the open thread shows it within about a second, and
    # says so to screen readers.
    reply = Open(msg="bob-reply", thread=thread, codec="opus", created=int(time.time() * 1000))

    async def answer() -> None:
        with trio.fail_after(15):
            await talk(server.url, bob.token, reply, chunks_from_packets(encode_file(tone)))

    trio.run(answer)
    expect(items).to_have_count(6)
    expect(items.nth(5)).to_contain_text("bob")
    expect(page.locator("#announcer")).to_have_text("New message from bob")
    page.screenshot(path=artifacts / "thread.png")


def test_a_message_talked_elsewhere_plays_in_the_page(
    server: ServerProcess, page: Page, artifacts: Path, tone: Path
) -> None:
    """A message bob talked over HTTP/2 plays in alice's page over WHEP (inbound RTP with
    sound), until the server ends the session; a live one catches up from its start."""
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    thread = make_thread(server.url, bob, alice, title="from bob")
    packets = encode_file(tone)  # 2 s: 100 packets of 20 ms
    open_frame = Open(msg="bob-hello", thread=thread, codec="opus", created=int(time.time() * 1000))

    async def talk_at_once() -> None:
        with trio.fail_after(15):
            await talk(server.url, bob.token, open_frame, chunks_from_packets(packets))

    trio.run(talk_at_once)

    log_in(page, server.url, alice)
    link = page.get_by_role("link", name="from bob")
    expect(link).to_contain_text("bob: voice message, 2.0 s")
    expect(link.locator(".count.unheard")).to_have_text("1 unheard")
    open_thread(page, "from bob")
    item = page.locator("#message-list > li").first
    expect(item).to_contain_text("bob")
    expect(item).to_contain_text("2.0 s")
    expect(item).to_contain_text("closed")

    item.get_by_role("button", name="Play the message from bob", exact=False).click()
    expect(page.locator("#status")).to_contain_text("Playing bob's message")
    stats = wait_until(lambda: received(page, "player"), timeout=10, what="audio in the page")
    assert stats["packetsLost"] == 0
    # The server ends the session after the last packet (VXS-12-8): the page notices.
    expect(page.locator("#status")).to_have_text("Finished playing.", timeout=10_000)
    assert page.evaluate("window.voxer.state().player") is None
    final = page_stats(page)["player"]
    assert final["packetsReceived"] == len(packets), final
    expect(item.locator("button.play")).to_have_text("Play")
    # Played to its end: heard (the page's receipt), so nothing is unheard any more.
    wait_until(
        lambda: rest(server.url, alice, "GET", f"/v1/threads/{thread}")["unheard"] == 0,
        timeout=5,
        what="the heard receipt",
    )

    # A live message: "Catch up" plays it from its start at 1.5x, to the live edge.
    talker = Talker(server.url, bob, thread, "bob-live", packets * 2)  # 4 s, real time
    try:
        live_item = page.locator("#message-list > li").nth(1)
        expect(live_item).to_contain_text("live")
        live_item.get_by_role("button", name="Catch up", exact=False).click()
        expect(page.locator("#status")).to_contain_text("Playing bob's message")
        wait_until(lambda: received(page, "player"), timeout=10, what="the live message")
        expect(page.locator("#status")).to_have_text("Finished playing.", timeout=15_000)
    finally:
        talker.join()
    final = page_stats(page)["player"]
    assert final["packetsReceived"] == 2 * len(packets), final  # all of it, from the start

    # A phone-sized screen: nothing sticks out sideways.
    page.set_viewport_size({"width": 320, "height": 640})
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    page.screenshot(path=artifacts / "thread-320px.png")


def test_monitor_plays_what_starts_in_the_thread(
    server: ServerProcess, page: Page, artifacts: Path, tone: Path
) -> None:
    """With monitor on, a message that starts in the thread plays with no further click."""
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    thread = make_thread(server.url, bob, alice, title="bob's thread")
    packets = encode_file(tone)

    log_in(page, server.url, alice)
    open_thread(page, "bob's thread")
    monitor = page.get_by_role("button", name="Monitor")
    expect(monitor).to_have_attribute("aria-pressed", "false")
    monitor.click()
    expect(monitor).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#status")).to_contain_text("Monitoring")
    assert received(page, "monitor") is None  # nothing plays before someone talks

    talker = Talker(server.url, bob, thread, "bob-monitored", packets)
    try:
        stats = wait_until(
            lambda: received(page, "monitor", at_least=25), timeout=10, what="monitored audio"
        )
        expect(page.locator("#announcer")).to_have_text("bob is talking")
        page.screenshot(path=artifacts / "monitor.png")
    finally:
        talker.join()
    stats = wait_until(
        lambda: received(page, "monitor", at_least=len(packets)), timeout=5, what="all of it"
    )
    assert stats["packetsReceived"] == len(packets)
    # Monitoring goes on after a message: off only when the person says so.
    expect(monitor).to_have_attribute("aria-pressed", "true")
    monitor.click()
    expect(monitor).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#status")).to_have_text("Monitoring off.")

    # The thread list says who is speaking right now, and how many messages there are.
    page.get_by_role("link", name="All threads").click()
    talker = Talker(server.url, bob, thread, "bob-again", packets * 2)  # 4 s, real time
    try:
        link = page.get_by_role("link", name="bob's thread")
        expect(link).to_contain_text("bob is speaking")
        # The first message was heard through the monitor; this one is not yet.
        expect(link.locator(".count.unheard")).to_have_text("1 unheard")
        page.screenshot(path=artifacts / "threads.png")
    finally:
        talker.join()
    expect(link).not_to_contain_text("speaking", timeout=5_000)


def test_register_start_a_thread_and_log_out(server: ServerProcess, page: Page) -> None:
    """The account screens: a wrong password is the registry's error; register, start a
    thread with someone, log out (the token leaves sessionStorage and stops working)."""
    register(server.url, "bob")
    page.goto(server.url + "/")
    page.get_by_label("Username", exact=True).fill("carol")
    page.get_by_label("Password", exact=True).fill("not her password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text(
        "INVALID_CREDENTIALS (202): wrong username or password", ignore_case=True
    )

    page.get_by_role("button", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Your threads")).to_be_visible()
    expect(page.get_by_text("No threads yet")).to_be_visible()
    token = page.evaluate("sessionStorage.getItem('voxer.token')")
    assert token

    page.get_by_text("New thread").click()
    page.get_by_label("Title").fill("carol and bob")
    page.get_by_label("People").fill("bob")
    page.get_by_role("button", name="Create thread").click()
    expect(page.get_by_role("heading", name="carol and bob")).to_be_visible()
    expect(page.locator("#thread-people-text")).to_have_text("bob, carol")
    expect(page.locator("#messages-empty")).to_be_visible()
    expect(page.locator("#messages-empty")).to_contain_text("No messages yet")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('voxer.token')") is None
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.get("/v1/accounts/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_the_timeline_keeps_the_page_up_to_date_without_polling(
    server: ServerProcess, page: Page, artifacts: Path
) -> None:
    """What bob does over REST shows in alice's page as it happens, from the account's
    event stream: no reload, and no request at all while nothing happens. The page sends
    read receipts for what it shows, so its unread counts (the server's) drop to 0;
    Enter in the composer posts a text; a dropped stream resumes from its last event."""
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    chat = make_thread(server.url, bob, alice, title="chat")
    other = make_thread(server.url, bob, alice, title="other")
    log = RequestLog(page)
    log_in(page, server.url, alice)
    sync_live(page)
    open_thread(page, "chat")
    items = page.locator("#message-list > li")
    expect(page.locator("#messages-empty")).to_be_visible()

    # bob writes: it shows within 2 s, is announced, and is read (the page's receipt).
    hello = post_text(server.url, bob, chat, "hello alice")
    expect(message_item(page, hello["id"])).to_contain_text("hello alice", timeout=2_000)
    expect(message_item(page, hello["id"])).to_contain_text("bob")
    expect(page.locator("#announcer")).to_have_text("New message from bob: hello alice")
    wait_until(
        lambda: thread_as(server.url, alice, chat)["unread"] == 0, timeout=5, what="the receipt"
    )
    kinds = {
        r["kind"]
        for r in rest(server.url, bob, "GET", f"/v1/messages/{hello['id']}/receipts")["receipts"]
    }
    assert kinds == {"read"}

    # Idle: the page asks nothing (no polling); the messages were read once.
    time.sleep(0.5)  # the counts' re-read after the receipt
    mark = log.mark()
    time.sleep(3)
    assert log.since(mark) == [], log.since(mark)
    assert len(log.to(rf"/v1/threads/{chat}/messages")) == 2  # the list's last one, the thread
    assert len(log.to("/v1/sync/stream")) == 1

    # Enter sends (Shift+Enter is a new line); bob sees both over REST.
    box = page.get_by_role("textbox", name="Write a message")
    box.fill("hi bob")
    box.press("Enter")
    expect(box).to_have_value("")
    box.press_sequentially("two")
    box.press("Shift+Enter")
    box.press_sequentially("lines")
    box.press("Enter")
    expect(items).to_have_count(3)
    texts = wait_until(
        lambda: [m["text"] for m in messages(server.url, bob, chat)][1:] or None,
        timeout=5,
        what="alice's texts",
    )
    assert texts == ["hi bob", "two\nlines"], texts
    mine = messages(server.url, bob, chat)[1:]
    assert all(m["sender"] == alice.id and len(m["id"]) == 22 for m in mine), (
        mine
    )  # ids: the page's
    expect(items.nth(2)).to_contain_text("you")
    assert thread_as(server.url, bob, chat)["unread"] == 2

    # A dropped stream reconnects (after the backoff) from the last event it applied:
    # what came meanwhile shows, once.
    since = page.evaluate("window.voxer.state().since")
    page.evaluate("window.voxer.disconnect()")
    away = post_text(server.url, bob, chat, "while you were away")
    expect(message_item(page, away["id"])).to_be_visible(timeout=5_000)
    expect(items).to_have_count(4)
    streams = log.to("/v1/sync/stream")
    assert len(streams) == 2
    assert int(streams[1].query["since"][0]) >= int(since) > 0

    # The thread list: two texts in "other" make it first, with 2 unread.
    page.get_by_role("link", name="All threads").click()
    expect(page.get_by_role("heading", name="Your threads")).to_be_visible()
    post_text(server.url, bob, other, "first")
    post_text(server.url, bob, other, "second")
    link = thread_link(page, "other")
    expect(link.locator(".count.unread")).to_have_text("2 unread")
    expect(link).to_have_attribute(
        "aria-label", re.compile(r"^other, with bob, 2 unread, last: bob: second")
    )
    expect(page.locator("#thread-list > li").first).to_contain_text("other")
    expect(thread_link(page, "chat").locator(".count.unread")).to_be_hidden()
    expect(thread_link(page, "chat")).to_contain_text("bob: while you were away")
    page.screenshot(path=artifacts / "threads-unread.png")

    # Opening it reads both: 0 unread, on the server and in the list.
    open_thread(page, "other")
    expect(items).to_have_count(2)
    wait_until(
        lambda: thread_as(server.url, alice, other)["unread"] == 0, timeout=5, what="the receipts"
    )
    page.get_by_role("link", name="All threads").click()
    expect(link.locator(".count.unread")).to_be_hidden()
    expect(link).not_to_have_attribute("aria-label", re.compile("unread"))

    # A thread bob starts shows up; one he removes alice from goes, even while open.
    make_thread(server.url, bob, alice, title="new one")
    expect(page.locator("#thread-list > li").first).to_contain_text("new one")
    open_thread(page, "chat")
    rest_delete = f"/v1/threads/{chat}/participants/{alice.id}"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.delete(rest_delete, headers={"Authorization": f"Bearer {bob.token}"})
        assert response.status_code == 204, response.text
    expect(page.get_by_role("heading", name="Your threads")).to_be_visible()
    expect(page.locator("#status")).to_have_text("You are no longer in “chat”.")
    expect(thread_link(page, "chat")).to_have_count(0)


def test_messages_of_every_kind(
    server: ServerProcess, page: Page, artifacts: Path, tone: Path
) -> None:
    """Audio, text, image (a thumbnail fetched with the token; a click shows it whole),
    location, directed and recalled messages; reactions from the page and from bob."""
    alice = register(server.url, "alice")
    bob = register(server.url, "bob")
    thread = make_thread(server.url, bob, alice, title="album")
    hello = Open(msg="bob-audio", thread=thread, codec="opus", created=int(time.time() * 1000))

    async def say() -> None:
        with trio.fail_after(15):
            await talk(server.url, bob.token, hello, chunks_from_packets(encode_file(tone)))

    trio.run(say)
    text = post_text(server.url, bob, thread, "look at this")
    media = upload(server.url, bob, png(640, 400))
    image = post(
        server.url, bob, thread, {"kind": "image", "media": media["id"], "caption": "a gradient"}
    )
    where = {"lat": 48.8584, "lon": 2.2945, "label": "Eiffel Tower"}
    place = post(server.url, bob, thread, {"kind": "location", "location": where})
    directed = post(server.url, bob, thread, {"kind": "text", "text": "just you", "to": "alice"})
    oops = post_text(server.url, bob, thread, "oops")
    rest(server.url, bob, "DELETE", f"/v1/messages/{oops['id']}")

    log_in(page, server.url, alice)
    link = thread_link(page, "album")
    expect(link.locator(".count.unread")).to_have_text("4 unread")
    expect(link.locator(".count.unheard")).to_have_text("1 unheard")
    expect(link).to_contain_text("bob: message recalled")
    open_thread(page, "album")
    items = page.locator("#message-list > li")
    expect(items).to_have_count(6)

    audio = message_item(page, "bob-audio")
    expect(audio).to_contain_text("2.0 s")
    expect(
        audio.get_by_role("button", name="Play the message from bob", exact=False)
    ).to_be_visible()
    expect(message_item(page, text["id"])).to_contain_text("look at this")
    thumbnail = message_item(page, image["id"]).get_by_role("img", name="Image from bob")
    wait_until(
        lambda: thumbnail.evaluate("img => img.complete && img.naturalWidth"),
        timeout=5,
        what="the thumbnail",
    )
    assert thumbnail.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [320, 200]
    assert thumbnail.evaluate("img => img.src.split(':')[0]") in ("data", "blob")
    expect(message_item(page, image["id"])).to_contain_text("a gradient")
    location = message_item(page, place["id"])
    expect(location).to_contain_text("Eiffel Tower")
    expect(location).to_contain_text("48.85840, 2.29450")
    osm = location.get_by_role("link", name="Open Eiffel Tower in OpenStreetMap", exact=False)
    expect(osm).to_have_attribute(
        "href", re.compile(r"^https://www\.openstreetmap\.org/\?mlat=48\.8584&mlon=2\.2945")
    )  # not followed: the tests have no network
    expect(message_item(page, directed["id"])).to_contain_text("to you")
    expect(message_item(page, oops["id"])).to_contain_text("message recalled")
    # What the page showed is read; the audio message is still to be heard.
    wait_until(
        lambda: thread_as(server.url, alice, thread)["unread"] == 0, timeout=5, what="receipts"
    )
    assert thread_as(server.url, alice, thread)["unheard"] == 1

    # Reactions: alice's click, then bob's (an event), then alice takes hers back.
    thumbs = message_item(page, text["id"]).get_by_role("button", name="thumbs up")
    thumbs.click()
    expect(thumbs).to_have_attribute("aria-pressed", "true")
    expect(thumbs).to_have_text("👍1")
    assert rest(server.url, bob, "GET", f"/v1/messages/{text['id']}")["reactions"] == {"👍": 1}
    rest(server.url, bob, "PUT", f"/v1/messages/{text['id']}/reactions/❤️")
    heart = message_item(page, text["id"]).get_by_role("button", name="heart")
    expect(heart).to_have_text("❤️1")
    expect(heart).to_have_attribute("aria-pressed", "false")
    page.set_viewport_size({"width": 800, "height": 1500})  # all of it, talk bar below
    page.screenshot(path=artifacts / "thread-kinds.png")
    page.set_viewport_size({"width": 800, "height": 720})
    thumbs.click()
    expect(thumbs).to_have_attribute("aria-pressed", "false")
    expect(thumbs).to_have_text("👍")
    assert rest(server.url, bob, "GET", f"/v1/messages/{text['id']}")["reactions"] == {"❤️": 1}

    # The whole image, in a dialog; Escape closes it and the focus goes back.
    opener = message_item(page, image["id"]).get_by_role(
        "button", name="Open the image", exact=False
    )
    opener.click()
    dialog = page.get_by_role("dialog", name="Image from bob")
    expect(dialog).to_be_visible()
    full = dialog.get_by_role("img")
    wait_until(
        lambda: full.evaluate("img => img.complete && img.naturalWidth"), timeout=5, what="it"
    )
    assert full.evaluate("img => img.naturalWidth") == 640
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(opener).to_be_focused()

    # Mute (for alice only): the thread says so.
    mute = page.get_by_role("button", name="Mute")
    mute.click()
    expect(mute).to_have_attribute("aria-pressed", "true")
    assert thread_as(server.url, alice, thread)["muted"] is True

    # bob recalls a message while alice looks at it.
    rest(server.url, bob, "DELETE", f"/v1/messages/{text['id']}")
    expect(message_item(page, text["id"])).to_contain_text("message recalled")
    expect(message_item(page, text["id"])).not_to_contain_text("look at this")

    # An image from the page: bob gets it.
    page.set_input_files(
        "#composer-image",
        files=[{"name": "dot.png", "mimeType": "image/png", "buffer": png(64, 48)}],
    )
    sent = wait_until(
        lambda: [m for m in messages(server.url, bob, thread) if m["sender"] == alice.id],
        timeout=5,
        what="alice's image",
    )
    assert sent[0]["kind"] == "image" and sent[0]["image"]["width"] == 64
    mine = message_item(page, sent[0]["id"]).get_by_role("img")
    wait_until(
        lambda: mine.evaluate("img => img.complete && img.naturalWidth"), timeout=5, what="it"
    )
