"""Client-side conformance of listeners (spec sections 6 and 10.2), by the peer.

The peer serves ``GET /v1/messages/{id}/listen`` for any message id: a message of
``CHUNKS`` chunks of valid Opus packets. It checks the request (VXS-10-6, VXS-6.1-2,
VXS-6.4-2) and, in the fault scenarios, breaks the listen state machine once: a
doubled, skipped or reordered chunk, a second ``message`` or ``live``, a frame after
``end``, an ``end`` with the wrong count. A listener that treats the fault as a
server protocol violation (VXS-6.2-6) resets the stream or closes the connection; the
peer sees that because it holds back the rest of the stream for ``Timing.listen_reaction`` seconds
after the fault. A listener that reads on gets the rest, and the verdict fails.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import trio

from voxer_stream.media.opus import packets_duration
from voxer_stream.wire import Chunk, End, Frame, Live, MessageInfo, encode_frame
from voxer_stream.wire.frames import ID_PATTERN

from .case import Case, fail, note, recommend, skip
from .context import opus_packet
from .peer_core import PeerStream, Timing, scenario

__all__ = ["CHUNKS", "LISTEN_PATH", "Listening", "message_chunks"]

#: Chunks of the message every listen scenario serves.
CHUNKS: Final = 6
#: Chunks already stored when a live listen starts; the rest arrive "live".
HELD: Final = 3
#: The default wait for a listener's reaction, quoted in what the scenarios accept.
REACTION: Final = Timing().listen_reaction
LISTEN_PATH: Final = re.compile(r"^/v1/messages/([^/]+)/listen$")
LISTENER_IDS: Final = ("VXS-10-6", "VXS-6.1-2", "VXS-6.4-2")
_CREATED: Final = 1718000000000


@dataclass
class Listening:
    """One listen request: the case it plays and the stream it arrived on."""

    case: Case
    stream: PeerStream
    timing: Timing


def message_chunks() -> list[Chunk]:
    return [Chunk(seq=i, ts=i * 960, packets=(opus_packet(i, b"peer"),)) for i in range(CHUNKS)]


def _decimal(value: str, name: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        fail("VXS-10-6", f"query parameter {name}={value!r} is not a decimal integer")
    return int(value)


def _start(stream: PeerStream, chunks: list[Chunk]) -> tuple[str, int, bool]:
    """Check the request; the message id, the start seq and whether live_edge was asked."""
    match = LISTEN_PATH.match(stream.path)
    assert match is not None  # routed on it
    msg = unquote(match.group(1))
    if not ID_PATTERN.fullmatch(msg):
        fail("VXS-10-6", f"the message id {msg!r} in the path is not an identifier")
    params: dict[str, str] = {}
    for key, value in stream.query_pairs:
        if key in params:
            fail("VXS-10-6", f"query parameter {key} given twice")
        params[key] = value
    unknown = sorted(set(params) - {"from_seq", "from_ts", "live_edge", "speed"})
    if unknown:
        note(f"unknown query parameters {unknown}")
    live_edge = False
    if "live_edge" in params:
        if params["live_edge"] not in ("1", "true"):
            fail("VXS-10-6", f"live_edge={params['live_edge']!r}; the values are 1 and true")
        live_edge = True
    offsets = [k for k in ("from_seq", "from_ts") if k in params] + (
        ["live_edge"] if live_edge else []
    )
    if len(offsets) > 1:
        fail("VXS-6.1-2", f"the request gives {' and '.join(offsets)}; at most one is allowed")
    if "speed" in params:
        try:
            speed = float(params["speed"])
        except ValueError:
            speed = math.nan
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", params["speed"]) or not math.isfinite(speed):
            fail("VXS-10-6", f"speed={params['speed']!r} is not a decimal number")
        if not (speed == 0 or 0.25 <= speed <= 16):
            fail("VXS-6.4-2", f"speed {speed} is neither 0 nor within [0.25, 16]")
    start = 0
    if "from_seq" in params:
        start = min(_decimal(params["from_seq"], "from_seq"), len(chunks))
    elif "from_ts" in params:
        from_ts = _decimal(params["from_ts"], "from_ts")
        ends = [c.ts + packets_duration(c.packets) for c in chunks]
        start = next((c.seq for c, e in zip(chunks, ends, strict=True) if e > from_ts), len(chunks))
    elif live_edge:
        start = HELD
    return msg, start, live_edge


def _info(msg: str, start: int, state: str) -> MessageInfo:
    return MessageInfo(
        msg=msg,
        thread="t-peer",
        sender="a-peer",
        codec="opus",
        created=_CREATED,
        state="live" if state == "live" else "closed",
        start_seq=start,
    )


def _end(chunks: list[Chunk], count: int | None = None) -> End:
    last = chunks[-1]
    duration = last.ts + packets_duration(last.packets)
    return End(chunks=len(chunks) if count is None else count, duration=duration)


def _listening(session: object) -> Listening:
    assert isinstance(session, Listening)
    return session


@scenario(
    "listen-normal",
    "10.2",
    "a listener's request is well-formed and it reads a valid stream to its end",
    kind="listener",
    requirements=LISTENER_IDS,
    accepts="GET /v1/messages/{id}/listen with an identifier, at most one of from_seq, "
    "from_ts and live_edge (1 or true), decimal values, speed 0 or within [0.25, 16]; "
    "the peer serves message, the stored chunks, live, the live chunks and end, and the "
    "listener reads them all (SHOULD: it does not reset a valid stream)",
)
async def listen_normal(session: object) -> None:
    listening = _listening(session)
    stream = listening.stream
    chunks = message_chunks()
    msg, start, _ = _start(stream, chunks)
    await stream.send(_info(msg, start, "live"), *chunks[start:HELD])
    live_at = max(start, HELD)
    await stream.send(Live(seq=live_at))
    for chunk in chunks[live_at:]:
        await trio.sleep(0.02)  # "as the talker sends it"
        await stream.send(chunk)
    await stream.send(_end(chunks), end=True)
    recommend(
        not stream.gone,
        "VXS-6.2-6",
        f"the listener ended the stream ({stream.signal}) before its end, although "
        "every frame was valid",
    )
    note(f"served chunks {start} to {len(chunks) - 1} (start_seq {start})")


def _fault_scenario(name: str, title: str, what: str) -> None:
    async def play(session: object) -> None:
        listening = _listening(session)
        stream = listening.stream
        chunks = message_chunks()
        msg, s, _ = _start(stream, chunks)
        if s + 3 > len(chunks):
            skip(f"listen from seq 0 (start_seq {s} leaves too few chunks for the fault)")
        info = _info(msg, s, "closed")
        c = chunks
        prefix: list[Frame]
        fault: list[Frame]
        rest: list[Frame]
        if name == "listen-duplicate":
            prefix, fault, rest = [info, c[s], c[s + 1]], [c[s + 1]], [*c[s + 2 :], _end(c)]
        elif name == "listen-gap":
            prefix, fault, rest = [info, c[s]], [c[s + 2]], [*c[s + 3 :], _end(c)]
        elif name == "listen-reorder":
            prefix, fault, rest = [info, c[s]], [c[s + 2], c[s + 1]], [*c[s + 3 :], _end(c)]
        elif name == "listen-second-message":
            prefix, fault, rest = [info, c[s]], [info], [*c[s + 1 :], _end(c)]
        elif name == "listen-second-live":
            info = _info(msg, s, "live")
            prefix = [info, c[s], Live(seq=s + 1), c[s + 1]]
            fault, rest = [Live(seq=s + 2)], [*c[s + 2 :], _end(c)]
        elif name == "listen-after-end":
            prefix, fault, rest = [], [info, *c[s:], _end(c), c[-1]], []
        elif name == "listen-bad-end":
            prefix, fault, rest = [info, *c[s:]], [_end(c, len(c) + 1)], []
        else:
            raise AssertionError(name)
        if prefix:
            await stream.send(*prefix)
        await stream.send(b"".join(encode_frame(f) for f in fault))
        within = listening.timing.listen_reaction
        signal = await stream.wait_signal(within, body_end=False)
        if signal is None:
            await stream.send(*rest, end=True)
            fail(
                "VXS-6.2-6",
                f"the listener neither reset the stream nor closed the connection within "
                f"{within:g} s of {what}: it took the stream as valid",
            )
        assert signal is not None
        note(f"the listener ended the stream with {signal.value} after {what}")

    scenario(
        name,
        "6.2",
        title,
        kind="listener",
        requirements=("VXS-6.2-6", *LISTENER_IDS),
        accepts=f"the peer sends {what} and holds the rest of the stream back: the listener "
        f"resets the stream (RST_STREAM) or closes the connection within {REACTION:g} s",
        strict=True,
    )(play)


_fault_scenario(
    "listen-duplicate",
    "a listener treats a doubled chunk as a server protocol violation",
    "chunk 1 twice",
)
_fault_scenario(
    "listen-gap",
    "a listener treats a dropped chunk as a server protocol violation",
    "chunk 2 right after chunk 0",
)
_fault_scenario(
    "listen-reorder",
    "a listener treats reordered chunks as a server protocol violation",
    "chunks 2 and 1 after chunk 0",
)
_fault_scenario(
    "listen-second-message",
    "a listener treats a second message frame as a server protocol violation",
    "a second message frame",
)
_fault_scenario(
    "listen-second-live",
    "a listener treats a second live frame as a server protocol violation",
    "a second live frame",
)
_fault_scenario(
    "listen-after-end",
    "a listener treats a frame after end as a server protocol violation",
    "a chunk after end (in the same write)",
)
_fault_scenario(
    "listen-bad-end",
    "a listener treats an end with the wrong chunk count as a server protocol violation",
    "end naming one chunk more than were sent",
)
