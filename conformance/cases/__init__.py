"""One module per part of the spec; importing this package registers every case."""

from .. import peer_listener, peer_talker  # noqa: F401  (client-role cases, played by the peer)
from . import (  # noqa: F401
    claim,
    encoding,
    errors,
    frames,
    http2,
    listen,
    opus,
    push,
    rest,
    service,
    timeline,
    upload,
    webrtc,
    websocket,
)
