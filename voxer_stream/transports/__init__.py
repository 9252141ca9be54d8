"""Transports: the ASGI app (REST + HTTP/2 streams + WebSocket) and the server runner."""
