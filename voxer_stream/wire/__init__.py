"""The sans-IO protocol core: frames, their CBOR encoding, the state machines.

No I/O and no async framework here (as in h11 and h2): bytes in, frames out.
"""

from .codec import MAX_FRAME_SIZE, FrameDecoder, decode_frame, encode_frame
from .errors import ErrorCode, ProtocolError
from .frames import (
    Ack,
    Auth,
    Chunk,
    Close,
    Closed,
    End,
    Error,
    Frame,
    Listen,
    Live,
    MessageInfo,
    Open,
    Opened,
    frame_from_obj,
    frame_to_obj,
)

__all__ = [
    "MAX_FRAME_SIZE",
    "Ack",
    "Auth",
    "Chunk",
    "Close",
    "Closed",
    "End",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "Listen",
    "Live",
    "MessageInfo",
    "Open",
    "Opened",
    "ProtocolError",
    "decode_frame",
    "encode_frame",
    "frame_from_obj",
    "frame_to_obj",
]
