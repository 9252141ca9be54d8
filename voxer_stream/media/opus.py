"""Opus packet validation, per RFC 6716 section 3 ("Internal Framing").

voxer-stream never decodes audio on the live path, but it must not store or fan out
bytes that no Opus decoder can accept, and it must know how much time every packet
covers (the 48 kHz media clock, ticks are 1/48000 s). Both come from the framing layer
alone: the TOC byte (section 3.1), the frame packing code (section 3.2) and the rules
every well-formed packet obeys (requirements R1-R7 of section 3.4). Nothing here looks
inside the SILK or CELT payload; that would need a full decoder, and the framing rules
are what RFC 6716 asks a receiver to enforce before decoding.

`parse_packet` runs once per packet on the live path, so it is written for speed: the
result for each (TOC, frame count) pair is built once at import time and shared, and
the checks are plain integer arithmetic on `bytes` indexing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_PACKET_DURATION",
    "InvalidOpusPacket",
    "OpusPacketInfo",
    "packet_duration",
    "packets_duration",
    "parse_packet",
]

#: RFC 6716 section 3.2.1: a frame length is at most 1275 bytes (R2), the largest
#: value the two-byte length code can express (255 * 4 + 255).
MAX_FRAME_BYTES = 1275

#: RFC 6716 section 3.2.5 / R5: a packet carries at most 120 ms of audio (48 kHz ticks).
MAX_PACKET_DURATION = 5760


class InvalidOpusPacket(ValueError):
    """The bytes are not an Opus packet that RFC 6716 section 3 allows.

    `requirement` names the rule broken ("R1".."R7" for the section 3.4 list, or the
    subsection otherwise), so logs and protocol errors can cite it.
    """

    def __init__(self, reason: str, requirement: str) -> None:
        super().__init__(f"invalid Opus packet ({requirement}): {reason}")
        self.reason = reason
        self.requirement = requirement


@dataclass(frozen=True, slots=True)
class OpusPacketInfo:
    """What the framing layer of one Opus packet says (RFC 6716 section 3.1, 3.2).

    Durations are in 48 kHz ticks whatever the coded bandwidth: Opus' media clock is
    always 48 kHz (RFC 7587 section 4.1 for RTP, RFC 7845 section 4 for Ogg).
    """

    config: int  #: TOC configuration number, 0..31 (Table 2)
    mode: str  #: "silk", "hybrid" or "celt"
    bandwidth: str  #: "NB", "MB", "WB", "SWB" or "FB" (Table 1)
    stereo: bool  #: the TOC "s" bit
    frame_count: int  #: frames in the packet, 1..48
    frame_duration: int  #: ticks per frame: 120, 240, 480, 960, 1920 or 2880
    duration: int  #: frame_count * frame_duration, at most 5760 (120 ms)


def _config_table() -> list[tuple[str, str, int]]:
    """RFC 6716 section 3.1, Table 2: config -> (mode, bandwidth, frame ticks)."""
    silk = (480, 960, 1920, 2880)  # 10, 20, 40, 60 ms
    hybrid = (480, 960)  # 10, 20 ms
    celt = (120, 240, 480, 960)  # 2.5, 5, 10, 20 ms
    table: list[tuple[str, str, int]] = []
    for bw in ("NB", "MB", "WB"):
        table += [("silk", bw, d) for d in silk]
    for bw in ("SWB", "FB"):
        table += [("hybrid", bw, d) for d in hybrid]
    for bw in ("NB", "WB", "SWB", "FB"):
        table += [("celt", bw, d) for d in celt]
    assert len(table) == 32
    return table


_CONFIGS = _config_table()

# _INFO[toc >> 2][count]: every OpusPacketInfo a valid packet can produce, built once so
# the hot path allocates nothing. Index 0 and counts beyond 120 ms stay None.
_INFO: list[list[OpusPacketInfo | None]] = []
for _toc_hi in range(64):
    _config, _stereo = _toc_hi >> 1, bool(_toc_hi & 1)
    _mode, _bw, _ticks = _CONFIGS[_config]
    _INFO.append(
        [
            OpusPacketInfo(_config, _mode, _bw, _stereo, _m, _ticks, _m * _ticks)
            if 0 < _m * _ticks <= MAX_PACKET_DURATION
            else None
            for _m in range(64)
        ]
    )
del _toc_hi, _config, _stereo, _mode, _bw, _ticks


def parse_packet(packet: bytes) -> OpusPacketInfo:
    """Validate one Opus packet's framing and describe it.

    Enforces RFC 6716 section 3.4 requirements R1-R7 together with the length codings
    of section 3.2.1 and the code 3 padding chain of section 3.2.5. Raises
    `InvalidOpusPacket` for anything else, and never any other exception for any
    `bytes` input (a property test checks this).
    """
    n = len(packet)
    if n == 0:
        # [R1] Packets are at least one byte.
        raise InvalidOpusPacket("empty packet", "R1")
    toc = packet[0]
    code = toc & 3
    infos = _INFO[toc >> 2]
    if code == 0:
        # Section 3.2.2: one frame of N-1 bytes; [R2] bounds the implicit length.
        if n - 1 > MAX_FRAME_BYTES:
            raise InvalidOpusPacket(f"code 0 frame of {n - 1} bytes > 1275", "R2")
        info = infos[1]
    elif code == 1:
        # Section 3.2.3: two frames of equal size (N-1)/2.
        if not n & 1:
            # [R3] Code 1 packets have an odd total length N.
            raise InvalidOpusPacket(f"code 1 packet of even length {n}", "R3")
        if (n - 1) >> 1 > MAX_FRAME_BYTES:
            raise InvalidOpusPacket(f"code 1 frames of {(n - 1) >> 1} bytes > 1275", "R2")
        info = infos[2]
    elif code == 2:
        # Section 3.2.4: two frames, the first one's length coded as in 3.2.1.
        if n < 2:
            raise InvalidOpusPacket("code 2 packet without a frame length", "R4")
        first = packet[1]
        header = 2
        if first >= 252:
            if n < 3:
                raise InvalidOpusPacket("code 2 packet with a truncated frame length", "R4")
            first += packet[2] * 4
            header = 3
        rest = n - header - first
        if rest < 0:
            # [R4] ... that length is no larger than the bytes remaining in the packet.
            raise InvalidOpusPacket(f"code 2 first frame of {first} bytes exceeds the packet", "R4")
        if rest > MAX_FRAME_BYTES:
            raise InvalidOpusPacket(f"code 2 second frame of {rest} bytes > 1275", "R2")
        info = infos[2]
    else:
        return _parse_code3(packet, n, infos)
    assert info is not None  # counts 1 and 2 are valid for every config
    return info


def _parse_code3(packet: bytes, n: int, infos: list[OpusPacketInfo | None]) -> OpusPacketInfo:
    """Section 3.2.5: a frame count byte, optional padding, CBR or VBR frames."""
    if n < 2:
        # [R6]/[R7]: the frame count byte must be present.
        raise InvalidOpusPacket("code 3 packet without a frame count byte", "R6")
    fc = packet[1]
    vbr = fc & 0x80
    m = fc & 0x3F
    info = infos[m]
    if info is None:
        # [R5] Code 3 packets contain at least one frame, but no more than 120 ms.
        raise InvalidOpusPacket(f"code 3 packet with {m} frames", "R5")
    pos = 2
    padding = 0  # trailing padding bytes (excludes the length bytes themselves)
    if fc & 0x40:
        # Padding length chain: 255 means 254 bytes and another length byte follows.
        while True:
            if pos >= n:
                raise InvalidOpusPacket(
                    "code 3 padding length runs past the packet", "R7" if vbr else "R6"
                )
            p = packet[pos]
            pos += 1
            if p == 255:
                padding += 254
            else:
                padding += p
                break
    if vbr:
        # M-1 explicit frame lengths, the last frame takes what is left.
        total = 0
        for _ in range(m - 1):
            if pos >= n:
                raise InvalidOpusPacket("code 3 VBR frame lengths run past the packet", "R7")
            length = packet[pos]
            pos += 1
            if length >= 252:
                if pos >= n:
                    raise InvalidOpusPacket(
                        "code 3 VBR frame length truncated by the packet end", "R7"
                    )
                length += packet[pos] * 4
                pos += 1
            total += length
        last = n - pos - padding - total
        if last < 0:
            # [R7] header bytes + first M-1 frames + padding fit in the packet.
            raise InvalidOpusPacket("code 3 VBR frames and padding exceed the packet", "R7")
        if last > MAX_FRAME_BYTES:
            raise InvalidOpusPacket(f"code 3 VBR last frame of {last} bytes > 1275", "R2")
    else:
        # [R6] P <= N-2 and (N-2-P) is a non-negative multiple of M.
        body = n - pos - padding
        if body < 0:
            raise InvalidOpusPacket("code 3 CBR padding exceeds the packet", "R6")
        if body % m:
            raise InvalidOpusPacket(
                f"code 3 CBR payload of {body} bytes is not a multiple of {m} frames", "R6"
            )
        if body // m > MAX_FRAME_BYTES:
            raise InvalidOpusPacket(f"code 3 CBR frames of {body // m} bytes > 1275", "R2")
    return info


def packet_duration(packet: bytes) -> int:
    """Duration of one packet in 48 kHz ticks; raises `InvalidOpusPacket` if invalid."""
    return parse_packet(packet).duration


def packets_duration(packets: Iterable[bytes]) -> int:
    """Total duration of a packet sequence in 48 kHz ticks (each packet validated)."""
    return sum(parse_packet(p).duration for p in packets)
