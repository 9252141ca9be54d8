"""The sans-IO core: the codec never fails in an unexpected way, frames round-trip,
and the upload state machine is the table the spec gives (sections 3 and 5).

As h11's fuzzing does: whatever bytes arrive, whole or one at a time, the decoder
yields frames or raises ``ProtocolError`` with a registry code, never anything else.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxer_stream.wire import (
    MAX_FRAME_SIZE,
    Ack,
    Auth,
    Chunk,
    Close,
    Closed,
    End,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Listen,
    Live,
    MessageInfo,
    Open,
    Opened,
    ProtocolError,
    decode_frame,
    encode_frame,
    frame_from_obj,
    frame_to_obj,
)
from voxer_stream.wire.frames import MAX_UINT
from voxer_stream.wire.listen import ListenChecker, ListenState
from voxer_stream.wire.upload import UploadClient, UploadServer, UploadState

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
uints = st.integers(0, MAX_UINT)
packets = st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=50).map(tuple)
states = st.sampled_from(["live", "closed"])

FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Open, msg=ids, thread=ids, codec=st.just("opus"), created=uints),
    st.builds(Chunk, seq=uints, ts=uints, packets=packets),
    st.builds(Close, chunks=uints),
    st.builds(Opened, msg=ids, next_seq=uints, state=states),
    st.builds(Ack, seq=uints),
    st.builds(Closed, msg=ids, chunks=uints, duration=uints),
    st.builds(Listen, msg=ids, from_seq=st.none() | uints),
    st.builds(Listen, msg=ids, from_ts=uints, speed=st.sampled_from([0.0, 0.5, 1.0, 1.5, 16.0])),
    st.builds(Listen, msg=ids, live_edge=st.just(True)),
    st.builds(
        MessageInfo,
        msg=ids,
        thread=ids,
        sender=ids,
        codec=st.just("opus"),
        created=uints,
        state=states,
        start_seq=uints,
    ),
    st.builds(Live, seq=uints),
    st.builds(End, chunks=uints, duration=uints),
    st.builds(Auth, token=st.text(max_size=100)),
    st.builds(
        Error,
        code=st.sampled_from([int(c) for c in ErrorCode]),
        name=st.sampled_from([c.name for c in ErrorCode]),
        detail=st.text(max_size=50),
        seq=st.none() | uints,
    ),
)


@given(FRAMES)
def test_every_frame_round_trips(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert frame_from_obj(frame_to_obj(frame)) == frame
    # deterministic encoding: decoding and re-encoding changes nothing (VXS-3.1-1)
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data


def feed(chunks: list[bytes]) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for data in chunks:
        decoder.feed(data)
        frames.extend(decoder)
    return frames


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_frames_or_a_protocol_error(data: bytes) -> None:
    """Fed whole or byte by byte: the same frames, or a ProtocolError with a registry code."""
    outcomes = []
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        try:
            outcomes.append(("frames", feed(pieces)))
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode)
            outcomes.append(("error", exc.code))
    assert outcomes[0] == outcomes[1]


@given(st.lists(FRAMES, max_size=5), st.binary(max_size=40), st.integers(1, 7))
def test_valid_frames_then_garbage(frames: list[Frame], garbage: bytes, step: int) -> None:
    """A stream of valid frames decodes to them, in any chunking; garbage after them
    either decodes or raises a ProtocolError, never loses the frames before it."""
    stream = b"".join(encode_frame(f) for f in frames)
    pieces = [stream[i : i + step] for i in range(0, len(stream), step)]
    assert feed(pieces) == frames
    decoder = FrameDecoder()
    decoder.feed(stream + garbage)
    got: list[Frame] = []
    try:
        for frame in decoder:
            got.append(frame)
    except ProtocolError:
        pass
    assert got[: len(frames)] == frames


@given(
    st.recursive(
        st.integers() | st.text() | st.binary() | st.booleans() | st.none(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_any_cbor_value_is_a_frame_or_invalid(value: object) -> None:
    try:
        data = cbor2.dumps(value)
    except (ValueError, OverflowError):
        return
    try:
        decode_frame(data)
    except ProtocolError as exc:
        assert exc.code in (
            ErrorCode.INVALID_FRAME,
            ErrorCode.INVALID_LISTEN,
            ErrorCode.FRAME_TOO_LARGE,
        )


def test_oversized_frame_is_refused_from_its_head() -> None:
    """VXS-3.2-1: the head alone says the frame is too large; no need to buffer it."""
    decoder = FrameDecoder()
    decoder.feed(b"\x5a" + (MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError) as caught:
        list(decoder)
    assert caught.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError):  # VXS-3.1-7: no resynchronisation
        list(decoder)


# -- the upload state machine (spec section 5) -------------------------------------

OPEN = Open(msg="m", thread="t", created=0)
CHUNK = Chunk(seq=0, ts=0, packets=(b"\x78\x00",))


def server_after(*frames: Frame, next_seq: int = 0, closed: bool = False) -> UploadServer:
    server = UploadServer()
    server.receive_data(encode_frame(OPEN))
    assert server.next_frame() == OPEN
    server.accept_open(next_seq, closed)
    for frame in frames:
        server.receive_data(encode_frame(frame))
        assert server.next_frame() == frame
    return server


@pytest.mark.parametrize(
    ("state_frames", "frame", "code"),
    [
        ((), CHUNK, ErrorCode.UNEXPECTED_FRAME),  # before open (VXS-5.1-1)
        ((OPEN,), OPEN, ErrorCode.UNEXPECTED_FRAME),  # second open (VXS-5.1-2)
        ((OPEN,), Ack(seq=0), ErrorCode.UNEXPECTED_FRAME),  # wrong direction
        ((OPEN,), Chunk(seq=1, ts=0, packets=(b"\x78",)), ErrorCode.SEQUENCE_GAP),
        ((OPEN,), Close(chunks=1), ErrorCode.CLOSE_MISMATCH),
    ],
)
def test_upload_server_refuses(
    state_frames: tuple[Frame, ...], frame: Frame, code: ErrorCode
) -> None:
    server = UploadServer()
    if state_frames:
        server.receive_data(encode_frame(OPEN))
        server.next_frame()
        server.accept_open(0, False)
    server.receive_data(encode_frame(frame))
    with pytest.raises(ProtocolError) as caught:
        server.next_frame()
    assert caught.value.code == code
    assert server.state is UploadState.ERROR
    assert server.next_frame() is None  # an errored machine accepts nothing more


def test_upload_server_happy_path_and_acks() -> None:
    server = server_after(CHUNK, Chunk(seq=1, ts=960, packets=(b"\x78",)))
    assert decode_frame(server.ack(0)) == Ack(seq=0)
    assert server.ack(0) == b""  # acks never go backwards or repeat (VXS-5.3-4)
    with pytest.raises(RuntimeError):
        server.ack(2)  # never for a chunk not received
    server.receive_data(encode_frame(Close(chunks=2)))
    assert server.next_frame() == Close(chunks=2)
    assert decode_frame(server.closed(1920)) == Closed(msg="m", chunks=2, duration=1920)
    assert server.state is UploadState.DONE


def test_upload_server_resend_below_next_seq_is_passed_on() -> None:
    server = server_after(next_seq=5)
    resent = Chunk(seq=3, ts=0, packets=(b"\x78",))
    server.receive_data(encode_frame(resent))
    assert server.next_frame() == resent  # the caller compares it (VXS-5.4-1)
    assert server.next_seq == 5


def test_closed_message_refuses_chunks() -> None:
    server = server_after(next_seq=3, closed=True)
    server.receive_data(encode_frame(Chunk(seq=3, ts=0, packets=(b"\x78",))))
    with pytest.raises(ProtocolError) as caught:
        server.next_frame()
    assert caught.value.code == ErrorCode.MESSAGE_CLOSED


def test_upload_client_resumes_from_server_position() -> None:
    client = UploadClient(OPEN)
    client.start()
    client.receive_data(encode_frame(Opened(msg="m", next_seq=0, state="live")))
    for seq in range(5):
        client.send_chunk(Chunk(seq=seq, ts=seq * 960, packets=(b"\x78",)))
    client.receive_data(encode_frame(Ack(seq=1)))
    assert list(client.unacked) == [2, 3, 4]
    client.start()  # reconnect
    client.receive_data(encode_frame(Opened(msg="m", next_seq=3, state="live")))
    assert [decode_frame(encode_frame(c)).seq for c in client.unacked.values()] == [3, 4]
    with pytest.raises(ProtocolError):
        client.receive_data(encode_frame(Ack(seq=9)))  # an ack for a chunk never sent


def test_listen_checker_catches_drop_dup_and_bad_end() -> None:
    info = MessageInfo(
        msg="m", thread="t", sender="s", codec="opus", created=0, state="live", start_seq=2
    )
    for frames, ok in [
        ([info, Chunk(seq=2, ts=0, packets=(b"x",)), Live(seq=3), End(chunks=3, duration=1)], True),
        ([info, Chunk(seq=3, ts=0, packets=(b"x",))], False),  # skipped 2
        ([info, Chunk(seq=2, ts=0, packets=(b"x",)), Chunk(seq=2, ts=0, packets=(b"x",))], False),
        ([info, End(chunks=5, duration=0)], False),
        ([Chunk(seq=0, ts=0, packets=(b"x",))], False),  # no message frame first
    ]:
        checker = ListenChecker()
        if ok:
            for frame in frames:
                checker.apply(frame)
            assert checker.state is ListenState.ENDED
        else:
            with pytest.raises(ProtocolError):
                for frame in frames:
                    checker.apply(frame)
