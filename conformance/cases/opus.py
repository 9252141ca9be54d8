"""Section 7: the Opus codec profile, as the server applies it to uploaded packets.

Packets are built by hand from RFC 6716 section 3 (TOC byte, frame packing codes 0-3,
padding), so each invalid one breaks exactly one framing rule R1-R7 and each valid one
sits at an edge the rules allow. Durations are computed here from the spec's table,
not by the reference implementation's parser, and probed through the server's own
arithmetic: ``closed.duration`` and the ``TIMESTAMP_REGRESSION`` bound both depend on
them. The Ogg/Opus export is read with a minimal Ogg page parser (RFC 3533, RFC 7845)
of this module, so byte-for-byte storage is checked without trusting the server's
writer or the reference reader.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from voxer_stream.wire import Ack, Chunk, Close, Closed, Error, Frame, Opened

from ..case import case, expect, fail, note
from ..context import Context, opus_packet
from ..net import TransportFailure
from .listen import Transcript, check_listen_reply, cites, read_until, talking

# -- packets -------------------------------------------------------------------------

#: Frame duration in ticks by TOC configuration (the table of section 7).
_SILK: Final = (480, 960, 1920, 2880)
_HYBRID: Final = (480, 960)
_CELT: Final = (120, 240, 480, 960)


def frame_ticks(config: int) -> int:
    if config < 12:
        return _SILK[config % 4]
    if config < 16:
        return _HYBRID[config % 2]
    return _CELT[config % 4]


def ticks(packet: bytes) -> int:
    """A valid packet's duration by VXS-7-2: frame duration times frame count."""
    toc = packet[0]
    code = toc & 3
    count = (1, 2, 2, 0)[code] or packet[1] & 0x3F
    return frame_ticks(toc >> 3) * count


def toc(config: int, code: int, stereo: bool = False) -> int:
    return config << 3 | int(stereo) << 2 | code


def chunk_ticks(packets: Sequence[bytes]) -> int:
    return sum(ticks(p) for p in packets)


#: Packets that break one rule each (R1 is VXS-4.2-4's empty byte string, see below).
INVALID: Final[dict[str, tuple[tuple[str, bytes], ...]]] = {
    "R2": (
        ("code 0, one frame of 1276 bytes", b"\xf8" + bytes(1276)),
        ("code 1, two frames of 1276 bytes", b"\xf9" + bytes(2552)),
        ("code 2, second frame of 1276 bytes", b"\xfa\x01" + bytes(1) + bytes(1276)),
        ("code 3 CBR, M=1, a frame of 1276 bytes", b"\xfb\x01" + bytes(1276)),
        ("code 3 CBR, M=2, frames of 1276 bytes", b"\xfb\x02" + bytes(2552)),
        ("code 3 VBR, M=2, last frame of 1276 bytes", b"\xfb\x82\x01" + bytes(1277)),
    ),
    "R3": (
        ("code 1 of even length 4", b"\xf9" + bytes(3)),
        ("code 1 of even length 2", b"\xf9\x00"),
        ("code 1 of even length 1276", b"\xf9" + bytes(1275)),
    ),
    "R4": (
        ("code 2 without a frame length", b"\xfa"),
        ("code 2 with a truncated two-byte length", b"\xfa\xfc"),
        ("code 2, first frame 10 bytes, 5 remain", b"\xfa\x0a" + bytes(5)),
        ("code 2, first frame 300 bytes, 100 remain", b"\xfa\xfc\x0c" + bytes(100)),
    ),
    "R5": (
        ("code 3 with M=0", b"\xfb\x00"),
        ("code 3 without a frame count byte", b"\xfb"),
        ("code 3, 7 frames of 20 ms (140 ms)", b"\xfb\x07" + bytes(7)),
        ("code 3, 3 frames of 60 ms (180 ms)", bytes([toc(3, 3), 3]) + bytes(3)),
        ("code 3, 49 frames of 2.5 ms (122.5 ms)", bytes([toc(16, 3), 49]) + bytes(49)),
        ("code 3, M=63 of 10 ms", bytes([toc(0, 3), 63]) + bytes(63)),
    ),
    "R6": (
        ("code 3 CBR, M=3, 4 bytes of frames", b"\xfb\x03" + bytes(4)),
        ("code 3 CBR, M=2, 3 bytes of frames", b"\xfb\x02" + bytes(3)),
        ("code 3 CBR, padding 200 > the 10 bytes left", b"\xfb\x41\xc8" + bytes(10)),
        ("code 3 CBR, padding length chain runs off the end", b"\xfb\x41\xff"),
    ),
    "R7": (
        ("code 3 VBR, M=3, one of two frame lengths", b"\xfb\x83\x05"),
        ("code 3 VBR, M=3, lengths 10+10 with 5 bytes left", b"\xfb\x83\x0a\x0a" + bytes(5)),
        ("code 3 VBR, padding chain runs off the end", b"\xfb\xc2\xff\xff"),
        ("code 3 VBR, padding 5 > the 4 bytes left", b"\xfb\xc2\x05\x01" + bytes(3)),
        ("code 3 VBR, a two-byte length truncated", b"\xfb\x82\xfc"),
    ),
}

#: Packets at the edges the rules allow (VXS-7-1), each with its duration in ticks.
VALID_EDGES: Final = (
    ("TOC byte alone (a 0-byte frame)", b"\xf8"),
    ("code 0, a 1275-byte frame", b"\xf8" + bytes(range(256)) * 4 + bytes(251)),
    ("code 0, 510 bytes (a lacing multiple of 255)", b"\xf8" + bytes(509)),
    ("code 1, two 0-byte frames", b"\xf9"),
    ("code 1, two 1275-byte frames", b"\xf9" + b"\x55" * 2550),
    ("code 2, a 1-byte length", b"\xfa\x02" + b"ab" + b"cde"),
    ("code 2, first frame empty", b"\xfa\x00" + b"abcd"),
    ("code 2, two 1275-byte frames", b"\xfa\xff\xff" + b"\x33" * 2550),
    ("code 3 CBR, M=3 (the spec's example)", bytes.fromhex("fb03aaaabbbbcccc")),
    ("code 3 CBR with 3 bytes of padding", b"\xfb\x42\x03" + b"abcd" + b"\x00\x00\x07"),
    ("code 3 CBR with a 255-byte padding chain", b"\xfb\x41\xff\x01" + b"xy" + b"\x01" * 255),
    ("code 3 VBR, M=3", b"\xfb\x83\x01\x02" + b"a" + b"bb" + b"ccc"),
    ("code 3 VBR with padding", b"\xfb\xc2\x02\x01" + b"a" + b"bbb" + b"\x00\x09"),
    ("code 3 VBR with a two-byte length", b"\xfb\x82\xfc\x0c" + b"\x11" * 300 + b"\x22" * 5),
    ("code 3, 48 frames of 2.5 ms (120 ms)", bytes([toc(16, 3), 48]) + bytes(range(48))),
    ("code 3, 2 frames of 60 ms (120 ms)", bytes([toc(3, 3), 2]) + b"ab"),
    ("stereo, code 0", bytes([toc(31, 0, stereo=True)]) + b"stereo"),
)

#: One packet per frame duration and per packing code (VXS-7-2): (what, packets of a chunk).
DURATIONS: Final[tuple[tuple[str, tuple[bytes, ...]], ...]] = (
    ("CELT 2.5 ms (config 16)", (bytes([toc(16, 0)]) + b"\x01\x02",)),
    ("CELT 5 ms (config 21)", (bytes([toc(21, 0)]) + b"\x03",)),
    ("SILK 10 ms (config 0)", (bytes([toc(0, 0)]) + b"\x04",)),
    ("Hybrid 10 ms (config 12)", (bytes([toc(12, 0)]) + b"\x05",)),
    ("CELT 10 ms (config 26)", (bytes([toc(26, 0)]) + b"\x06",)),
    ("SILK 20 ms (config 9)", (bytes([toc(9, 0)]) + b"\x07",)),
    ("SILK 40 ms (config 6)", (bytes([toc(6, 0)]) + b"\x08",)),
    ("SILK 60 ms (config 11)", (bytes([toc(11, 0)]) + b"\x09",)),
    ("code 1, 2 x 40 ms (config 2)", (bytes([toc(2, 1)]) + b"\x0a\x0b",)),
    ("code 2, 2 x 10 ms hybrid (config 14)", (bytes([toc(14, 2), 1]) + b"\x0c\x0d\x0e",)),
    ("code 3 CBR, 5 x 5 ms (config 29)", (bytes([toc(29, 3), 5]) + bytes(5),)),
    ("code 3 VBR, 4 x 2.5 ms (config 24)", (bytes([toc(24, 3), 0x84, 1, 1, 1]) + bytes(4),)),
    ("code 3, 2 x 60 ms (config 7)", (bytes([toc(7, 3), 2]) + b"\x0f\x10",)),
    ("code 3, 6 x 20 ms (config 31)", (bytes([toc(31, 3), 6]) + bytes(6),)),
    (
        "one chunk of 10, 20 and 60 ms packets",
        (bytes([toc(0, 0)]) + b"a", bytes([toc(31, 0)]) + b"b", bytes([toc(3, 0)]) + b"c"),
    ),
)


def closed_of(frames: Sequence[Frame]) -> Closed | None:
    return next((f for f in frames if isinstance(f, Closed)), None)


# -- 7-1 invalid packets ------------------------------------------------------------------

#: How long a refusal may take once the refused chunk was sent.
PROMPT: Final = 2.0


async def _upload_until_error(
    ctx: Context, frames: Sequence[Frame], bad: Chunk, *, label: str, rid: str
) -> list[Frame]:
    """Upload ``frames``, wait until they are stored, then ``bad``; the error refusing it.

    Waiting for the ack of the chunks before ``bad`` makes them durable, so the resumed
    upload can tell what the refusal left stored. An ack of ``bad`` means it was
    accepted, which fails ``rid`` at once rather than waiting for an error that will
    never come.
    """
    got: list[Frame] = []
    async with ctx.upload(ctx.alice.token) as exchange:
        await exchange.send(*frames)
        await ctx.wait_acked(exchange, bad.seq - 1)
        await exchange.send(bad)
        while True:
            try:
                frame = await exchange.frame(within=PROMPT)
            except TransportFailure as exc:
                fail(rid, f"{label}: chunk {bad.seq} was not refused ({exc}; {_names(got)})")
            if frame is None:
                fail(rid, f"{label}: the response ended without an error: {_names(got)}")
            got.append(frame)
            if isinstance(frame, Error):
                return got
            if isinstance(frame, Ack) and frame.seq >= bad.seq:
                fail(rid, f"{label}: chunk {bad.seq} was accepted (ack {frame.seq})")


def _names(frames: Sequence[Frame]) -> list[str]:
    return [f.TYPE for f in frames]


async def _refused_chunk(
    ctx: Context,
    thread: str,
    label: str,
    packets: tuple[bytes, ...],
    *,
    at: int,
    code: int,
    rid: str,
) -> None:
    """Chunk ``at`` carries ``packets``: refused with ``code``, nothing of it stored.

    The message is resumed afterwards with a different, valid chunk ``at``: a server
    that stored any of the refused chunk says ``next_seq`` > ``at`` or refuses the new
    chunk as a conflict, and a listener would see the wrong packets.
    """
    msg = ctx.msg_id()
    good = [Chunk(seq=s, ts=s * 960, packets=(opus_packet(s, b"good"),)) for s in range(at)]
    bad = Chunk(seq=at, ts=at * 960, packets=packets)
    frames = await _upload_until_error(
        ctx, [ctx.open_frame(thread, msg), *good], bad, label=label, rid=rid
    )
    error = frames[-1]
    assert isinstance(error, Error)
    expect(
        error.code == code,
        rid,
        f"{label}: error {error.code} {error.name}, expected {code}",
    )
    if code == 404:
        expect(error.seq == at, rid, f"{label}: INVALID_OPUS with seq {error.seq}, expected {at}")
    fresh = Chunk(seq=at, ts=at * 960, packets=(opus_packet(at, b"fresh"),))
    resumed = await ctx.upload_all(
        ctx.alice.token, [ctx.open_frame(thread, msg), fresh, Close(chunks=at + 1)]
    )
    opened = resumed.frames[0] if resumed.frames else None
    expect(
        isinstance(opened, Opened) and opened.next_seq == at,
        "VXS-5.3-5",
        f"{label}: after the refusal the message reopened with {opened!r}, expected next_seq {at}",
    )
    closed = closed_of(resumed.frames)
    expect(
        closed is not None and closed.chunks == at + 1,
        "VXS-5.3-5",
        f"{label}: a valid chunk {at} after the refused one was answered with "
        f"{[f.TYPE for f in resumed.frames]} ({resumed.error})",
    )
    sent = {c.seq: c for c in (*good, fresh)}
    transcript = Transcript(
        msg, sent, start_seq=0, end=(at + 1, (at + 1) * 960), name=f"{label}: listener"
    )
    check_listen_reply(await ctx.listen_all(ctx.bob.token, msg), transcript, "VXS-5.3-5")


def _rule_case(rule: str) -> None:
    variants = INVALID[rule]

    async def run(ctx: Context) -> None:
        thread = await ctx.thread()
        for i, (label, packet) in enumerate(variants):
            # Alternate: the bad packet alone in chunk 0, or after a valid packet in chunk 1.
            at = i % 2
            packets = (packet,) if at == 0 else (opus_packet(99, b"first"), packet)
            await _refused_chunk(
                ctx, thread, f"{rule}: {label}", packets, at=at, code=404, rid="VXS-7-1"
            )

    case(
        f"7/invalid-{rule.lower()}",
        f"a packet that breaks RFC 6716 rule {rule} is refused with INVALID_OPUS",
        requirements=cites("VXS-7-1", "VXS-5.3-5"),
        accepts=f"each of {len(variants)} packets breaking {rule} ("
        + "; ".join(label for label, _ in variants)
        + "), alone in chunk 0 or after a valid packet in chunk 1: an error frame 404 "
        "INVALID_OPUS with the chunk's seq, no ack of it; the message then reopens with "
        "next_seq at that chunk and takes a valid chunk there; a listener gets only the "
        "valid chunks",
    )(run)


@case(
    "7/invalid-r1",
    "an empty packet (RFC 6716 rule R1) is refused, as a frame that breaks the schema",
    requirements=cites("VXS-7-1", "VXS-4.2-4", "VXS-5.3-5"),
    accepts="an empty byte string as the only packet of chunk 0, and after a valid packet "
    "in chunk 1: error 102 INVALID_FRAME (a packet is a non-empty byte string, VXS-4.2-4, "
    "checked before the Opus rules), no ack of the chunk, the message reopens at that "
    "chunk and a listener gets only the valid chunks",
)
async def invalid_r1(ctx: Context) -> None:
    thread = await ctx.thread()
    await _refused_chunk(ctx, thread, "R1, chunk 0", (b"",), at=0, code=102, rid="VXS-4.2-4")
    await _refused_chunk(
        ctx, thread, "R1, chunk 1", (opus_packet(1), b""), at=1, code=102, rid="VXS-4.2-4"
    )


for _rule in INVALID:
    _rule_case(_rule)


@case(
    "7/valid-edges",
    "packets at the edges of RFC 6716 section 3 are accepted and kept byte for byte",
    requirements=cites("VXS-7-1", "VXS-7-2"),
    accepts="17 valid packets (a TOC byte alone, 1275-byte frames in codes 0, 1 and 2, code "
    "3 CBR and VBR with and without padding, a 255-byte padding chain, a two-byte VBR "
    "length, 120 ms packets, stereo), one chunk each at contiguous media times: every "
    "chunk acknowledged, closed with 17 chunks and the summed duration, and a listener "
    "gets each packet byte for byte",
)
async def valid_edges(ctx: Context) -> None:
    async with talking(ctx) as talker:
        ts = 0
        for seq, (label, packet) in enumerate(VALID_EDGES):
            chunk = Chunk(seq=seq, ts=ts, packets=(packet,))
            ts += ticks(packet)
            await talker.send(chunk, wait=False)
            try:
                await talker.wait_ack(seq)
            except TransportFailure as exc:  # the server refused it: say which packet
                fail("VXS-7-1", f"{label} ({len(packet)} bytes) was refused: {exc}")
        closed = await talker.close()
    expect(
        (closed.chunks, closed.duration) == (len(VALID_EDGES), ts),
        "VXS-7-2",
        f"closed ({closed.chunks} chunks, {closed.duration} ticks), expected "
        f"({len(VALID_EDGES)}, {ts})",
    )
    transcript = Transcript(talker.msg, talker.sent, start_seq=0, end=(len(VALID_EDGES), ts))
    check_listen_reply(await ctx.listen_all(ctx.bob.token, talker.msg), transcript, "VXS-7-1")


# -- 7-2 durations ----------------------------------------------------------------------------


@case(
    "7/durations",
    "a packet's duration is its frame duration by TOC configuration times its frame count",
    requirements=cites("VXS-7-2", "VXS-2.2-2"),
    accepts="for frames of 2.5, 5, 10, 20, 40 and 60 ms in SILK, Hybrid and CELT "
    "configurations, codes 1, 2 and 3 (CBR and VBR, several frames) and a chunk of three "
    "packets: a next chunk at ts = duration - 1 is refused with 406 TIMESTAMP_REGRESSION; "
    "the message then closes with duration = the chunk's duration; all of them in one "
    "message at contiguous times are accepted and closed and end carry the summed duration",
)
async def durations(ctx: Context) -> None:
    thread = await ctx.thread()
    probe = opus_packet(7)
    for label, packets in DURATIONS:
        d = chunk_ticks(packets)
        msg = ctx.msg_id()
        first = Chunk(seq=0, ts=0, packets=packets)
        overlap = Chunk(seq=1, ts=d - 1, packets=(probe,))
        what = f"{label} ({d} ticks), a next chunk at ts {d - 1}"
        frames = await _upload_until_error(
            ctx, [ctx.open_frame(thread, msg), first], overlap, label=what, rid="VXS-7-2"
        )
        error = frames[-1]
        assert isinstance(error, Error)
        expect(
            error.code == 406,
            "VXS-7-2",
            f"{what}: error {error.code} {error.name}, expected 406 TIMESTAMP_REGRESSION",
        )
        closing = await ctx.upload_all(
            ctx.alice.token, [ctx.open_frame(thread, msg), Close(chunks=1)]
        )
        closed = closed_of(closing.frames)
        expect(
            closed is not None and closed.duration == d,
            "VXS-7-2",
            f"{label}: closed {closed} ({closing.error}), expected duration {d}",
        )
    async with talking(ctx, thread) as talker:
        ts = 0
        for seq, (_, packets) in enumerate(DURATIONS):
            await talker.send(Chunk(seq=seq, ts=ts, packets=packets))
            ts += chunk_ticks(packets)
        closed = await talker.close()
    expect(
        closed.duration == ts,
        "VXS-7-2",
        f"closed.duration {closed.duration}, expected {ts}",
    )
    transcript = Transcript(
        talker.msg, talker.sent, start_seq=0, end=(len(DURATIONS), ts), error_id="VXS-7-2"
    )
    check_listen_reply(await ctx.listen_all(ctx.bob.token, talker.msg), transcript, "VXS-7-2")


@case(
    "7/talker-20ms",
    "talkers should send one 20 ms packet per chunk",
    requirements=("VXS-7-3",),
    accepts="a message of 20 ms single-packet chunks is accepted: each chunk acknowledged, "
    "closed with 5 chunks and 4800 ticks (what talkers send is not checkable on a server)",
)
async def talker_20ms(ctx: Context) -> None:
    note("VXS-7-3 is about talkers; the server side only has to accept such chunks")
    async with talking(ctx) as talker:
        for chunk in talker.make(5):
            try:
                await talker.send(chunk)
            except TransportFailure as exc:
                fail("VXS-7-3", f"a 20 ms single-packet chunk {chunk.seq} was refused: {exc}")
        closed = await talker.close()
    expect(
        (closed.chunks, closed.duration) == (5, 5 * 960),
        "VXS-7-3",
        f"closed {closed}, expected 5 chunks of 960 ticks",
    )


# -- 7-4 byte for byte ---------------------------------------------------------------------


class OggError(Exception):
    """The bytes are not an Ogg stream whose packets can be read back."""


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_CRC: Final = _crc_table()
_PAGE: Final = struct.Struct("<4sBBqIIIB")


def ogg_crc(data: bytes) -> int:
    """RFC 3533 section 6: CRC-32, polynomial 0x04c11db7, direct, init 0, no final xor."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ byte]
    return crc


def ogg_packets(data: bytes) -> tuple[list[bytes], list[str]]:
    """The packets of a single-stream Ogg file, and what in its page structure is odd.

    Raises ``OggError`` when packets cannot be read back (no capture pattern, a
    truncated page, a wrong checksum, a packet left unfinished).
    """
    packets: list[bytes] = []
    oddities: list[str] = []
    partial = bytearray()
    pos = 0
    page_no = 0
    serial: int | None = None
    eos = False
    while pos < len(data):
        if len(data) - pos < _PAGE.size:
            raise OggError(f"a truncated page header at byte {pos}")
        magic, version, flags, _granule, page_serial, sequence, crc, segments = _PAGE.unpack_from(
            data, pos
        )
        if magic != b"OggS" or version != 0:
            raise OggError(f"no Ogg page (capture pattern, version 0) at byte {pos}")
        lacing = data[pos + _PAGE.size : pos + _PAGE.size + segments]
        start = pos + _PAGE.size + segments
        end = start + sum(lacing)
        if len(lacing) < segments or end > len(data):
            raise OggError(f"page {page_no} is truncated")
        page = bytearray(data[pos:end])
        page[22:26] = bytes(4)
        if ogg_crc(bytes(page)) != crc:
            raise OggError(f"page {page_no} has a wrong checksum")
        if serial is None:
            serial = page_serial
        if page_serial != serial:
            oddities.append(f"page {page_no} has another stream serial")
        if sequence != page_no:
            oddities.append(f"page {page_no} has sequence number {sequence}")
        if bool(flags & 0x02) != (page_no == 0):
            oddities.append(f"page {page_no}: BOS flag {bool(flags & 0x02)}")
        if bool(flags & 0x01) != bool(partial):
            oddities.append(f"page {page_no}: continuation flag disagrees with the lacing")
        if eos:
            oddities.append(f"page {page_no} follows the EOS page")
        eos = bool(flags & 0x04)
        offset = start
        for value in lacing:
            partial += data[offset : offset + value]
            offset += value
            if value < 255:
                packets.append(bytes(partial))
                partial.clear()
        pos = end
        page_no += 1
    if partial:
        raise OggError("the last packet is unfinished")
    if not eos:
        oddities.append("the last page has no EOS flag")
    return packets, oddities


async def _exported(ctx: Context, msg: str, label: str) -> list[bytes]:
    """The audio packets of ``GET /v1/messages/{msg}/audio.opus``."""
    reply = await ctx.rest("GET", f"/v1/messages/{msg}/audio.opus", token=ctx.bob.token)
    expect(reply.status == 200, "VXS-7-4", f"{label}: export answered HTTP {reply.status}")
    kind = reply.headers.get("content-type", "")
    if not kind.startswith("audio/ogg"):
        note(f"{label}: the export's content-type is {kind!r}, not audio/ogg")
    try:
        packets, oddities = ogg_packets(reply.content)
    except OggError as exc:
        fail("VXS-7-4", f"{label}: the export is not a readable Ogg stream: {exc}")
    for oddity in oddities:
        note(f"{label}: {oddity} (RFC 3533)")
    expect(
        len(packets) >= 2
        and packets[0].startswith(b"OpusHead")
        and packets[1].startswith(b"OpusTags"),
        "VXS-7-4",
        f"{label}: the export does not start with the OpusHead and OpusTags headers",
    )
    return packets[2:]


def _compare(got: list[bytes], sent: list[bytes], label: str) -> None:
    expect(
        len(got) == len(sent),
        "VXS-7-4",
        f"{label}: {len(got)} audio packets, {len(sent)} were uploaded",
    )
    for i, (a, b) in enumerate(zip(got, sent, strict=True)):
        expect(
            a == b,
            "VXS-7-4",
            f"{label}: packet {i} differs ({len(a)} bytes, {len(b)} uploaded; "
            f"first bytes {a[:8].hex()} vs {b[:8].hex()})",
        )


@case(
    "7/byte-for-byte",
    "listeners and the stored message carry the talker's packets byte for byte",
    requirements=cites("VXS-7-4"),
    accepts="a message of varied packets (all the valid edges, padding included, in chunks "
    "of 1 to 5 packets): a live listener, a listener after the close and the audio.opus "
    "export (Ogg pages read back, after the OpusHead and OpusTags packets) carry exactly "
    "the uploaded packets in order; the export of the message while still live carries "
    "exactly the acknowledged ones",
)
async def byte_for_byte(ctx: Context) -> None:
    packets = [p for _, p in VALID_EDGES] + [opus_packet(i, bytes([i]) * i) for i in range(8)]
    sizes = (1, 5, 2, 4, 3, 5, 5)  # 25 packets
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    groups = [packets[i : i + n] for i, n in zip(starts, sizes, strict=True)]
    async with talking(ctx) as talker:
        ts = 0
        chunks = []
        for seq, group in enumerate(groups):
            chunks.append(Chunk(seq=seq, ts=ts, packets=tuple(group)))
            ts += chunk_ticks(group)
        async with ctx.listen(ctx.bob.token, talker.msg) as exchange:
            live = Transcript(
                talker.msg, talker.sent, start_seq=0, live="any", name="live listener"
            )
            await talker.send(*chunks[:3])
            exported = await _exported(ctx, talker.msg, "export while live")
            _compare(exported, [p for c in chunks[:3] for p in c.packets], "export while live")
            await talker.send(*chunks[3:])
            await talker.close()
            live.expected_end = (len(chunks), ts)
            await read_until(
                exchange,
                live,
                lambda t: t.ended is not None,
                within=5.0,
                rid="VXS-7-4",
                what="waiting for end",
            )
    later = Transcript(talker.msg, talker.sent, start_seq=0, end=(len(chunks), ts), name="later")
    check_listen_reply(await ctx.listen_all(ctx.bob.token, talker.msg), later, "VXS-7-4")
    exported = await _exported(ctx, talker.msg, "export when closed")
    _compare(exported, packets, "export when closed")
