"""Images made and measured by hand, for the image cases (VXS-13.3-6, VXS-13.1-1).

The suite needs a few valid images of known size, one whose header claims too many
pixels, and the size of whatever thumbnail a server returns. PNG and GIF are simple
enough to write with ``zlib`` and ``struct`` (RFC 2083, GIF89a), and the sizes of PNG,
JPEG, GIF and WebP sit at fixed places of their headers, so the suite needs no imaging
library (and so no decoder of the server's own).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

__all__ = ["gif", "image_size", "png", "sniff"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png(
    width: int, height: int, *, text: bytes = b"", rgb: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    """A valid PNG of ``width`` x ``height`` pixels, one colour, 8-bit RGB.

    ``text`` is put in a ``tEXt`` chunk (metadata a thumbnail must not carry). Past
    one megapixel the image is 1-bit greyscale instead, so that a header claiming tens
    of megapixels still costs only a few kilobytes (its pixel data is all zeros).
    """
    if width * height > 1_000_000:
        header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
        row = b"\x00" + bytes((width + 7) // 8)
    else:
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        row = b"\x00" + bytes(rgb) * width
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    chunks = [_chunk(b"IHDR", header)]
    if text:
        chunks.append(_chunk(b"tEXt", b"Comment\x00" + text))
    chunks += [_chunk(b"IDAT", pixels), _chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def gif() -> bytes:
    """A valid GIF89a of 1 x 1 pixel: a two-colour table, one LZW-coded pixel."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)  # global colour table of 2 entries
        + b"\xff\x00\x00\x00\x00\xff"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2: clear, 0, end
        + b"\x3b"
    )


def sniff(data: bytes) -> str | None:
    """The media type of an image by its first bytes, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, GIF or WebP image from its header, or None."""
    kind = sniff(data)
    try:
        if kind == "image/png":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if kind == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if kind == "image/jpeg":
            return _jpeg_size(data)
        if kind == "image/webp":
            return _webp_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None
