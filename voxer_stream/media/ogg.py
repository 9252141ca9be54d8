"""Ogg/Opus files (RFC 7845 over the Ogg framing of RFC 3533), written and read by hand.

A stored voice message is exported as a plain `.opus` file that any player opens. The
framing is small enough to own outright, and owning it gives two guarantees a muxer does
not: the audio packets in the file are byte-for-byte the packets the talker sent (the
tests prove it through our reader, PyAV's demuxer and opusinfo), and the file can be
written incrementally while a message is still arriving (`OggOpusWriter`), each page
complete and checksummed as soon as it is written.

Layout (RFC 7845 section 3): page 0 holds only the ID header "OpusHead" (BOS flag);
the comment header "OpusTags" starts on page 1 and ends its page; audio starts on a
fresh page. Header pages have granule position 0. An audio page's granule position is
the 48 kHz sample count, pre-skip included, at the end of the last packet completed on
it, or -1 when no packet completes there (RFC 7845 section 4, RFC 3533 section 6). The
last page carries EOS.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from .opus import InvalidOpusPacket, parse_packet

__all__ = [
    "InvalidOggOpus",
    "OggOpusInfo",
    "OggOpusWriter",
    "ogg_crc32",
    "read_ogg_opus",
    "write_ogg_opus",
]

_CONTINUED, _BOS, _EOS = 0x01, 0x02, 0x04
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # RFC 3533 section 6: 27 bytes
_NO_GRANULE = -1

#: Flush an audio page once it holds this much audio (48 kHz ticks): about one second,
#: so a streamed file is never far behind the talker, and the per-page overhead
#: (27 + 50 lacing bytes for 50 packets of 20 ms) stays near 1 %.
PAGE_DURATION = 48000


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc32(data: bytes | bytearray | memoryview) -> int:
    """The Ogg page checksum (RFC 3533 section 6): CRC-32, polynomial 0x04c11db7.

    Direct (not bit-reflected), initial value 0 and no final XOR, which is why
    `zlib.crc32` (reflected, inverted) cannot be used.
    """
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def _page(
    header_type: int, granule: int, serial: int, sequence: int, lacing: list[int], body: bytes
) -> bytes:
    header = _PAGE_HEADER.pack(b"OggS", 0, header_type, granule, serial, sequence, 0, len(lacing))
    page = bytearray(header)
    page += bytes(lacing)
    page += body
    struct.pack_into("<I", page, 22, ogg_crc32(page))
    return bytes(page)


def _opus_head(channels: int, pre_skip: int, input_sample_rate: int) -> bytes:
    """RFC 7845 section 5.1: version 1, output gain 0, channel mapping family 0."""
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_sample_rate, 0, 0)


def _opus_tags(vendor: str, comments: Iterable[str]) -> bytes:
    """RFC 7845 section 5.2: length-prefixed UTF-8 vendor string and user comments."""
    out = bytearray(b"OpusTags")
    raw = vendor.encode("utf-8")
    out += struct.pack("<I", len(raw)) + raw
    items = [c.encode("utf-8") for c in comments]
    out += struct.pack("<I", len(items))
    for item in items:
        out += struct.pack("<I", len(item)) + item
    return bytes(out)


class OggOpusWriter:
    """Write an Ogg/Opus stream packet by packet to a binary file object.

    The headers are written by the constructor. `write_packet` validates each packet
    (RFC 6716 section 3.4, `InvalidOpusPacket` otherwise) and writes a page as soon as
    the pending one is full (about one second of audio, or 255 lacing values), so a
    file being streamed to is always a prefix of the final file made of whole pages.
    The newest page is held back until the next packet or `close()`, because only then
    is it known whether it is the last one (the EOS flag, RFC 7845 section 3).
    Pages go to `out.write`; flush `out` yourself when readers must see them at once.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        channels: int = 1,
        pre_skip: int = 312,
        input_sample_rate: int = 48000,
        serial: int | None = None,
        vendor: str = "voxer-stream",
        comments: Iterable[str] = (),
    ) -> None:
        if channels not in (1, 2):
            # Channel mapping family 0 (RFC 7845 section 5.1.1.1) covers mono and stereo.
            raise ValueError(f"channels must be 1 or 2, not {channels!r}")
        if not 0 <= pre_skip <= 0xFFFF:
            raise ValueError(f"pre_skip must fit 16 bits, not {pre_skip!r}")
        if not 0 <= input_sample_rate <= 0xFFFFFFFF:
            raise ValueError(f"input_sample_rate must fit 32 bits, not {input_sample_rate!r}")
        if serial is None:
            serial = int.from_bytes(os.urandom(4), "little")
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError(f"serial must fit 32 bits, not {serial!r}")
        self._out = out
        self._serial = serial
        self._sequence = 0
        self._granule = 0  # samples at the end of the last packet written
        self._last_duration = 0
        self._packets = 0
        # The pending page: lacing values, body, granule of its last completed packet
        # (or -1), whether it starts with the continuation of a packet, and how much
        # audio it completes.
        self._lacing: list[int] = []
        self._body = bytearray()
        self._page_granule = _NO_GRANULE
        self._page_continued = False
        self._page_duration = 0
        self._closed = False
        # RFC 7845 section 3: the ID header alone on the first page, the comment
        # header ending its own page, both with granule position 0.
        self._emit(_BOS, 0, [19], _opus_head(channels, pre_skip, input_sample_rate))
        tags = _opus_tags(vendor, comments)
        self._write_header_packet(tags)

    @property
    def granule_position(self) -> int:
        """48 kHz samples written so far, pre-skip included (RFC 7845 section 4)."""
        return self._granule

    @property
    def packet_count(self) -> int:
        return self._packets

    def _emit(self, header_type: int, granule: int, lacing: list[int], body: bytes) -> None:
        self._out.write(_page(header_type, granule, self._serial, self._sequence, lacing, body))
        self._sequence += 1

    def _write_header_packet(self, packet: bytes) -> None:
        lacing = _lacing_values(len(packet))
        pos, continued = 0, 0
        while lacing:
            chunk, lacing = lacing[:255], lacing[255:]
            size = sum(chunk)
            self._emit(continued, 0, chunk, packet[pos : pos + size])
            pos += size
            continued = _CONTINUED

    def _flush_page(self, eos: bool = False) -> None:
        header_type = (_CONTINUED if self._page_continued else 0) | (_EOS if eos else 0)
        self._emit(header_type, self._page_granule, self._lacing, bytes(self._body))
        self._lacing = []
        self._body = bytearray()
        self._page_granule = _NO_GRANULE
        self._page_duration = 0

    def write_packet(self, packet: bytes) -> None:
        """Append one Opus packet; its duration comes from its TOC (RFC 6716 s. 3.1)."""
        if self._closed:
            raise ValueError("write_packet() on a closed OggOpusWriter")
        duration = parse_packet(packet).duration
        if self._lacing and (
            self._page_duration >= PAGE_DURATION or len(self._lacing) + len(packet) // 255 >= 255
        ):
            # Start packets on a fresh page when they fit on one, rather than split them.
            self._flush_page()
            self._page_continued = False
        pos = 0
        for value in _lacing_values(len(packet)):
            if len(self._lacing) == 255:
                # Only a packet larger than a page gets here: continue it on the next.
                self._flush_page()
                self._page_continued = True
            self._lacing.append(value)
            self._body += packet[pos : pos + value]
            pos += value
        self._granule += duration
        self._last_duration = duration
        self._packets += 1
        self._page_granule = self._granule
        self._page_duration += duration

    def close(self, *, end_trim: int = 0) -> None:
        """Write the last page with the EOS flag. Does not close the file object.

        `end_trim` ticks are cut from the end of the last packet by giving the final
        page a smaller granule position (RFC 7845 section 4.4), for audio that ends
        mid-frame. It must be shorter than the last packet.
        """
        if self._closed:
            return
        if not 0 <= end_trim < max(self._last_duration, 1):
            raise ValueError(f"end_trim {end_trim} must be within the last packet")
        self._closed = True
        if not self._lacing:
            # No audio at all: an empty EOS page ends the stream cleanly.
            self._emit(_EOS, self._granule, [], b"")
            return
        self._page_granule -= end_trim
        self._granule -= end_trim
        self._flush_page(eos=True)


def _lacing_values(size: int) -> list[int]:
    """RFC 3533 section 5: 255-valued segments, then one < 255 (possibly 0)."""
    return [255] * (size // 255) + [size % 255]


def write_ogg_opus(
    packets: Iterable[bytes],
    out: BinaryIO,
    *,
    channels: int = 1,
    pre_skip: int = 312,
    input_sample_rate: int = 48000,
    serial: int | None = None,
    vendor: str = "voxer-stream",
) -> None:
    """Write a complete Ogg/Opus stream of `packets` to `out` (see `OggOpusWriter`).

    `pre_skip` defaults to 312, libopus' encoder lookahead at 48 kHz, which is what
    `voxer_stream.media.encode` produces. Raises `InvalidOpusPacket` (before writing
    the offending page) if a packet breaks RFC 6716 section 3.4.
    """
    writer = OggOpusWriter(
        out,
        channels=channels,
        pre_skip=pre_skip,
        input_sample_rate=input_sample_rate,
        serial=serial,
        vendor=vendor,
    )
    for packet in packets:
        writer.write_packet(packet)
    writer.close()


class InvalidOggOpus(ValueError):
    """The bytes are not a well-formed single-stream Ogg/Opus file."""


@dataclass(frozen=True, slots=True)
class OggOpusInfo:
    """The headers and end position of an Ogg/Opus stream (RFC 7845 section 5)."""

    version: int
    channels: int
    pre_skip: int
    input_sample_rate: int
    output_gain: int  #: Q7.8 dB
    mapping_family: int
    vendor: str
    comments: tuple[str, ...]
    serial: int
    granule_position: int  #: of the last page; playable samples = this - pre_skip
    page_count: int

    @property
    def duration_seconds(self) -> float:
        return max(self.granule_position - self.pre_skip, 0) / 48000


def _iter_pages(data: bytes) -> Iterable[tuple[int, int, int, int, list[int], bytes]]:
    pos = 0
    n = len(data)
    while pos < n:
        if n - pos < _PAGE_HEADER.size:
            raise InvalidOggOpus(f"truncated page header at offset {pos}")
        magic, version, header_type, granule, serial, sequence, crc, nseg = (
            _PAGE_HEADER.unpack_from(data, pos)
        )
        if magic != b"OggS":
            raise InvalidOggOpus(f"no 'OggS' capture pattern at offset {pos}")
        if version != 0:
            raise InvalidOggOpus(f"unknown Ogg page version {version} at offset {pos}")
        lacing_start = pos + _PAGE_HEADER.size
        lacing = list(data[lacing_start : lacing_start + nseg])
        body_start = lacing_start + nseg
        end = body_start + sum(lacing)
        if len(lacing) != nseg or end > n:
            raise InvalidOggOpus(f"truncated page at offset {pos}")
        page = bytearray(data[pos:end])
        page[22:26] = b"\0\0\0\0"
        if ogg_crc32(page) != crc:
            raise InvalidOggOpus(f"page {sequence} at offset {pos}: CRC mismatch")
        yield header_type, granule, serial, sequence, lacing, data[body_start:end]
        pos = end


def read_ogg_opus(data: bytes) -> tuple[OggOpusInfo, list[bytes]]:
    """Parse an Ogg/Opus file into its headers and its audio packets, verbatim.

    Checks every page CRC and sequence number, a single logical stream, the header
    placement of RFC 7845 section 3, the headers of section 5, and each audio packet
    against RFC 6716 section 3.4. Raises `InvalidOggOpus`, or `InvalidOpusPacket` for
    a bad audio packet.
    """
    packets: list[bytes] = []
    headers: list[bytes] = []
    partial = bytearray()
    in_packet = False
    serial: int | None = None
    expected_sequence = 0
    granule = 0
    ended = False
    for header_type, page_granule, page_serial, sequence, lacing, body in _iter_pages(data):
        if serial is None:
            if not header_type & _BOS:
                raise InvalidOggOpus("the first page lacks the BOS flag")
            serial = page_serial
        elif page_serial != serial:
            raise InvalidOggOpus("more than one logical stream (multiplexed or chained)")
        elif header_type & _BOS:
            raise InvalidOggOpus(f"BOS flag on page {sequence}")
        if ended:
            raise InvalidOggOpus("pages after the EOS page")
        ended = bool(header_type & _EOS)
        if sequence != expected_sequence:
            raise InvalidOggOpus(f"page sequence {sequence}, expected {expected_sequence}")
        expected_sequence += 1
        if bool(header_type & _CONTINUED) != in_packet:
            raise InvalidOggOpus(f"page {sequence}: continuation flag does not match")
        headers_before = len(headers)
        pos = 0
        completed = 0
        last = len(lacing) - 1
        for index, value in enumerate(lacing):
            partial += body[pos : pos + value]
            pos += value
            in_packet = value == 255
            if in_packet:
                continue
            completed += 1
            if len(headers) < 2:
                headers.append(bytes(partial))
                if index != last:
                    # RFC 7845 section 3: OpusHead alone on page 0; OpusTags ends its
                    # page, so audio data starts on a fresh page.
                    raise InvalidOggOpus(f"page {sequence}: a header shares its page")
            else:
                packets.append(bytes(partial))
            partial.clear()
        if sequence == 0 and len(headers) != 1:
            raise InvalidOggOpus("the first page must hold exactly the OpusHead packet")
        if headers_before < 2:
            if page_granule != 0 and not (completed == 0 and page_granule == _NO_GRANULE):
                raise InvalidOggOpus(f"header page {sequence}: granule position must be 0")
        elif completed:
            granule = page_granule
    if serial is None:
        raise InvalidOggOpus("no Ogg pages")
    if in_packet:
        raise InvalidOggOpus("the last packet is truncated")
    if len(headers) < 2:
        raise InvalidOggOpus("missing OpusTags")
    info = _parse_headers(headers[0], headers[1], serial, granule, expected_sequence)
    for index, packet in enumerate(packets):
        try:
            parse_packet(packet)
        except InvalidOpusPacket as exc:
            raise InvalidOpusPacket(
                f"audio packet {index}: {exc.reason}", exc.requirement
            ) from None
    return info, packets


def _parse_headers(head: bytes, tags: bytes, serial: int, granule: int, pages: int) -> OggOpusInfo:
    """RFC 7845 section 5.1 (ID header) and 5.2 (comment header)."""
    if len(head) < 19 or head[:8] != b"OpusHead":
        raise InvalidOggOpus("the first packet is not an OpusHead")
    version, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", head, 8)
    if version >> 4 != 0:
        # Section 5.1: a major version other than 0 (versions 16+) is incompatible.
        raise InvalidOggOpus(f"unsupported OpusHead version {version}")
    if channels == 0:
        raise InvalidOggOpus("OpusHead with zero channels")
    if family == 0 and channels > 2:
        raise InvalidOggOpus("channel mapping family 0 allows 1 or 2 channels")
    if tags[:8] != b"OpusTags":
        raise InvalidOggOpus("the second packet is not an OpusTags")
    pos = 8

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(tags):
            raise InvalidOggOpus("OpusTags field runs past the packet")
        chunk = tags[pos : pos + size]
        pos += size
        return chunk

    def string() -> str:
        (size,) = struct.unpack("<I", take(4))
        try:
            return take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidOggOpus(f"OpusTags string is not UTF-8: {exc}") from None

    vendor = string()
    (count,) = struct.unpack("<I", take(4))
    comments = tuple(string() for _ in range(count))
    return OggOpusInfo(
        version=version,
        channels=channels,
        pre_skip=pre_skip,
        input_sample_rate=rate,
        output_gain=gain,
        mapping_family=family,
        vendor=vendor,
        comments=comments,
        serial=serial,
        granule_position=granule,
        page_count=pages,
    )
