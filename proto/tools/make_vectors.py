"""Writes proto/vectors/*.json: the hand-written cases below, encoded.

Run from the repository root: ``python proto/tools/make_vectors.py``. The output
is committed; ``tests/test_vectors.py`` checks the files, not this script. This
script only uses cbor2 (for the deterministic encoding of valid frames) and
hand-written hex: it never asks the voxer_stream code what the answer is, so
the vectors stay an independent statement of the protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2

OUT = Path(__file__).resolve().parent.parent / "vectors"

MAX_FRAME = 65536
MAX_U53 = 2**53 - 1

# Real Opus packets (RFC 6716 section 3.1 TOC byte = config << 3 | s << 2 | c).
CELT_FB_20MS_SILENCE = "f8fffe"  # config 31 (CELT FB 20 ms), mono, code 0: 960 ticks
HYBRID_FB_20MS = "788f3a6c0b51e2"  # config 15 (Hybrid FB 20 ms), mono, code 0: 960 ticks
SILK_WB_20MS = "4803a1b2c3"  # config 9 (SILK WB 20 ms), mono, code 0: 960 ticks
CELT_FB_2X20MS_CODE1 = "f9a1a2b3b4"  # config 31, code 1: 2 frames of 2 bytes, 1920 ticks
CELT_FB_3X20MS_CODE3 = "fb03aaaabbbbcccc"  # code 3, CBR, M=3, 2 bytes each: 2880 ticks


def hexform(obj: Any) -> Any:
    """Python value -> JSON form (spec 3.3): bytes become {"hex": ...}."""
    if isinstance(obj, bytes):
        return {"hex": obj.hex()}
    if isinstance(obj, dict):
        return {k: hexform(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [hexform(v) for v in obj]
    return obj


def fromjson(obj: Any) -> Any:
    """JSON form -> Python value."""
    if isinstance(obj, dict):
        if set(obj) == {"hex"}:
            return bytes.fromhex(obj["hex"])
        return {k: fromjson(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fromjson(v) for v in obj]
    return obj


def det(obj: Any) -> str:
    """Deterministic encoding (RFC 8949 section 4.2.1) as lowercase hex."""
    return bytes(cbor2.dumps(obj, canonical=True)).hex()


def tstr(s: str) -> str:
    """Hand encoding of a short text string (< 24 bytes)."""
    raw = s.encode()
    assert len(raw) < 24
    return f"{0x60 + len(raw):02x}" + raw.hex()


def valid(
    vid: str,
    description: str,
    frame: dict[str, Any],
    requirements: list[str],
    *,
    cbor_hex: str | None = None,
    decoded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid frame. ``frame`` is given in JSON form. With ``cbor_hex`` the bytes
    are a non-deterministic (or extended) encoding of ``decoded``/``frame``."""
    vector: dict[str, Any] = {"id": vid, "description": description}
    if cbor_hex is None:
        vector["cbor_hex"] = det(fromjson(frame))
    else:
        vector["cbor_hex"] = cbor_hex
        assert det(fromjson(frame)) != cbor_hex, vid
        vector["roundtrip"] = False
    vector.update(valid=True, frame=frame, requirements=requirements)
    # Sanity: the bytes decode to the frame, except for ignored unknown keys.
    if decoded is None:
        assert cbor2.loads(bytes.fromhex(vector["cbor_hex"])) == fromjson(frame), vid
    return vector


def invalid(
    vid: str,
    description: str,
    cbor_hex: str,
    error: int,
    error_name: str,
    requirements: list[str],
    *,
    cddl_valid: bool | None = None,
) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "id": vid,
        "description": description,
        "cbor_hex": cbor_hex,
        "valid": False,
        "error": error,
        "error_name": error_name,
        "requirements": requirements,
    }
    if cddl_valid is not None:
        vector["cddl_valid"] = cddl_valid
    return vector


def bad(obj: Any) -> str:
    return det(obj)


MALFORMED, TOO_LARGE, INVALID, LISTEN_ERR = 100, 101, 102, 409

OPEN = {"type": "open", "msg": "m-01HZX5", "thread": "t-family", "codec": "opus",
        "created": 1718000000000}  # fmt: skip
ACK = {"type": "ack", "seq": 1}

# ------------------------------------------------------------------ valid frames
VALID = [
    valid(
        "open-basic",
        "open of a new message; every field is required",
        OPEN,
        ["VXS-4.1-1", "VXS-2.1-1", "VXS-3.1-1"],
    ),
    valid(
        "chunk-celt-silence",
        "first chunk: one 20 ms CELT fullband packet (TOC 0xf8), ts 0",
        {"type": "chunk", "seq": 0, "ts": 0, "packets": [{"hex": CELT_FB_20MS_SILENCE}]},
        ["VXS-4.2-1", "VXS-2.2-1", "VXS-7-3"],
    ),
    valid(
        "chunk-hybrid-three-packets",
        "chunk 3 of a talker sending 60 ms chunks: three 20 ms packets, Hybrid FB (TOC 0x78), "
        "SILK WB (TOC 0x48), Hybrid FB; ts = 3 * 2880",
        {
            "type": "chunk",
            "seq": 3,
            "ts": 8640,
            "packets": [{"hex": HYBRID_FB_20MS}, {"hex": SILK_WB_20MS}, {"hex": HYBRID_FB_20MS}],
        },
        ["VXS-4.2-1", "VXS-4.2-4", "VXS-2.2-2"],
    ),
    valid(
        "chunk-multiframe-packets",
        "code 1 (2 frames) and code 3 (3 frames) packets: 40 ms + 60 ms = 4800 ticks",
        {
            "type": "chunk",
            "seq": 1,
            "ts": 960,
            "packets": [{"hex": CELT_FB_2X20MS_CODE1}, {"hex": CELT_FB_3X20MS_CODE3}],
        },
        ["VXS-4.2-1", "VXS-7-2"],
    ),
    valid(
        "chunk-not-opus",
        "packet bytes that are not Opus (TOC of a code 1 packet with even length) are a valid "
        "FRAME; the server rejects them later with INVALID_OPUS (404)",
        {"type": "chunk", "seq": 0, "ts": 0, "packets": [{"hex": "f9000000"}]},
        ["VXS-4.2-3", "VXS-5.3-5"],
    ),
    valid(
        "close-basic",
        "close of a message of 250 chunks (seqs 0..249)",
        {"type": "close", "chunks": 250},
        ["VXS-4.3-1"],
    ),
    valid(
        "close-empty-message",
        "close of a message with no chunk at all",
        {"type": "close", "chunks": 0},
        ["VXS-4.3-1"],
    ),
    valid(
        "opened-new",
        "opened for a new message: start at seq 0",
        {"type": "opened", "msg": "m-01HZX5", "next_seq": 0, "state": "live"},
        ["VXS-4.4-1", "VXS-5.2-2"],
    ),
    valid(
        "opened-resume",
        "opened after a reconnect: chunks 0..41 are durable",
        {"type": "opened", "msg": "m-01HZX5", "next_seq": 42, "state": "live"},
        ["VXS-5.2-2", "VXS-5.2-4"],
    ),
    valid(
        "opened-closed",
        "open of a message that is already closed",
        {"type": "opened", "msg": "m-01HZX5", "next_seq": 250, "state": "closed"},
        ["VXS-5.2-5"],
    ),
    valid("ack-first", "ack of chunk 0", {"type": "ack", "seq": 0}, ["VXS-4.5-1"]),
    valid(
        "ack-cumulative",
        "ack 1000: chunks 0..1000 are durable",
        {"type": "ack", "seq": 1000},
        ["VXS-4.5-1", "VXS-5.3-4"],
    ),
    valid(
        "closed-basic",
        "closed: 250 chunks, 5 s of audio (240000 ticks)",
        {"type": "closed", "msg": "m-01HZX5", "chunks": 250, "duration": 240000},
        ["VXS-4.6-1", "VXS-5.5-4"],
    ),
    valid(
        "listen-minimal",
        "listen from the first chunk, as fast as possible",
        {"type": "listen", "msg": "m-01HZX5"},
        ["VXS-4.7-1", "VXS-6.1-2"],
    ),
    valid(
        "listen-from-seq",
        "listen from chunk 10",
        {"type": "listen", "msg": "m-01HZX5", "from_seq": 10},
        ["VXS-4.7-1"],
    ),
    valid(
        "listen-from-ts-realtime",
        "listen from media time 1 s (48000 ticks) at real time",
        {"type": "listen", "msg": "m-01HZX5", "from_ts": 48000, "speed": 1.0},
        ["VXS-4.7-1", "VXS-6.1-3", "VXS-6.4-1"],
    ),
    valid(
        "listen-live-edge",
        "listen from the next chunk to arrive",
        {"type": "listen", "msg": "m-01HZX5", "live_edge": True},
        ["VXS-6.1-4"],
    ),
    valid(
        "listen-speed-min",
        "slowest speed: 0.25 (half precision f9 3400)",
        {"type": "listen", "msg": "m-01HZX5", "speed": 0.25},
        ["VXS-6.4-2"],
    ),
    valid(
        "listen-speed-max",
        "fastest paced speed: 16",
        {"type": "listen", "msg": "m-01HZX5", "from_seq": 0, "speed": 16.0},
        ["VXS-6.4-2"],
    ),
    valid(
        "listen-speed-double",
        "speed 1.1 needs a 64-bit float in deterministic encoding",
        {"type": "listen", "msg": "m-01HZX5", "speed": 1.1},
        ["VXS-6.4-2", "VXS-3.1-1"],
    ),
    valid(
        "message-live",
        "first frame of a listen stream on a live message",
        {
            "type": "message",
            "msg": "m-01HZX5",
            "thread": "t-family",
            "sender": "a-alice",
            "codec": "opus",
            "created": 1718000000000,
            "state": "live",
            "start_seq": 0,
        },
        ["VXS-4.8-1", "VXS-6.2-2"],
    ),
    valid(
        "message-closed-late",
        "message frame for a closed message, listening from seq 200",
        {
            "type": "message",
            "msg": "m-01HZX5",
            "thread": "t-family",
            "sender": "a-alice",
            "codec": "opus",
            "created": 1718000000000,
            "state": "closed",
            "start_seq": 200,
        },
        ["VXS-4.8-1"],
    ),
    valid(
        "live-marker",
        "the listener caught up; chunk 57 is the next to arrive",
        {"type": "live", "seq": 57},
        ["VXS-4.9-1", "VXS-6.2-4"],
    ),
    valid(
        "end-basic",
        "end of a 250-chunk, 5 s message",
        {"type": "end", "chunks": 250, "duration": 240000},
        ["VXS-4.10-1", "VXS-6.3-1"],
    ),
    valid(
        "error-minimal",
        "error frame with only code and name",
        {"type": "error", "code": 102, "name": "INVALID_FRAME"},
        ["VXS-4.11-1", "VXS-9-1"],
    ),
    valid(
        "error-with-detail-and-seq",
        "SEQUENCE_GAP about chunk 7, with a human-readable detail",
        {
            "type": "error",
            "code": 400,
            "name": "SEQUENCE_GAP",
            "detail": "chunk 7 arrived when 5 was expected",
            "seq": 7,
        },
        ["VXS-4.11-1", "VXS-5.3-2"],
    ),
    valid(
        "error-unknown-code",
        "a code the registry does not (yet) have is still a valid frame",
        {"type": "error", "code": 599, "name": "FUTURE_ERROR"},
        ["VXS-9-2"],
    ),
    valid(
        "auth-token",
        "bearer token as the first WebSocket frame",
        {"type": "auth", "token": "vxs_3q2-7Jk0bX1f9TnR4cYw8uLzA5eHmD6g"},
        ["VXS-4.12-1", "VXS-11-3"],
    ),
    valid(
        "id-64-chars",
        "identifiers of exactly 64 characters, all allowed character classes",
        {
            "type": "opened",
            "msg": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
            "next_seq": 0,
            "state": "live",
        },
        ["VXS-2.3-1"],
    ),
    valid(
        "ids-are-case-sensitive-text",
        "single-character ids",
        {"type": "open", "msg": "M", "thread": "_", "codec": "opus", "created": 0},
        ["VXS-2.3-1", "VXS-2.3-2"],
    ),
    valid(
        "codec-other",
        "an unknown codec name is a valid frame; the server answers UNSUPPORTED_CODEC (405)",
        {"type": "open", "msg": "m1", "thread": "t1", "codec": "lyra", "created": 1},
        ["VXS-4.1-1", "VXS-5.2-1"],
    ),
]

# Valid frames whose bytes are not what a deterministic encoder writes.
ack_unknown_key = {"type": "ack", "seq": 1, "v2_hint": [1, {"a": None}]}
VALID += [
    valid(
        "unknown-key-ignored",
        "an unknown key (any value) is ignored: the frame decodes as ack 1; re-encoding drops it",
        ACK,
        ["VXS-3.1-5"],
        cbor_hex=det(ack_unknown_key),
        decoded=ack_unknown_key,
    ),
    valid(
        "non-canonical-key-order",
        "keys in another order than the deterministic one",
        ACK,
        ["VXS-3.1-10"],
        cbor_hex="a2" + tstr("type") + tstr("ack") + tstr("seq") + "01",
    ),
    valid(
        "indefinite-length-map",
        "an indefinite-length map (0xbf ... 0xff)",
        ACK,
        ["VXS-3.1-10"],
        cbor_hex="bf" + tstr("type") + tstr("ack") + tstr("seq") + "01" + "ff",
    ),
    valid(
        "indefinite-length-packet",
        "a packet as an indefinite-length byte string of two chunks",
        {"type": "chunk", "seq": 0, "ts": 0, "packets": [{"hex": CELT_FB_20MS_SILENCE}]},
        ["VXS-3.1-10"],
        cbor_hex="a4"
        + tstr("ts")
        + "00"
        + tstr("seq")
        + "00"
        + tstr("type")
        + tstr("chunk")
        + tstr("packets")
        + "81"
        + "5f"
        + "41f8"
        + "42fffe"
        + "ff",
    ),
    valid(
        "non-minimal-integer",
        "seq 1 written as an 8-byte integer (0x1b 00..01)",
        ACK,
        ["VXS-3.1-10"],
        cbor_hex="a2" + tstr("seq") + "1b0000000000000001" + tstr("type") + tstr("ack"),
    ),
    valid(
        "listen-speed-integer",
        "speed as the integer 2: same as 2.0 (re-encoded as f9 4000)",
        {"type": "listen", "msg": "m1", "speed": 2.0},
        ["VXS-4.7-1"],
        cbor_hex=det({"type": "listen", "msg": "m1", "speed": 2}),
        decoded={"type": "listen", "msg": "m1", "speed": 2},
    ),
    valid(
        "listen-defaults-explicit",
        "live_edge false and speed 0 sent explicitly equal their defaults: re-encoding omits them",
        {"type": "listen", "msg": "m1", "from_seq": 5},
        ["VXS-4.7-1"],
        cbor_hex=det(
            {"type": "listen", "msg": "m1", "from_seq": 5, "live_edge": False, "speed": 0.0}
        ),
        decoded={},
    ),
    valid(
        "error-empty-detail",
        "an empty detail equals no detail: re-encoding omits it",
        {"type": "error", "code": 500, "name": "INTERNAL_ERROR"},
        ["VXS-4.11-1"],
        cbor_hex=det({"type": "error", "code": 500, "name": "INTERNAL_ERROR", "detail": ""}),
        decoded={},
    ),
]

# ------------------------------------------------------------------ invalid frames
ACK_HEX = det(ACK)  # a2 63736571 01 64747970 65 63 61636b
INVALID_VECTORS = [
    # -- not well-formed CBOR (RFC 8949 appendix F): MALFORMED_CBOR
    invalid(
        "empty-input", "zero bytes: no item at all", "", MALFORMED, "MALFORMED_CBOR", ["VXS-3.1-2"]
    ),
    invalid(
        "truncated-map",
        "ack 1 without its last byte",
        ACK_HEX[:-2],
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "truncated-head",
        "a uint head announcing 8 argument bytes, 3 present",
        "a2" + tstr("seq") + "1b000000",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "reserved-additional-info",
        "additional information 28 (reserved) in a uint head",
        "a2" + tstr("seq") + "1c" + tstr("type") + tstr("ack"),
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "reserved-simple-head",
        "major type 7 with additional information 30 (reserved)",
        "a2" + tstr("seq") + "01" + tstr("type") + "fe",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "break-outside",
        "a lone break byte (0xff) where a frame should start",
        "ff",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "break-as-map-value",
        "a break byte as the value of a definite-length map entry",
        "a2" + tstr("seq") + "ff" + tstr("type") + tstr("ack"),
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "indefinite-string-wrong-chunk",
        "an indefinite-length text string containing a byte string chunk",
        "a2" + tstr("seq") + "01" + tstr("type") + "7f" + "4161" + "ff",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "simple-value-two-byte-low",
        "two-byte simple value below 32 (f8 14)",
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("x") + "f814",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2"],
    ),
    invalid(
        "trailing-bytes",
        "a complete ack followed by one more byte: one frame per item",
        ACK_HEX + "00",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2", "VXS-11-2"],
    ),
    invalid(
        "invalid-utf8",
        'a text string that is not UTF-8 (0xff inside "ack")',
        "a2" + tstr("seq") + "01" + tstr("type") + "6361ff6b",
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-8"],
    ),
    # -- schema: INVALID_FRAME
    invalid(
        "not-a-map",
        "a frame must be a map: an array",
        det(["ack", 1]),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-3"],
        cddl_valid=False,
    ),
    invalid(
        "not-a-map-int",
        "a frame must be a map: a bare integer",
        "01",
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-3"],
        cddl_valid=False,
    ),
    invalid(
        "missing-type",
        'a map without the "type" key',
        det({"seq": 1}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-3"],
        cddl_valid=False,
    ),
    invalid(
        "type-not-text",
        '"type" is an integer',
        det({"type": 5, "seq": 1}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-3"],
        cddl_valid=False,
    ),
    invalid(
        "unknown-type",
        'type "ping" does not exist',
        det({"type": "ping"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-6"],
        cddl_valid=False,
    ),
    invalid(
        "type-case-sensitive",
        'type values are case-sensitive: "Ack"',
        det({"type": "Ack", "seq": 1}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-6"],
        cddl_valid=False,
    ),
    invalid(
        "missing-field",
        "ack without seq",
        det({"type": "ack"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
        cddl_valid=False,
    ),
    invalid(
        "open-missing-codec",
        "open without codec (codec has no default on the wire)",
        det({k: v for k, v in OPEN.items() if k != "codec"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.1-1"],
        cddl_valid=False,
    ),
    invalid(
        "seq-text",
        "seq as a text string",
        det({"type": "ack", "seq": "1"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
        cddl_valid=False,
    ),
    invalid(
        "seq-negative",
        "seq -1 (major type 1)",
        det({"type": "ack", "seq": -1}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-3"],
        cddl_valid=False,
    ),
    invalid(
        "seq-2-pow-53",
        "seq 2^53 is one above the largest allowed unsigned integer",
        det({"type": "ack", "seq": 2**53}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-3"],
        cddl_valid=False,
    ),
    invalid(
        "ts-max-uint64",
        "ts 2^64-1",
        det(
            {
                "type": "chunk",
                "seq": 0,
                "ts": 2**64 - 1,
                "packets": [bytes.fromhex(CELT_FB_20MS_SILENCE)],
            }
        ),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-3"],
        cddl_valid=False,
    ),
    invalid(
        "seq-float",
        "seq 1.0 as a float: integers only",
        "a2" + tstr("seq") + "f93c00" + tstr("type") + tstr("ack"),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
        cddl_valid=False,
    ),
    invalid(
        "seq-bool",
        "seq true",
        det({"type": "ack", "seq": True}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
        cddl_valid=False,
    ),
    invalid(
        "optional-null",
        "an optional field sent as null instead of being left out",
        det({"type": "listen", "msg": "m1", "from_seq": None}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-9"],
        cddl_valid=False,
    ),
    invalid(
        "state-unknown",
        'opened.state must be "live" or "closed"',
        det({"type": "opened", "msg": "m1", "next_seq": 0, "state": "open"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.4-1"],
        cddl_valid=False,
    ),
    invalid(
        "live-edge-int",
        "live_edge must be a boolean, not 1",
        det({"type": "listen", "msg": "m1", "live_edge": 1}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.7-1"],
        cddl_valid=False,
    ),
    invalid(
        "speed-text",
        "speed must be a number",
        det({"type": "listen", "msg": "m1", "speed": "1"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.7-1"],
        cddl_valid=False,
    ),
    invalid(
        "speed-nan",
        "speed NaN is not a finite number (INVALID_FRAME, not INVALID_LISTEN)",
        "a3" + tstr("msg") + tstr("m1") + tstr("type") + tstr("listen") + tstr("speed") + "f97e00",
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.7-1"],
        cddl_valid=True,
    ),
    invalid(
        "speed-infinity",
        "speed +Infinity is not a finite number",
        "a3" + tstr("msg") + tstr("m1") + tstr("type") + tstr("listen") + tstr("speed") + "f97c00",
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.7-1"],
        cddl_valid=True,
    ),
    invalid(
        "id-bad-character",
        "a message id with a slash",
        det({**OPEN, "msg": "m/1"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-2.3-1"],
        cddl_valid=False,
    ),
    invalid(
        "id-non-ascii",
        "a thread id with a non-ASCII letter",
        det({**OPEN, "thread": "famille-é"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-2.3-1"],
        cddl_valid=False,
    ),
    invalid(
        "id-empty",
        "an empty message id",
        det({"type": "opened", "msg": "", "next_seq": 0, "state": "live"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-2.3-1"],
        cddl_valid=False,
    ),
    invalid(
        "id-65-chars",
        "a message id of 65 characters (one too many)",
        det({**OPEN, "msg": "a" * 65}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-2.3-1"],
        cddl_valid=False,
    ),
    invalid(
        "packets-empty",
        "a chunk with no packet",
        det({"type": "chunk", "seq": 0, "ts": 0, "packets": []}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.2-4"],
        cddl_valid=False,
    ),
    invalid(
        "packet-empty-bytes",
        "a chunk whose packet is an empty byte string",
        det({"type": "chunk", "seq": 0, "ts": 0, "packets": [b""]}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.2-4"],
        cddl_valid=False,
    ),
    invalid(
        "packet-as-text",
        "a packet as a text string instead of a byte string",
        det({"type": "chunk", "seq": 0, "ts": 0, "packets": ["\u00f8"]}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.2-4"],
        cddl_valid=False,
    ),
    invalid(
        "packets-not-array",
        "packets as a single byte string",
        det({"type": "chunk", "seq": 0, "ts": 0, "packets": bytes.fromhex(CELT_FB_20MS_SILENCE)}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.2-4"],
        cddl_valid=False,
    ),
    invalid(
        "packets-51",
        "a chunk with 51 packets (one too many)",
        det(
            {
                "type": "chunk",
                "seq": 0,
                "ts": 0,
                "packets": [bytes.fromhex(CELT_FB_20MS_SILENCE)] * 51,
            }
        ),
        INVALID,
        "INVALID_FRAME",
        ["VXS-4.2-4"],
        cddl_valid=False,
    ),
    invalid(
        "duplicate-key",
        'a map with "seq" twice (RFC 8949 section 5.6)',
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("seq") + "02",
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "duplicate-type",
        'a map with "type" twice, with different values',
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("type") + tstr("live"),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "undefined-value",
        "undefined (f7) as the value of an unknown key",
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("x") + "f7",
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
        cddl_valid=True,
    ),
    invalid(
        "simple-value",
        "unassigned simple value 16 (f0) under an unknown key",
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("x") + "f0",
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "tag-unassigned",
        "tag 4660 (d9 1234) around seq",
        "a2" + tstr("seq") + "d9123401" + tstr("type") + tstr("ack"),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "tag-self-described",
        "the self-described CBOR tag 55799 (d9 d9f7) around the frame",
        "d9d9f7" + ACK_HEX,
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "tag-bignum-seq",
        "seq 1 as a positive bignum (tag 2, c2 41 01)",
        "a2" + tstr("seq") + "c24101" + tstr("type") + tstr("ack"),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "tag-epoch-in-unknown-key",
        "tag 1 (epoch time) under an unknown key",
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("x") + "c100",
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-4"],
    ),
    invalid(
        "key-not-text",
        "an integer key: every key of a frame is a text string",
        "a3" + "05" + "06" + tstr("seq") + "01" + tstr("type") + tstr("ack"),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.1-3"],
        cddl_valid=False,
    ),
    invalid(
        "token-too-long",
        "auth token of 513 characters (limit 512)",
        det({"type": "auth", "token": "t" * 513}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-4"],
        cddl_valid=True,
    ),
    invalid(
        "codec-too-long",
        "a codec name of 33 characters (limit 32)",
        det({**OPEN, "codec": "o" * 33}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-4"],
        cddl_valid=True,
    ),
    invalid(
        "error-code-negative",
        "error code -1",
        det({"type": "error", "code": -1, "name": "X"}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-3"],
        cddl_valid=False,
    ),
    # -- listen parameters: INVALID_LISTEN (the frame matches the schema)
    invalid(
        "listen-two-offsets",
        "from_seq and from_ts together",
        det({"type": "listen", "msg": "m1", "from_seq": 1, "from_ts": 960}),
        LISTEN_ERR,
        "INVALID_LISTEN",
        ["VXS-6.1-2"],
        cddl_valid=True,
    ),
    invalid(
        "listen-seq-and-live-edge",
        "from_seq together with live_edge true",
        det({"type": "listen", "msg": "m1", "from_seq": 0, "live_edge": True}),
        LISTEN_ERR,
        "INVALID_LISTEN",
        ["VXS-6.1-2"],
        cddl_valid=True,
    ),
    invalid(
        "listen-speed-too-slow",
        "speed 0.1 is below 0.25",
        det({"type": "listen", "msg": "m1", "speed": 0.1}),
        LISTEN_ERR,
        "INVALID_LISTEN",
        ["VXS-6.4-2"],
        cddl_valid=True,
    ),
    invalid(
        "listen-speed-too-fast",
        "speed 17 is above 16",
        det({"type": "listen", "msg": "m1", "speed": 17.0}),
        LISTEN_ERR,
        "INVALID_LISTEN",
        ["VXS-6.4-2"],
        cddl_valid=True,
    ),
    invalid(
        "listen-speed-negative",
        "speed -1.0",
        det({"type": "listen", "msg": "m1", "speed": -1.0}),
        LISTEN_ERR,
        "INVALID_LISTEN",
        ["VXS-6.4-2"],
        cddl_valid=True,
    ),
]


# ------------------------------------------------------------------ limits
def chunk_of_size(total: int) -> dict[str, Any]:
    """A chunk with one packet whose deterministic encoding is exactly ``total`` bytes."""
    for n in range(total - 64, total):
        frame = {"type": "chunk", "seq": 0, "ts": 0, "packets": [b"\xfc" + b"\x00" * (n - 1)]}
        if len(cbor2.dumps(frame, canonical=True)) == total:
            return frame
    raise AssertionError(total)


def nested(levels: int) -> dict[str, Any]:
    """ack 1 with an unknown key holding ``levels`` nested arrays."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return {"type": "ack", "seq": 1, "x": value}


at_limit = chunk_of_size(MAX_FRAME)
over_limit = chunk_of_size(MAX_FRAME + 1)
# Frame head of a chunk whose only packet announces 65536 bytes; the packet bytes
# never come: the announcement alone is over the limit.
announce_head = ("a4" + tstr("ts") + "00" + tstr("seq") + "00" + tstr("type") + tstr("chunk")
                 + tstr("packets") + "81" + "5a00010000")  # fmt: skip
# A head announcing a frame that ends exactly at the limit, but truncated.
exact_prefix_len = 1 + 3 + 1 + 4 + 1 + 5 + 6 + 8 + 1 + 3  # = 33 bytes before the packet bytes
LIMITS = [
    valid(
        "frame-at-size-limit",
        "a chunk frame of exactly 65536 bytes (one 65503-byte packet; not valid Opus, which "
        "only the pipeline checks)",
        hexform(at_limit),
        ["VXS-3.2-1"],
    ),
    invalid(
        "frame-over-size-limit",
        "the same chunk one byte larger: 65537 bytes",
        det(over_limit),
        TOO_LARGE,
        "FRAME_TOO_LARGE",
        ["VXS-3.2-1"],
    ),
    invalid(
        "frame-too-large-by-head",
        "the first 35 bytes of a chunk whose packet head announces 65536 bytes: rejected from "
        "the head alone, without waiting for the body",
        announce_head,
        TOO_LARGE,
        "FRAME_TOO_LARGE",
        ["VXS-3.2-1"],
    ),
    invalid(
        "text-head-announces-4gib",
        "an unknown key whose text head announces 2^32 bytes",
        "a3" + tstr("seq") + "01" + tstr("type") + tstr("ack") + tstr("x") + "7b0000000100000000",
        TOO_LARGE,
        "FRAME_TOO_LARGE",
        ["VXS-3.2-1"],
    ),
    invalid(
        "frame-at-limit-truncated",
        "a head announcing a frame of exactly 65536 bytes, cut off after 100 bytes: not too "
        "large, but truncated",
        "a4"
        + tstr("ts")
        + "00"
        + tstr("seq")
        + "00"
        + tstr("type")
        + tstr("chunk")
        + tstr("packets")
        + "81"
        + f"59{MAX_FRAME - 33:04x}"
        + "00" * 67,
        MALFORMED,
        "MALFORMED_CBOR",
        ["VXS-3.1-2", "VXS-3.2-1"],
    ),
    valid(
        "nesting-depth-8",
        "the frame map plus 7 nested arrays under an unknown key: depth 8",
        ACK,
        ["VXS-3.2-2", "VXS-3.1-5"],
        cbor_hex=det(nested(7)),
        decoded=nested(7),
    ),
    invalid(
        "nesting-depth-9",
        "the frame map plus 8 nested arrays: depth 9",
        det(nested(8)),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-2"],
        cddl_valid=True,
    ),
    valid(
        "seq-max",
        "seq and ts at 2^53-1",
        {
            "type": "chunk",
            "seq": MAX_U53,
            "ts": MAX_U53,
            "packets": [{"hex": CELT_FB_20MS_SILENCE}],
        },
        ["VXS-3.2-3"],
    ),
    valid(
        "packets-50",
        "a chunk with 50 packets of 20 ms: 1 s of audio",
        {"type": "chunk", "seq": 0, "ts": 0, "packets": [{"hex": CELT_FB_20MS_SILENCE}] * 50},
        ["VXS-4.2-4"],
    ),
    valid(
        "token-512",
        "an auth token of 512 characters",
        {"type": "auth", "token": "t" * 512},
        ["VXS-3.2-4"],
    ),
    valid(
        "detail-1024-code-points",
        "an error detail of 1024 code points (2048 bytes of UTF-8): limits count code points",
        {"type": "error", "code": 500, "name": "INTERNAL_ERROR", "detail": "\u00e9" * 1024},
        ["VXS-3.2-4"],
    ),
    invalid(
        "detail-1025-code-points",
        "an error detail of 1025 code points",
        det({"type": "error", "code": 500, "name": "INTERNAL_ERROR", "detail": "d" * 1025}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-4"],
        cddl_valid=True,
    ),
    invalid(
        "name-65-code-points",
        "an error name of 65 code points (limit 64)",
        det({"type": "error", "code": 500, "name": "N" * 65}),
        INVALID,
        "INVALID_FRAME",
        ["VXS-3.2-4"],
        cddl_valid=True,
    ),
]
assert exact_prefix_len == 33
assert len(bytes.fromhex(announce_head)) == 35


def main() -> None:
    files = {"valid_frames.json": VALID, "invalid_frames.json": INVALID_VECTORS,
             "limits.json": LIMITS}  # fmt: skip
    seen: set[str] = set()
    for name, vectors in files.items():
        for v in vectors:
            assert v["id"] not in seen, v["id"]
            seen.add(v["id"])
        text = json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(vectors)} vectors")
    print(f"total: {len(seen)}")


if __name__ == "__main__":
    main()
