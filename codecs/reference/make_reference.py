"""Regenerate the reference media in this directory.

    PYTHONPATH=. .venv/bin/python codecs/reference/make_reference.py

Writes:
- chirp16k.wav: 3 s, mono, 16 kHz, 16-bit, made with the stdlib `wave` module: a
  speech-like signal (a 150-300 Hz glottal-ish pitch sweep with two formant-ish
  harmonics, gated at a 4 Hz syllable rate), so the encoder sees voiced segments and
  pauses, and the resampler has to go 16 -> 48 kHz.
- chirp16k.opus: our exporter's Ogg/Opus of the packets `encode_file` makes from it.
- chirp16k.packets.json: packet count, durations, and the hex of the first 10 packets.

libopus output can differ between libopus builds and CPUs (float code, SIMD dispatch),
so tests check these files for self-consistency (reader, writer, parser) and only the
packet count against a fresh encode, never the packet bytes.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import sys
import wave
from pathlib import Path

import av

from voxer_stream.media.encode import encode_file
from voxer_stream.media.ogg import read_ogg_opus, write_ogg_opus
from voxer_stream.media.opus import parse_packet

HERE = Path(__file__).resolve().parent
RATE = 16000
SECONDS = 3
SERIAL = 0x766F7872  # "voxr": fixed so the file is reproducible from the packets


def chirp_samples() -> array.array[int]:
    out = array.array("h")
    phase = 0.0
    for i in range(RATE * SECONDS):
        t = i / RATE
        pitch = 150 + 150 * (0.5 + 0.5 * math.sin(2 * math.pi * 0.7 * t))
        phase += 2 * math.pi * pitch / RATE
        voice = math.sin(phase) + 0.5 * math.sin(3 * phase) + 0.25 * math.sin(7 * phase)
        # Syllables: 4 per second, each a raised-cosine burst over 70 % of its slot.
        slot = (t * 4) % 1.0
        gate = 0.5 - 0.5 * math.cos(2 * math.pi * slot / 0.7) if slot < 0.7 else 0.0
        out.append(round(9000 * gate * voice))
    if sys.byteorder == "big":
        out.byteswap()
    return out


def main() -> None:
    wav = HERE / "chirp16k.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(chirp_samples().tobytes())
    packets = encode_file(wav)
    ogg = HERE / "chirp16k.opus"
    with ogg.open("wb") as f:
        write_ogg_opus(packets, f, serial=SERIAL, input_sample_rate=RATE)
    info, back = read_ogg_opus(ogg.read_bytes())
    assert back == packets
    listing = {
        "source": wav.name,
        "ogg": ogg.name,
        "ogg_sha256": hashlib.sha256(ogg.read_bytes()).hexdigest(),
        "encoder": f"PyAV {av.__version__}, libavcodec "
        + ".".join(map(str, av.library_versions["libavcodec"])),
        "frame_ms": 20,
        "bitrate": 32000,
        "pre_skip": info.pre_skip,
        "serial": SERIAL,
        "packet_count": len(packets),
        "total_duration": sum(parse_packet(p).duration for p in packets),
        "durations": sorted({parse_packet(p).duration for p in packets}),
        "toc_bytes": sorted({f"{p[0]:02x}" for p in packets}),
        "first_packets_hex": [p.hex() for p in packets[:10]],
    }
    (HERE / "chirp16k.packets.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(f"{len(packets)} packets, {ogg.stat().st_size} bytes of Ogg/Opus")


if __name__ == "__main__":
    main()
