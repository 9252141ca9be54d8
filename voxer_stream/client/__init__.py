"""The voxer-stream client library (trio): talk, listen, REST, over HTTP/2 or WebSocket.

Imports only ``voxer_stream.wire`` and ``voxer_stream.media``.
"""

from .h2conn import (
    ClientError,
    ConnectionLost,
    H2Connection,
    H2ConnectionError,
    H2Stream,
    ServerError,
    StreamReset,
)
from .listener import ListenInterrupted, ListenResult, collect, listen
from .rest import Rest
from .talker import UploadInterrupted, chunks_from_packets, realtime, talk
from .ws import ws_collect, ws_listen, ws_talk

__all__ = [
    "ClientError",
    "ConnectionLost",
    "H2Connection",
    "H2ConnectionError",
    "H2Stream",
    "ListenInterrupted",
    "ListenResult",
    "Rest",
    "ServerError",
    "StreamReset",
    "UploadInterrupted",
    "chunks_from_packets",
    "collect",
    "listen",
    "realtime",
    "talk",
    "ws_collect",
    "ws_listen",
    "ws_talk",
]
