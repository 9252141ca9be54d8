"""CBOR sequence framing (RFC 8742): bytes in, frames out; frames in, bytes out.

A stream of frames is a CBOR sequence: items back to back, no delimiter. The
decoder must find where each item ends before it is complete, so that it can
refuse an oversized frame as soon as its head announces the size (VXS-3.2-1)
instead of buffering it, and so that feeding bytes one at a time costs no more
than feeding them whole. ``_scan`` walks the item heads (RFC 8949 section
3) without building values; cbor2 then decodes exactly the bytes of one item.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import cbor2

from .errors import ErrorCode, ProtocolError
from .frames import Frame, frame_from_obj, frame_to_obj

#: The largest encoded frame a peer must accept and may send (VXS-3.2-1).
MAX_FRAME_SIZE: Final = 65536
#: Deepest nesting of arrays and maps a frame may have (VXS-3.2-2).
MAX_DEPTH: Final = 8

_BREAK: Final = 0xFF


class _NeedData(Exception):
    """The buffer ends inside the item."""


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_CBOR, detail, "VXS-3.1-2")


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes or more exceeds {limit}", "VXS-3.2-1"
    )


class _Scanner:
    """Finds the end of the first CBOR item in ``buf`` without decoding it."""

    def __init__(self, buf: bytes | bytearray, limit: int) -> None:
        self.buf = buf
        self.limit = limit
        self.pos = 0
        #: Map entries seen: the duplicate-key check compares it with what cbor2 kept.
        self.keys = 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedData
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def skip(self, count: int) -> None:
        end = self.pos + count
        if end > self.limit:
            raise _too_large(end, self.limit)
        if end > len(self.buf):
            raise _NeedData
        self.pos = end

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info > 27:
            raise _malformed(f"reserved additional information {info}")
        size = 1 << (info - 24)
        start = self.pos
        self.skip(size)
        return int.from_bytes(self.buf[start : start + size], "big")

    def item(self, depth: int) -> None:
        """Skip one data item; ``depth`` counts enclosing arrays and maps."""
        initial = self.byte()
        major, info = initial >> 5, initial & 0x1F
        if major in (0, 1):
            self.argument(info)
        elif major in (2, 3):
            if info == 31:
                self.indefinite_string(major)
            else:
                self.skip(self.argument(info))
        elif major in (4, 5):
            if depth >= MAX_DEPTH:
                raise ProtocolError(
                    ErrorCode.INVALID_FRAME, f"nesting deeper than {MAX_DEPTH}", "VXS-3.2-2"
                )
            per_entry = 1 if major == 4 else 2
            if info == 31:
                while self.peek() != _BREAK:
                    if major == 5:
                        self.keys += 1
                    for _ in range(per_entry):
                        self.item(depth + 1)
                self.pos += 1
            else:
                count = self.argument(info)
                if major == 5:
                    self.keys += count
                for _ in range(count * per_entry):
                    self.item(depth + 1)
        elif major == 6:
            # Frames use no tags (VXS-3.1-4). Refuse them here, before cbor2 would
            # turn a bignum into an int or a date into a datetime.
            raise ProtocolError(ErrorCode.INVALID_FRAME, "tags are not allowed", "VXS-3.1-4")
        else:  # major 7: simple values and floats
            if info == 31:
                raise _malformed("break outside an indefinite-length item")
            if info == 24:
                if self.byte() < 32:
                    raise _malformed("two-byte encoding of a simple value below 32")
            elif info > 24:
                self.argument(info)

    def peek(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedData
        return self.buf[self.pos]

    def indefinite_string(self, major: int) -> None:
        while True:
            initial = self.byte()
            if initial == _BREAK:
                return
            if initial >> 5 != major or initial & 0x1F == 31:
                raise _malformed("indefinite-length string with a chunk of another type")
            self.skip(self.argument(initial & 0x1F))


def _scan(buf: bytes | bytearray, limit: int) -> _Scanner | None:
    """The scan of the first item in ``buf`` (its length is ``pos``), or None when
    more bytes are needed."""
    scanner = _Scanner(buf, limit)
    try:
        scanner.item(0)
    except _NeedData:
        if len(buf) >= limit:
            raise _too_large(len(buf), limit) from None
        return None
    return scanner


def decode_item(data: bytes) -> object:
    """Decode exactly one well-formed CBOR item (already delimited)."""
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _malformed(str(exc)) from None


def _non_text_key(obj: object) -> str | None:
    """Every map key in a frame is a text string (VXS-3.1-4)."""
    if isinstance(obj, list):
        return next((p for v in obj if (p := _non_text_key(v))), None)
    if isinstance(obj, dict):
        if not all(type(key) is str for key in obj):
            return "map keys must be text strings"
        return next((p for v in obj.values() if (p := _non_text_key(v))), None)
    return None


def _unusual_value(obj: object) -> str | None:
    """Frames use no undefined and no simple values but true, false, null (VXS-3.1-4)."""
    if isinstance(obj, cbor2.CBORSimpleValue) or obj is cbor2.undefined:
        return "undefined and simple values other than true/false/null are not allowed"
    if isinstance(obj, list):
        for value in obj:
            if found := _unusual_value(value):
                return found
    if isinstance(obj, dict):
        for key, value in obj.items():
            if found := _unusual_value(key) or _unusual_value(value):
                return found
    return None


def decode_frame(data: bytes) -> Frame:
    """Decode one complete encoded frame; any problem is a ``ProtocolError``."""
    if len(data) > MAX_FRAME_SIZE:
        raise _too_large(len(data), MAX_FRAME_SIZE)
    scan = _scan(data, MAX_FRAME_SIZE)
    if scan is None:
        raise _malformed("truncated CBOR item")
    if scan.pos != len(data):
        raise _malformed("bytes after the end of the frame")
    return _decode_scanned(data, scan.keys)


def _decode_scanned(data: bytes, map_entries: int) -> Frame:
    """Decode one item that ``_scan`` has delimited and checked (one scan per frame:
    the scan also counted the map entries for the duplicate-key check)."""
    obj = decode_item(data)
    if problem := _non_text_key(obj):
        raise ProtocolError(ErrorCode.INVALID_FRAME, problem, "VXS-3.1-4")
    if problem := _unusual_value(obj):
        raise ProtocolError(ErrorCode.INVALID_FRAME, problem, "VXS-3.1-4")
    # cbor2 keeps the last of duplicate keys silently (RFC 8949 section 5.6): a map
    # with the same key twice shows as fewer keys decoded than entries encoded.
    if map_entries != _count_dict_keys(obj):
        raise ProtocolError(ErrorCode.INVALID_FRAME, "a map has the same key twice", "VXS-3.1-4")
    return frame_from_obj(obj)


def _count_dict_keys(obj: object) -> int:
    if isinstance(obj, dict):
        return len(obj) + sum(_count_dict_keys(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_count_dict_keys(v) for v in obj)
    return 0


def encode_frame(frame: Frame) -> bytes:
    """Deterministic encoding (RFC 8949 section 4.2.1) of one frame (VXS-3.1-1)."""
    return bytes(cbor2.dumps(frame_to_obj(frame), canonical=True))


class FrameDecoder:
    """Incremental decoder of an ``application/cbor-seq`` byte stream.

    ``feed(data)`` buffers bytes; iterating yields every complete frame. After a
    ``ProtocolError`` the stream is unusable (VXS-3.1-7): the decoder raises the
    same error again rather than guess where the next item starts.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._limit = max_frame_size
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._error is not None:
            raise self._error
        try:
            scan = _scan(self._buf, self._limit)
            if scan is None:
                raise StopIteration
            data = bytes(self._buf[: scan.pos])
            del self._buf[: scan.pos]
            return _decode_scanned(data, scan.keys)
        except ProtocolError as exc:
            self._error = exc
            raise
