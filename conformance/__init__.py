"""The voxer-stream conformance suite: black-box checks of any server (and client).

It talks to a server only over the wire (HTTP/2, WebSocket) and cites, for every
check, the requirement of ``spec/protocol.md`` it verifies. It uses the sans-IO
``voxer_stream.wire`` codec and the client library's HTTP/2 connection, as any
client would, and nothing of the reference server itself. See ``conformance/README.md``.
"""

__version__ = "1.0"
