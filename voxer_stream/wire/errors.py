"""The error registry (spec section 9): one numbered code, one meaning.

Every error a voxer-stream peer reports on the wire is one of these codes. The
numbering is part of the protocol: codes are never reused or renumbered, and
new codes are only ever added. ``http_status`` is the status a binding uses
when the error is reported before a streaming response has started.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    """Registry codes, grouped by hundreds (spec 9.1)."""

    # 1xx: the bytes or frames themselves
    MALFORMED_CBOR = 100
    FRAME_TOO_LARGE = 101
    INVALID_FRAME = 102
    UNEXPECTED_FRAME = 103
    INVALID_REQUEST = 104
    # 2xx: who is asking
    UNAUTHENTICATED = 200
    FORBIDDEN = 201
    INVALID_CREDENTIALS = 202
    USERNAME_TAKEN = 203
    RATE_LIMITED = 204
    # 3xx: what is asked for
    THREAD_NOT_FOUND = 300
    MESSAGE_NOT_FOUND = 301
    NOT_FOUND = 302
    # 4xx: the upload and listen state machines
    SEQUENCE_GAP = 400
    CHUNK_CONFLICT = 401
    MESSAGE_CLOSED = 402
    MESSAGE_CONFLICT = 403
    INVALID_OPUS = 404
    UNSUPPORTED_CODEC = 405
    TIMESTAMP_REGRESSION = 406
    CLOSE_MISMATCH = 407
    SUPERSEDED = 408
    INVALID_LISTEN = 409
    MESSAGE_LIVE = 410
    # 5xx: the server's own condition
    INTERNAL_ERROR = 500
    SHUTTING_DOWN = 501
    IDLE_TIMEOUT = 502
    TOO_MANY_SESSIONS = 503

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @property
    def description(self) -> str:
        return _DESCRIPTION[self]


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_CBOR: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.INVALID_FRAME: 400,
    ErrorCode.UNEXPECTED_FRAME: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_CREDENTIALS: 401,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.THREAD_NOT_FOUND: 404,
    ErrorCode.MESSAGE_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.SEQUENCE_GAP: 409,
    ErrorCode.CHUNK_CONFLICT: 409,
    ErrorCode.MESSAGE_CLOSED: 409,
    ErrorCode.MESSAGE_CONFLICT: 409,
    ErrorCode.INVALID_OPUS: 422,
    ErrorCode.UNSUPPORTED_CODEC: 422,
    ErrorCode.TIMESTAMP_REGRESSION: 422,
    ErrorCode.CLOSE_MISMATCH: 409,
    ErrorCode.SUPERSEDED: 409,
    ErrorCode.INVALID_LISTEN: 400,
    ErrorCode.MESSAGE_LIVE: 409,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.IDLE_TIMEOUT: 408,
    ErrorCode.TOO_MANY_SESSIONS: 429,
}

_DESCRIPTION: dict[ErrorCode, str] = {
    ErrorCode.MALFORMED_CBOR: "the bytes are not well-formed CBOR (RFC 8949)",
    ErrorCode.FRAME_TOO_LARGE: "a frame's encoding exceeds the maximum frame size",
    ErrorCode.INVALID_FRAME: "well-formed CBOR that is not a valid frame of the schema",
    ErrorCode.UNEXPECTED_FRAME: "a valid frame that is not allowed in this state or direction",
    ErrorCode.INVALID_REQUEST: "a REST request body or parameter is invalid",
    ErrorCode.UNAUTHENTICATED: "no bearer token, or a token that is unknown or expired",
    ErrorCode.FORBIDDEN: "the account sees the thread but may not do this in it",
    ErrorCode.INVALID_CREDENTIALS: "wrong username or password",
    ErrorCode.USERNAME_TAKEN: "an account with that username exists",
    ErrorCode.RATE_LIMITED: "too many failed attempts; retry after the time given",
    ErrorCode.THREAD_NOT_FOUND: "no thread with that id that the account can see",
    ErrorCode.MESSAGE_NOT_FOUND: "no message with that id that the account can see",
    ErrorCode.NOT_FOUND: "no such resource or path",
    ErrorCode.SEQUENCE_GAP: "a chunk's seq skips over a chunk not yet received",
    ErrorCode.CHUNK_CONFLICT: "a chunk re-sent with a seq already stored but other content",
    ErrorCode.MESSAGE_CLOSED: "a chunk or close for a message that is already closed",
    ErrorCode.MESSAGE_CONFLICT: "an open for an existing message id with other attributes",
    ErrorCode.INVALID_OPUS: "a packet is not a valid Opus packet (RFC 6716 section 3)",
    ErrorCode.UNSUPPORTED_CODEC: "the codec named in open is not supported",
    ErrorCode.TIMESTAMP_REGRESSION: "a chunk's media time overlaps or precedes the previous one",
    ErrorCode.CLOSE_MISMATCH: "close names a chunk count other than the chunks received",
    ErrorCode.SUPERSEDED: "another upload connection took over this message",
    ErrorCode.INVALID_LISTEN: "the listen request's parameters are invalid",
    ErrorCode.MESSAGE_LIVE: "the operation needs a closed message; this one is live",
    ErrorCode.INTERNAL_ERROR: "the server failed; the request may be retried",
    ErrorCode.SHUTTING_DOWN: "the server is shutting down; reconnect and resume",
    ErrorCode.TOO_MANY_SESSIONS: (
        "as many sessions of this kind are open as allowed (the account's or the server's)"
    ),
    ErrorCode.IDLE_TIMEOUT: "no frame arrived within the idle timeout",
}


@dataclass(eq=False)
class ProtocolError(Exception):
    """A violation of the protocol, carrying its registry code.

    Raised by the sans-IO layer for whatever the peer sent; ``requirement`` names
    the spec requirement id that was violated, so that a report can cite it.
    """

    code: ErrorCode
    detail: str = ""
    requirement: str | None = None
    seq: int | None = None
    #: Seconds, for RATE_LIMITED: REST answers carry it as ``Retry-After``.
    retry_after: int | None = None

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.name} ({int(self.code)}): {self.detail}")
