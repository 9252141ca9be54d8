"""Turn audio into the Opus packets voxer-stream carries, and back (PyAV + libopus).

The server itself never transcodes: talkers send Opus. This module exists for the
edges: the CLI (talk a file as if it were a microphone), tests (real packets from the
real encoder, real PCM to measure energy in) and reference media. The packets follow
the codec profile in codecs/opus.md: mono, 48 kHz media clock, one packet per
`frame_ms` (20 ms by default, 960 ticks), straight from libopus (RFC 6716).

Encoding goes through PyAV as measured in STACK-NOTES: any input is decoded, converted
with `AudioResampler(format="s16", layout="mono", rate=48000)`, cut into exact
frame-size chunks by an `AudioFifo` (libopus only accepts whole frames), and encoded by
a bare libopus `CodecContext`: no container, so the packets are the encoder's own bytes.
"""

from __future__ import annotations

import array
import math
import os
import sys
import wave
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import av
from av.audio.fifo import AudioFifo
from av.audio.resampler import AudioResampler

__all__ = [
    "SAMPLE_RATE",
    "decode_packets",
    "encode_file",
    "encode_pcm",
    "iter_encode_file",
    "iter_encode_pcm",
    "tone_wav",
]

#: The Opus media clock (RFC 7587 section 4.1, RFC 7845 section 4): always 48 kHz.
SAMPLE_RATE = 48000

#: Frame sizes libopus accepts that are whole milliseconds (RFC 6716 section 2.1.4
#: allows 2.5, 5, 10, 20, 40 and 60 ms; 40 and 60 ms come out as multi-frame packets).
FRAME_MS_CHOICES = (5, 10, 20, 40, 60)


def _open_encoder(frame_ms: int, bitrate: int, channels: int = 1) -> Any:
    if frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, not {frame_ms!r}")
    if not 6000 <= bitrate <= 510000:
        # libopus' own range (opus_encoder_ctl OPUS_SET_BITRATE).
        raise ValueError(f"bitrate must be within 6000..510000 bit/s, not {bitrate!r}")
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = SAMPLE_RATE
    enc.layout = "mono" if channels == 1 else "stereo"
    enc.format = "s16"
    enc.bit_rate = bitrate
    enc.time_base = Fraction(1, SAMPLE_RATE)
    enc.options = {"frame_duration": str(frame_ms)}
    enc.open()
    return enc


def _encode_frames(
    frames: Iterable[Any], *, frame_ms: int, bitrate: int, channels: int = 1
) -> Iterator[bytes]:
    """Resample any PyAV audio frames to s16/48 kHz and encode them frame by frame."""
    enc = _open_encoder(frame_ms, bitrate, channels)
    layout = "mono" if channels == 1 else "stereo"
    resampler = AudioResampler(format="s16", layout=layout, rate=SAMPLE_RATE)
    fifo = AudioFifo()
    frame_size = SAMPLE_RATE * frame_ms // 1000
    pts = 0

    def drain(final: bool) -> Iterator[bytes]:
        nonlocal pts
        while fifo.samples >= frame_size or (final and fifo.samples):
            chunk = fifo.read(frame_size)
            if chunk is None:
                # The tail is shorter than a frame: pad it with silence, as opusenc
                # does, so every packet covers exactly frame_ms.
                tail = fifo.read()
                assert tail is not None  # fifo.samples > 0 here
                chunk = _pcm_frame(
                    _frame_bytes(tail) + bytes(2 * channels * (frame_size - tail.samples)),
                    SAMPLE_RATE,
                    layout,
                )
            chunk.pts = pts
            chunk.time_base = enc.time_base
            pts += frame_size
            for packet in enc.encode(chunk):
                yield bytes(packet)

    for frame in frames:
        for out in resampler.resample(frame):
            out.pts = None  # AudioFifo insists on contiguous pts; we keep our own clock
            fifo.write(out)
        yield from drain(final=False)
    for out in resampler.resample(None):
        out.pts = None
        fifo.write(out)
    yield from drain(final=True)
    # Flushing returns the packets held back by the encoder's lookahead (pre-skip).
    for packet in enc.encode(None):
        yield bytes(packet)


def _frame_bytes(frame: Any) -> bytes:
    """The PCM of a packed-format frame, without the plane's alignment padding."""
    size = frame.samples * frame.format.bytes * len(frame.layout.channels)
    return bytes(frame.planes[0])[:size]


def _pcm_frame(pcm: bytes, sample_rate: int, layout: str = "mono") -> Any:
    channels = 1 if layout == "mono" else 2
    frame = av.AudioFrame(format="s16", layout=layout, samples=len(pcm) // (2 * channels))
    frame.planes[0].update(pcm)
    frame.sample_rate = sample_rate
    return frame


def iter_encode_file(
    path: str | os.PathLike[str], *, frame_ms: int = 20, bitrate: int = 32000
) -> Iterator[bytes]:
    """Yield Opus packets for any audio file PyAV (FFmpeg) can read, as they are made.

    Streaming, so a long file can be "talked" in real time without encoding it all
    first. The first audio stream is used; it is downmixed to mono and resampled to
    48 kHz. The stream ends with the encoder's flush packets, so the packet count is
    about seconds * 1000 / frame_ms plus one (RFC 7845 section 4.2 pre-skip: libopus'
    lookahead is 312 ticks at 48 kHz).
    """
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{os.fspath(path)!r} has no audio stream")
        stream = container.streams.audio[0]
        yield from _encode_frames(container.decode(stream), frame_ms=frame_ms, bitrate=bitrate)


def encode_file(
    path: str | os.PathLike[str], *, frame_ms: int = 20, bitrate: int = 32000
) -> list[bytes]:
    """Encode a whole audio file to mono 48 kHz Opus packets (see `iter_encode_file`)."""
    return list(iter_encode_file(path, frame_ms=frame_ms, bitrate=bitrate))


def iter_encode_pcm(
    pcm: bytes,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_ms: int = 20,
    bitrate: int = 32000,
    channels: int = 1,
) -> Iterator[bytes]:
    """Yield Opus packets for raw s16le PCM (interleaved if `channels` is 2)."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels!r}")
    if len(pcm) % (2 * channels):
        raise ValueError("s16le PCM length must be a whole number of samples")
    layout = "mono" if channels == 1 else "stereo"
    frames = [_pcm_frame(pcm, sample_rate, layout)] if pcm else []
    yield from _encode_frames(frames, frame_ms=frame_ms, bitrate=bitrate, channels=channels)


def encode_pcm(
    pcm: bytes,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_ms: int = 20,
    bitrate: int = 32000,
    channels: int = 1,
) -> list[bytes]:
    """Encode s16le mono PCM (any sample rate; resampled to 48 kHz) to Opus packets.

    `channels=2` takes interleaved stereo and makes stereo packets; voxer-stream's
    profile is mono, this exists so tests can produce the stereo TOC bit for real.
    """
    return list(
        iter_encode_pcm(
            pcm, sample_rate=sample_rate, frame_ms=frame_ms, bitrate=bitrate, channels=channels
        )
    )


def decode_packets(packets: Iterable[bytes]) -> bytes:
    """Decode Opus packets to s16le mono 48 kHz PCM with libopus.

    Decoding bare packets does not apply any pre-skip (RFC 7845 section 4.2 is a
    container rule), so the output starts with libopus' 312 ticks of lookahead.
    Stereo packets are downmixed.
    """
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = SAMPLE_RATE
    dec.layout = "mono"
    resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = bytearray()
    for packet in packets:
        for frame in dec.decode(av.Packet(packet)):
            for converted in resampler.resample(frame):
                out += _frame_bytes(converted)
    for frame in dec.decode(None):
        for converted in resampler.resample(frame):
            out += _frame_bytes(converted)
    for converted in resampler.resample(None):
        out += _frame_bytes(converted)
    return bytes(out)


def tone_wav(
    path: str | os.PathLike[str],
    seconds: float,
    freq: float = 440.0,
    sample_rate: int = SAMPLE_RATE,
) -> None:
    """Write a mono 16-bit sine WAV at half full scale, with the stdlib only.

    Tests and the CLI walkthrough need real audio without shipping binary files.
    """
    n = round(seconds * sample_rate)
    step = 2.0 * math.pi * freq / sample_rate
    samples = array.array("h", (round(16384 * math.sin(step * i)) for i in range(n)))
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.tobytes())
