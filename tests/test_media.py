"""voxer_stream.media: Opus packet rules (RFC 6716 s. 3), encoding, Ogg/Opus (RFC 7845).

Everything here runs the real thing: libopus through PyAV, the Debian ffmpeg, ffprobe,
opusinfo and opusdec binaries, files in tmp_path. No mocks.
"""

from __future__ import annotations

import array
import contextlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxer_stream.media.encode import (
    decode_packets,
    encode_file,
    encode_pcm,
    iter_encode_file,
    tone_wav,
)
from voxer_stream.media.ogg import (
    InvalidOggOpus,
    OggOpusWriter,
    ogg_crc32,
    read_ogg_opus,
    write_ogg_opus,
)
from voxer_stream.media.opus import (
    InvalidOpusPacket,
    OpusPacketInfo,
    packet_duration,
    packets_duration,
    parse_packet,
)

REFERENCE = Path(__file__).resolve().parent.parent / "codecs" / "reference"


TOOLS = ("ffmpeg", "ffprobe", "opusinfo", "opusdec")


@pytest.fixture(autouse=True, scope="module")
def _tools_installed() -> None:
    """Fail, not skip, without the tools: ``./dev test`` installs ffmpeg and opus-tools,
    so a missing one is a broken set-up that must not pass silently."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"missing {missing}: run ./dev test, which installs them"


def rms(pcm: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))


@pytest.fixture(scope="module")
def tone_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "tone.wav"
    tone_wav(path, 3.0, 440.0)
    return path


@pytest.fixture(scope="module")
def tone_packets(tone_path: Path) -> list[bytes]:
    return encode_file(tone_path)


# --- RFC 6716 section 3.1: the TOC byte -------------------------------------------


@pytest.mark.parametrize(
    ("config", "mode", "bandwidth", "ticks"),
    [
        (0, "silk", "NB", 480),
        (3, "silk", "NB", 2880),
        (5, "silk", "MB", 960),
        (11, "silk", "WB", 2880),
        (12, "hybrid", "SWB", 480),
        (15, "hybrid", "FB", 960),
        (16, "celt", "NB", 120),
        (21, "celt", "WB", 240),
        (26, "celt", "SWB", 480),
        (31, "celt", "FB", 960),
    ],
)
def test_toc_table_2(config: int, mode: str, bandwidth: str, ticks: int) -> None:
    for stereo in (False, True):
        info = parse_packet(bytes([config << 3 | stereo << 2, 0xAA]))
        assert info == OpusPacketInfo(config, mode, bandwidth, stereo, 1, ticks, ticks)


def test_toc_0x78_is_hybrid_fullband_20ms() -> None:
    # The TOC libopus emits most for a tone at 32 kbit/s (STACK-NOTES calls it CELT;
    # config 15 is Hybrid FB per Table 2).
    info = parse_packet(b"\x78" + bytes(80))
    assert (info.config, info.mode, info.bandwidth, info.duration) == (15, "hybrid", "FB", 960)


# --- What libopus produces is accepted, with the right durations -------------------


def test_parse_accepts_libopus_20ms(tone_packets: list[bytes]) -> None:
    assert 150 <= len(tone_packets) <= 152
    for packet in tone_packets:
        info = parse_packet(packet)
        assert (info.duration, info.frame_count, info.stereo) == (960, 1, False)
        assert packet_duration(packet) == 960
    assert packets_duration(tone_packets) == 960 * len(tone_packets)


@pytest.mark.parametrize("frame_ms", [5, 10, 40, 60])
def test_parse_accepts_libopus_frame_sizes(tone_path: Path, frame_ms: int) -> None:
    packets = encode_file(tone_path, frame_ms=frame_ms)
    assert abs(len(packets) - 3000 // frame_ms) <= 2
    for packet in packets:
        info = parse_packet(packet)
        assert info.duration == frame_ms * 48
        assert info.frame_count * info.frame_duration == info.duration
    if frame_ms == 60:
        # CELT frames stop at 20 ms, so 60 ms comes as a multi-frame (code 3) packet.
        assert any(p[0] & 3 == 3 for p in packets)


def test_parse_accepts_libopus_stereo() -> None:
    pcm = array.array("h")
    for i in range(48000):
        pcm.append(round(8000 * math.sin(i * 2 * math.pi * 440 / 48000)))
        pcm.append(round(8000 * math.sin(i * 2 * math.pi * 660 / 48000)))
    if sys.byteorder == "big":
        pcm.byteswap()
    packets = encode_pcm(pcm.tobytes(), channels=2)
    assert packets
    assert all(parse_packet(p).stereo for p in packets)
    assert packets_duration(packets) == 960 * len(packets)


def test_valid_edge_cases() -> None:
    # Code 0 with a zero-length frame (DTX / lost-packet marker): valid, 20 ms.
    assert parse_packet(b"\x78").duration == 960
    # Code 1 with N=1: two zero-length frames.
    assert parse_packet(b"\x79").frame_count == 2
    # Code 2 with the two-byte length coding: 252 + 4*1 = 256 byte first frame.
    assert parse_packet(b"\x7a\xfc\x01" + bytes(256 + 10)).frame_count == 2
    # Code 0 frame of exactly 1275 bytes.
    assert parse_packet(b"\xf8" + bytes(1275)).frame_count == 1
    # Code 3, 48 frames of 2.5 ms: exactly 120 ms.
    assert parse_packet(bytes([16 << 3 | 3, 48]) + bytes(48)).duration == 5760
    # Code 3 CBR with a padding chain: 255 (254 bytes) then 10.
    assert parse_packet(b"\xfb\x42\xff\x0a" + bytes(254 + 10) + bytes(2 * 7)).frame_count == 2
    # Code 3 VBR: 3 frames, lengths 5 and 300, last takes the rest.
    assert parse_packet(b"\xfb\x83\x05\xfc\x0c" + bytes(5 + 300 + 9)).frame_count == 3


# --- RFC 6716 section 3.4: one rejected packet per requirement ---------------------


def _rejects(packet: bytes, requirement: str) -> None:
    with pytest.raises(InvalidOpusPacket) as caught:
        parse_packet(packet)
    assert caught.value.requirement == requirement
    assert caught.value.reason in str(caught.value)


def test_r1_packet_at_least_one_byte() -> None:
    _rejects(b"", "R1")


def test_r2_no_implicit_frame_longer_than_1275() -> None:
    _rejects(b"\xf8" + bytes(1276), "R2")  # code 0
    _rejects(b"\xf9" + bytes(2 * 1276), "R2")  # code 1
    _rejects(b"\xfa\x01\x00" + bytes(1276), "R2")  # code 2, the second frame
    _rejects(b"\xfb\x01" + bytes(1276), "R2")  # code 3 CBR
    _rejects(b"\xfb\x82\x01\x00" + bytes(1276), "R2")  # code 3 VBR, the last frame


def test_r3_code1_odd_total_length() -> None:
    _rejects(b"\xf9\x00", "R3")
    _rejects(b"\xf9" + bytes(101), "R3")


def test_r4_code2_frame_length_fits() -> None:
    _rejects(b"\xfa", "R4")  # no length byte at all
    _rejects(b"\xfa\xfc", "R4")  # two-byte length cut short
    _rejects(b"\xfa\x0a" + bytes(9), "R4")  # first frame longer than what remains


def test_r5_code3_one_to_120ms() -> None:
    _rejects(b"\xfb\x00", "R5")  # M = 0
    _rejects(bytes([3 << 3 | 3, 3]) + bytes(30), "R5")  # 3 x 60 ms SILK = 180 ms
    _rejects(bytes([16 << 3 | 3, 49]) + bytes(49), "R5")  # 49 x 2.5 ms


def test_r6_code3_cbr_lengths() -> None:
    _rejects(b"\xfb", "R6")  # N < 2: no frame count byte
    _rejects(b"\xfb\x42\x0a" + bytes(5), "R6")  # padding P > N - 2
    _rejects(b"\xfb\x42\xff", "R6")  # padding chain runs off the end
    _rejects(b"\xfb\x03" + bytes(10), "R6")  # 10 bytes are not 3 equal frames


def test_r7_code3_vbr_lengths() -> None:
    _rejects(b"\xfb\x83\x05", "R7")  # second frame length missing
    _rejects(b"\xfb\x82\xfc", "R7")  # two-byte length cut short
    _rejects(b"\xfb\x83\x05\x06" + bytes(10), "R7")  # frames longer than the packet
    _rejects(b"\xfb\xc2\x14\x01" + bytes(5), "R7")  # frame + 20 bytes of padding too long
    _rejects(b"\xfb\xc2", "R7")  # padding length missing


@pytest.mark.parametrize(
    "data",
    [
        b"RIFF\x24\x08\x00\x00WAVEfmt ",  # code 2, first frame length past the end
        b"OggS\x00\x02" + bytes(20),  # code 3, 39 frames of SILK 20 ms
        b"\x00" * 2000,  # code 0, frame far longer than 1275
        b"\xff\xfb\x90\x64" + bytes(100),  # an MP3 frame header: code 3, M = 59
        b"\x03",  # code 3 without its count byte
    ],
)
def test_rejects_non_opus_bytes(data: bytes) -> None:
    with pytest.raises(InvalidOpusPacket):
        parse_packet(data)


@settings(max_examples=2000, deadline=None, database=None)
@given(st.binary(max_size=3000))
def test_parse_packet_total_function(data: bytes) -> None:
    """Whatever arrives, parse_packet describes it or raises InvalidOpusPacket."""
    try:
        info = parse_packet(data)
    except InvalidOpusPacket:
        return
    assert 0 < info.duration <= 5760
    assert info.duration == info.frame_count * info.frame_duration


@settings(max_examples=1000, deadline=None, database=None)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.lists(st.integers(0, 255), max_size=8),
    st.integers(0, 1400),
)
def test_parse_packet_total_function_code3(toc: int, count: int, head: list[int], n: int) -> None:
    """The same invariant, steered into the code 3 header paths."""
    data = bytes([toc | 3, count, *head]) + bytes(n)
    try:
        info = parse_packet(data)
    except InvalidOpusPacket:
        return
    assert info.frame_count == count & 0x3F


def test_parse_packet_agrees_with_libopus() -> None:
    """Differential check: libopus' decoder refuses exactly the packets we refuse.

    libopus runs the same RFC 6716 section 3.4 checks (opus_packet_parse) before it
    decodes; a valid framing with a garbage payload still decodes (to noise).
    """
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48000
    decoder.layout = "mono"
    rng = random.Random(6716)
    for _ in range(3000):
        size = rng.choice([1, 2, 3, 4, 6, 20, 300, 1300, 2600])
        second = rng.choice([rng.randrange(256), 0x01, 0x41, 0x81, 0xC1, 0xFF])
        data = (bytes([rng.randrange(256), second]) + os.urandom(size))[:size]
        try:
            parse_packet(data)
            ours = True
        except InvalidOpusPacket:
            ours = False
        try:
            decoder.decode(av.Packet(data))
            theirs = True
        except av.error.FFmpegError:
            theirs = False
        assert ours == theirs, data[:8].hex()


# --- Encoding ------------------------------------------------------------------------


def test_encode_wav_20ms_packets(tone_packets: list[bytes]) -> None:
    # 3 s = 150 frames of 20 ms, plus one flushed for the encoder's 312-tick lookahead.
    assert len(tone_packets) == 151
    assert {packet_duration(p) for p in tone_packets} == {960}


def test_iter_encode_file_streams(tone_path: Path, tone_packets: list[bytes]) -> None:
    packets = iter_encode_file(tone_path)
    first = next(packets)
    assert packet_duration(first) == 960
    assert len([first, *packets]) == len(tone_packets)


@pytest.mark.parametrize(
    ("suffix", "codec_args"),
    [
        ("mp3", ["-c:a", "libmp3lame", "-b:a", "96k"]),
        ("ogg", ["-c:a", "libvorbis"]),
        ("flac", ["-c:a", "flac", "-ar", "44100"]),
    ],
)
def test_encode_compressed_inputs(
    tone_path: Path, tmp_path: Path, suffix: str, codec_args: list[str]
) -> None:
    src = tmp_path / f"tone.{suffix}"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tone_path), *codec_args, str(src)],
        check=True,
    )
    packets = encode_file(src)
    assert {packet_duration(p) for p in packets} == {960}
    # Lossy encoders add some priming/padding; the count stays close to 3 s * 50.
    assert abs(len(packets) - 150) <= 4
    assert rms(decode_packets(packets)) > 5000


def test_decode_has_energy(tone_packets: list[bytes]) -> None:
    pcm = decode_packets(tone_packets)
    assert len(pcm) == 2 * 960 * len(tone_packets)
    # A half-scale sine has an RMS of 16384 / sqrt(2) = 11585.
    assert 9000 < rms(pcm) < 14000


def test_silence_stays_silent() -> None:
    packets = encode_pcm(bytes(2 * 48000))
    assert len(packets) == 51
    assert rms(decode_packets(packets)) < 50


def test_encode_pcm_resamples() -> None:
    pcm = array.array(
        "h", (round(12000 * math.sin(i * 2 * math.pi * 300 / 16000)) for i in range(16000))
    )
    if sys.byteorder == "big":
        pcm.byteswap()
    packets = encode_pcm(pcm.tobytes(), sample_rate=16000)
    assert abs(len(packets) - 50) <= 1
    assert rms(decode_packets(packets)) > 5000


def test_encode_rejects_bad_arguments(tone_path: Path) -> None:
    with pytest.raises(ValueError, match="frame_ms"):
        encode_file(tone_path, frame_ms=30)
    with pytest.raises(ValueError, match="bitrate"):
        encode_file(tone_path, bitrate=1000)


# --- Ogg/Opus (RFC 7845) -------------------------------------------------------------


def test_ogg_crc32_check_value() -> None:
    # CRC-32 poly 0x04c11db7, init 0, no reflection, no final XOR: CRC-32/POSIX
    # (check 0x765e7680) without its final inversion.
    assert ogg_crc32(b"123456789") == 0x765E7680 ^ 0xFFFFFFFF


@pytest.fixture(scope="module")
def tone_ogg(tone_packets: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ogg") / "tone.opus"
    with path.open("wb") as f:
        write_ogg_opus(tone_packets, f, serial=0x1234)
    return path


def test_ogg_roundtrip_byte_identical(tone_ogg: Path, tone_packets: list[bytes]) -> None:
    info, packets = read_ogg_opus(tone_ogg.read_bytes())
    assert packets == tone_packets
    assert (info.channels, info.pre_skip, info.input_sample_rate) == (1, 312, 48000)
    assert (info.mapping_family, info.output_gain, info.serial) == (0, 0, 0x1234)
    assert info.vendor == "voxer-stream"
    assert info.granule_position == 960 * len(tone_packets)
    assert info.page_count == 2 + math.ceil(len(tone_packets) / 50)


def test_ogg_ffprobe(tone_ogg: Path, tone_packets: list[bytes]) -> None:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(tone_ogg)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert result.stderr == ""
    (stream,) = json.loads(result.stdout)["streams"]
    assert stream["codec_name"] == "opus"
    assert stream["sample_rate"] == "48000"
    assert stream["channels"] == 1
    assert float(stream["duration"]) == pytest.approx(len(tone_packets) * 0.02, abs=0.03)


def test_ogg_opusinfo_clean(tone_ogg: Path) -> None:
    result = subprocess.run(["opusinfo", str(tone_ogg)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower()
    assert "error" not in output.lower()
    assert "Packet duration:   20.0ms (max),   20.0ms (avg),   20.0ms (min)" in output
    assert "Playback length: 0m:03.01" in output


def test_ogg_pyav_demux_byte_identical(tone_ogg: Path, tone_packets: list[bytes]) -> None:
    with av.open(str(tone_ogg)) as container:
        stream = container.streams.audio[0]
        demuxed = [bytes(p) for p in container.demux(stream) if p.size]
    assert demuxed == tone_packets


def test_ogg_pyav_decode_has_energy(tone_ogg: Path, tone_packets: list[bytes]) -> None:
    pcm = bytearray()
    with av.open(str(tone_ogg)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: 2 * out.samples]
    # The demuxer applies the 312-tick pre-skip (RFC 7845 section 4.2).
    assert len(pcm) // 2 == pytest.approx(960 * len(tone_packets) - 312, abs=960)
    assert rms(bytes(pcm)) > 9000


def test_ogg_opusdec_decodes(tone_ogg: Path, tmp_path: Path) -> None:
    """libopusfile (an independent Ogg reader) decodes it to 3 s of the tone."""
    out = tmp_path / "decoded.wav"
    subprocess.run(
        ["opusdec", "--quiet", "--rate", "48000", str(tone_ogg), str(out)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(out)) as w:
        assert w.getnchannels() == 1
        frames = w.readframes(w.getnframes())
    assert len(frames) // 2 == pytest.approx(3 * 48000, abs=960 + 312)
    assert rms(frames) > 9000


def test_ogg_streaming_prefix_is_readable(tone_packets: list[bytes], tmp_path: Path) -> None:
    """A file being streamed to is always whole pages: readable while it grows."""
    path = tmp_path / "live.opus"
    with path.open("wb") as f:
        writer = OggOpusWriter(f, serial=7)
        for i, packet in enumerate(tone_packets, 1):
            writer.write_packet(packet)
            if i in (1, 51, 120):
                f.flush()
                _info, so_far = read_ogg_opus(path.read_bytes())
                assert so_far == tone_packets[: len(so_far)]
                assert i - len(so_far) <= 50  # at most one page (about 1 s) behind
        writer.close()
    assert read_ogg_opus(path.read_bytes())[1] == tone_packets


def _padded_packet(size: int) -> bytes:
    """A valid code 3 packet of exactly `size` bytes: one empty frame plus padding.

    RFC 6716 section 3.2.5: each 255 in the padding chain adds 254 bytes of padding
    and itself, the final length byte v adds v bytes and itself.
    """
    k, v = divmod(size - 3, 255)
    packet = b"\xfb\x41" + b"\xff" * k + bytes([v]) + bytes(254 * k + v)
    assert len(packet) == size
    parse_packet(packet)
    return packet


def test_ogg_large_and_boundary_packets(tmp_path: Path) -> None:
    """Packets on lacing boundaries and packets spanning pages come back intact."""
    sizes = [254, 255, 256, 510, 1275, 70_000, 65_025, 3, 130_000, 255 * 255 - 1]
    packets = [b"\xf8", *(_padded_packet(s) for s in sizes)]
    buf = io.BytesIO()
    write_ogg_opus(packets, buf, serial=99)
    info, back = read_ogg_opus(buf.getvalue())
    assert back == packets
    assert info.granule_position == 960 * len(packets)
    path = tmp_path / "big.opus"
    path.write_bytes(buf.getvalue())
    with av.open(str(path)) as container:
        demuxed = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert demuxed == packets


def test_ogg_end_trim(tone_packets: list[bytes]) -> None:
    buf = io.BytesIO()
    writer = OggOpusWriter(buf, serial=1)
    for packet in tone_packets:
        writer.write_packet(packet)
    writer.close(end_trim=648)
    info, packets = read_ogg_opus(buf.getvalue())
    assert packets == tone_packets
    assert info.granule_position == 960 * len(tone_packets) - 648
    with pytest.raises(ValueError, match="end_trim"):
        OggOpusWriter(io.BytesIO()).close(end_trim=960)


def test_ogg_end_trim_opusinfo(tone_packets: list[bytes], tmp_path: Path) -> None:
    """Trimming 648 ticks leaves 151 * 960 - 648 - 312 = 144000 ticks: exactly 3 s."""
    path = tmp_path / "trimmed.opus"
    with path.open("wb") as f:
        writer = OggOpusWriter(f, serial=2)
        for packet in tone_packets:
            writer.write_packet(packet)
        writer.close(end_trim=648)
    result = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower()
    assert "Playback length: 0m:03.000s" in output


def test_ogg_empty_stream() -> None:
    buf = io.BytesIO()
    write_ogg_opus([], buf, serial=5, vendor="x")
    info, packets = read_ogg_opus(buf.getvalue())
    assert packets == []
    assert (info.vendor, info.granule_position, info.page_count) == ("x", 0, 3)


def test_ogg_writer_rejects_invalid_packet() -> None:
    writer = OggOpusWriter(io.BytesIO())
    with pytest.raises(InvalidOpusPacket):
        writer.write_packet(b"")


def test_ogg_reader_detects_corruption(tone_ogg: Path) -> None:
    data = bytearray(tone_ogg.read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(InvalidOggOpus, match="CRC"):
        read_ogg_opus(bytes(data))
    with pytest.raises(InvalidOggOpus):
        read_ogg_opus(bytes(tone_ogg.read_bytes()[:-10]))
    with pytest.raises(InvalidOggOpus):
        read_ogg_opus(b"")
    with pytest.raises(InvalidOggOpus):
        read_ogg_opus(b"RIFF" + bytes(100))


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_ogg_reader_total_function(data: st.DataObject) -> None:
    """Truncated or mutated files raise InvalidOggOpus or InvalidOpusPacket, nothing else."""
    blob = bytearray(_small_ogg())
    cut = data.draw(st.integers(0, len(blob)))
    del blob[cut:]
    for _ in range(data.draw(st.integers(0, 3))):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidOggOpus, InvalidOpusPacket):
        read_ogg_opus(bytes(blob))


def _small_ogg() -> bytes:
    buf = io.BytesIO()
    write_ogg_opus([b"\x78" + bytes(20)] * 60, buf, serial=3)
    return buf.getvalue()


# --- Reference media in codecs/reference --------------------------------------------


def test_reference_media_consistent() -> None:
    listing = json.loads((REFERENCE / "chirp16k.packets.json").read_text())
    with wave.open(str(REFERENCE / "chirp16k.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == 3 * 16000
    ogg = (REFERENCE / "chirp16k.opus").read_bytes()
    info, packets = read_ogg_opus(ogg)
    assert len(packets) == listing["packet_count"]
    assert [p.hex() for p in packets[:10]] == listing["first_packets_hex"]
    assert packets_duration(packets) == listing["total_duration"]
    # Our writer is deterministic: the same packets and serial give the same file.
    rewritten = io.BytesIO()
    write_ogg_opus(packets, rewritten, serial=info.serial, input_sample_rate=info.input_sample_rate)
    assert rewritten.getvalue() == ogg
    # libopus bytes may vary across builds and CPUs; the packet count may not.
    assert len(encode_file(REFERENCE / "chirp16k.wav")) == listing["packet_count"]
