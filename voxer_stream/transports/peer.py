"""What a connection's server knows of its two ends, for the ASGI scope it builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def socket_address(sock: Any, peer: bool) -> tuple[str, int] | None:
    """``(host, port)`` of the socket's peer (or its own end), None once it is gone."""
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    return (str(address[0]), int(address[1]))


@dataclass(frozen=True)
class Peer:
    #: "http" or "https" (the WebSocket scope says "ws" or "wss").
    scheme: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    #: The app's lifespan state; each scope gets a shallow copy (ASGI spec).
    state: dict[str, Any]

    @classmethod
    def of(cls, sock: Any, *, tls: bool, state: dict[str, Any]) -> Peer:
        return cls(
            "https" if tls else "http",
            socket_address(sock, True),
            socket_address(sock, False),
            state,
        )
