"""Frame dataclasses and their CBOR data model (spec section 4).

Each frame is one CBOR map with a text key ``"type"``; the other keys are the
frame's fields. ``frame_to_obj`` gives the plain Python value cbor2 encodes and
``frame_from_obj`` validates a decoded value and builds the frame, raising
``ProtocolError(INVALID_FRAME)`` for anything the schema (``proto/frames.cddl``)
does not admit. Unknown keys are ignored, so that later versions can add
optional fields without breaking older peers (VXS-3.1-5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from .errors import ErrorCode, ProtocolError

#: Identifiers: message, thread and account ids (VXS-2.3-1).
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The most Opus packets one chunk may carry (VXS-4.2-4).
MAX_PACKETS_PER_CHUNK: Final = 50
#: The largest media time or seq a frame may carry (fits an unsigned 53-bit int,
#: so JavaScript clients can hold it in a Number) (VXS-3.2-3).
MAX_UINT: Final = 2**53 - 1
#: The highest speed factor a listener may ask for (VXS-6.4-2).
MAX_SPEED: Final = 16.0

MessageState = Literal["live", "closed"]


@dataclass(frozen=True, kw_only=True)
class Frame:
    """Base of every frame; ``TYPE`` is the value of the ``"type"`` key."""

    TYPE: ClassVar[str] = ""


# -- upload direction: talker to server --------------------------------------


@dataclass(frozen=True, kw_only=True)
class Open(Frame):
    """Starts (or resumes) the upload of message ``msg`` into ``thread``."""

    TYPE: ClassVar[str] = "open"
    msg: str
    thread: str
    codec: str = "opus"
    #: Client clock at the start of recording, milliseconds since the Unix epoch.
    created: int


@dataclass(frozen=True, kw_only=True)
class Chunk(Frame):
    """A run of Opus packets at media time ``ts`` (48 kHz ticks from the start)."""

    TYPE: ClassVar[str] = "chunk"
    seq: int
    ts: int
    packets: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True)
class Close(Frame):
    """Ends the message; ``chunks`` is how many chunks it has (last seq + 1)."""

    TYPE: ClassVar[str] = "close"
    chunks: int


# -- server to talker --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Opened(Frame):
    """Answer to ``open``: the talker sends from ``next_seq`` on."""

    TYPE: ClassVar[str] = "opened"
    msg: str
    next_seq: int
    state: MessageState


@dataclass(frozen=True, kw_only=True)
class Ack(Frame):
    """Cumulative: every chunk with seq <= ``seq`` is durably stored."""

    TYPE: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, kw_only=True)
class Closed(Frame):
    """Answer to ``close`` once the whole message is durable."""

    TYPE: ClassVar[str] = "closed"
    msg: str
    chunks: int
    duration: int


# -- listen direction ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Listen(Frame):
    """A listen request (a WebSocket frame; query parameters on HTTP/2).

    At most one of ``from_seq``, ``from_ts`` and ``live_edge`` is given; none
    means from seq 0. ``speed`` 0 means as fast as possible.
    """

    TYPE: ClassVar[str] = "listen"
    msg: str
    from_seq: int | None = None
    from_ts: int | None = None
    live_edge: bool = False
    speed: float = 0.0

    def __post_init__(self) -> None:
        given = sum((self.from_seq is not None, self.from_ts is not None, self.live_edge))
        if given > 1:
            raise ProtocolError(
                ErrorCode.INVALID_LISTEN,
                "at most one of from_seq, from_ts and live_edge",
                "VXS-6.1-2",
            )
        if not (self.speed == 0.0 or 0.25 <= self.speed <= MAX_SPEED):
            raise ProtocolError(
                ErrorCode.INVALID_LISTEN,
                f"speed must be 0 or within [0.25, {MAX_SPEED}]",
                "VXS-6.4-2",
            )


@dataclass(frozen=True, kw_only=True)
class MessageInfo(Frame):
    """First frame of every listen stream: the message and where it starts."""

    TYPE: ClassVar[str] = "message"
    msg: str
    thread: str
    sender: str
    codec: str
    created: int
    state: MessageState
    #: The seq of the first chunk this listener will receive.
    start_seq: int


@dataclass(frozen=True, kw_only=True)
class Live(Frame):
    """The listener has caught up: chunks from ``seq`` on are sent as they arrive."""

    TYPE: ClassVar[str] = "live"
    seq: int


@dataclass(frozen=True, kw_only=True)
class End(Frame):
    """The message is closed and the listener has every chunk from its start."""

    TYPE: ClassVar[str] = "end"
    chunks: int
    duration: int


# -- either direction ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Auth(Frame):
    """Bearer token as the first WebSocket frame, for clients that cannot set headers."""

    TYPE: ClassVar[str] = "auth"
    token: str


@dataclass(frozen=True, kw_only=True)
class Error(Frame):
    """An error from the registry; the sender closes the stream after it."""

    TYPE: ClassVar[str] = "error"
    code: int
    name: str
    detail: str = ""
    seq: int | None = None

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        return cls(code=int(exc.code), name=exc.code.name, detail=exc.detail, seq=exc.seq)


FRAME_TYPES: Final[dict[str, type[Frame]]] = {
    cls.TYPE: cls
    for cls in (
        Open,
        Chunk,
        Close,
        Opened,
        Ack,
        Closed,
        Listen,
        MessageInfo,
        Live,
        End,
        Auth,
        Error,
    )
}


# -- the CBOR data model -------------------------------------------------------


def frame_to_obj(frame: Frame) -> dict[str, Any]:
    """The CBOR data model of ``frame``; optional fields at their default are left out."""
    obj: dict[str, Any] = {"type": frame.TYPE}
    match frame:
        case Chunk():
            obj.update(seq=frame.seq, ts=frame.ts, packets=list(frame.packets))
        case Listen():
            obj["msg"] = frame.msg
            if frame.from_seq is not None:
                obj["from_seq"] = frame.from_seq
            if frame.from_ts is not None:
                obj["from_ts"] = frame.from_ts
            if frame.live_edge:
                obj["live_edge"] = True
            if frame.speed != 0.0:
                obj["speed"] = frame.speed
        case Error():
            obj.update(code=frame.code, name=frame.name)
            if frame.detail:
                obj["detail"] = frame.detail
            if frame.seq is not None:
                obj["seq"] = frame.seq
        case _:
            obj.update(vars(frame))
    return obj


def _invalid(detail: str, requirement: str = "VXS-3.1-4") -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FRAME, detail, requirement)


def _uint(obj: Mapping[Any, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional and key not in obj:
        return None
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise _invalid(f"{key!r} must be an unsigned integer <= 2^53-1", "VXS-3.2-3")
    return value


def _text(obj: Mapping[Any, Any], key: str, *, optional: bool = False, limit: int = 1024) -> Any:
    value = obj.get(key)
    if value is None and optional and key not in obj:
        return None
    if type(value) is not str or len(value) > limit:
        raise _invalid(f"{key!r} must be a text string of at most {limit} characters")
    return value


def _ident(obj: Mapping[Any, Any], key: str) -> str:
    value = _text(obj, key)
    if not ID_PATTERN.fullmatch(value):
        raise _invalid(f"{key!r} must match [A-Za-z0-9_-]{{1,64}}", "VXS-2.3-1")
    return str(value)


def _state(obj: Mapping[Any, Any]) -> MessageState:
    value = obj.get("state")
    if value == "live":
        return "live"
    if value == "closed":
        return "closed"
    raise _invalid('\'state\' must be "live" or "closed"')


def _packets(obj: Mapping[Any, Any]) -> tuple[bytes, ...]:
    value = obj.get("packets")
    if type(value) is not list or not 1 <= len(value) <= MAX_PACKETS_PER_CHUNK:
        raise _invalid(f"'packets' must be an array of 1 to {MAX_PACKETS_PER_CHUNK}", "VXS-4.2-4")
    if not all(type(p) is bytes and p for p in value):
        raise _invalid("every packet must be a non-empty byte string", "VXS-4.2-4")
    return tuple(value)


def _speed(obj: Mapping[Any, Any]) -> float:
    value = obj.get("speed", 0.0)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _invalid("'speed' must be a finite number")
    return float(value)


def _bool(obj: Mapping[Any, Any], key: str) -> bool:
    value = obj.get(key, False)
    if type(value) is not bool:
        raise _invalid(f"{key!r} must be a boolean")
    return value


_PARSERS: dict[str, Callable[[Mapping[Any, Any]], Frame]] = {
    "open": lambda o: Open(
        msg=_ident(o, "msg"),
        thread=_ident(o, "thread"),
        codec=_text(o, "codec", limit=32),
        created=_uint(o, "created"),
    ),
    "chunk": lambda o: Chunk(seq=_uint(o, "seq"), ts=_uint(o, "ts"), packets=_packets(o)),
    "close": lambda o: Close(chunks=_uint(o, "chunks")),
    "opened": lambda o: Opened(
        msg=_ident(o, "msg"), next_seq=_uint(o, "next_seq"), state=_state(o)
    ),
    "ack": lambda o: Ack(seq=_uint(o, "seq")),
    "closed": lambda o: Closed(
        msg=_ident(o, "msg"), chunks=_uint(o, "chunks"), duration=_uint(o, "duration")
    ),
    "listen": lambda o: Listen(
        msg=_ident(o, "msg"),
        from_seq=_uint(o, "from_seq", optional=True),
        from_ts=_uint(o, "from_ts", optional=True),
        live_edge=_bool(o, "live_edge"),
        speed=_speed(o),
    ),
    "message": lambda o: MessageInfo(
        msg=_ident(o, "msg"),
        thread=_ident(o, "thread"),
        sender=_ident(o, "sender"),
        codec=_text(o, "codec", limit=32),
        created=_uint(o, "created"),
        state=_state(o),
        start_seq=_uint(o, "start_seq"),
    ),
    "live": lambda o: Live(seq=_uint(o, "seq")),
    "end": lambda o: End(chunks=_uint(o, "chunks"), duration=_uint(o, "duration")),
    "auth": lambda o: Auth(token=_text(o, "token", limit=512)),
    "error": lambda o: Error(
        code=_uint(o, "code"),
        name=_text(o, "name", limit=64),
        detail=_text(o, "detail", optional=True) or "",
        seq=_uint(o, "seq", optional=True),
    ),
}


def frame_from_obj(obj: object) -> Frame:
    """Validate a decoded CBOR value against the frame schema and build the frame."""
    if not isinstance(obj, dict):
        raise _invalid("a frame must be a CBOR map", "VXS-3.1-3")
    kind = obj.get("type")
    if type(kind) is not str:
        raise _invalid("a frame must have a text 'type'", "VXS-3.1-3")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise _invalid(f"unknown frame type {kind!r}", "VXS-3.1-6")
    return parser(obj)
