"""Media at the edges of voxer-stream: Opus packet rules, encoding, Ogg/Opus files,
and the images of image messages (`image`: checks and thumbnails, with Pillow).

Layering: this package imports only the standard library, PyAV (`av`) and Pillow
(`image` only, imported by whoever needs it, not from here). The wire
and store layers rely on `opus.parse_packet` for the live-path validity check, and
on the Ogg writer to export stored messages.

`opus` and `ogg` are pure Python; `encode` loads PyAV, so it is imported lazily by
whoever needs it rather than from here.
"""

from .ogg import (
    InvalidOggOpus,
    OggOpusInfo,
    OggOpusWriter,
    read_ogg_opus,
    write_ogg_opus,
)
from .opus import (
    InvalidOpusPacket,
    OpusPacketInfo,
    packet_duration,
    packets_duration,
    parse_packet,
)

__all__ = [
    "InvalidOggOpus",
    "InvalidOpusPacket",
    "OggOpusInfo",
    "OggOpusWriter",
    "OpusPacketInfo",
    "packet_duration",
    "packets_duration",
    "parse_packet",
    "read_ogg_opus",
    "write_ogg_opus",
]
