"""The ASGI application: REST on Quart (trio), the streaming routes as raw ASGI.

``create_app`` returns one ASGI callable. Requests for the live path (upload,
listen, WebSocket) go straight to ``streams`` and ``websocket``; everything else
is the quart-trio app below. REST errors are JSON objects carrying the same
registry code and name as an error frame (spec section 8). ``/`` and ``/app/`` serve
the web client (the static files of ``voxer_stream/web``).
"""

from __future__ import annotations

import importlib.resources
import io
import re
from typing import Any, Final

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..media.image import MAX_BYTES as IMAGE_MAX_BYTES
from ..media.ogg import write_ogg_opus
from ..service.identity import Authenticated, bearer_token
from ..store.base import Account
from ..wire import ErrorCode, ProtocolError
from .rest_service import add_service_routes, json_body
from .streams import Receive, Scope, Send, Services, listen, upload
from .webrtc import SDP, RtcGateway, monitor_own, whep_listen
from .websocket import serve_websocket

LISTEN_PATH = re.compile(r"/v1/messages/([^/]+)/listen")
#: The largest REST request body the server reads: an image (JSON and SDP offers are
#: held to 1 MiB).
REST_BODY_LIMIT: Final = IMAGE_MAX_BYTES


def _error_body(code: ErrorCode, detail: str) -> dict[str, Any]:
    return {"error": {"code": int(code), "name": code.name, "detail": detail}}


def create_rest_app(services: Services, rtc: RtcGateway | None = None) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    # "//" in a path is an empty segment (an empty id): NOT_FOUND, not a redirect to a
    # route the client did not ask for (werkzeug merges slashes by default).
    app.url_map.merge_slashes = False
    # REST bodies are JSON objects (1 MiB at most, rest_service.json_body), SDP offers
    # and images; the live path does not come here.
    app.config["MAX_CONTENT_LENGTH"] = REST_BODY_LIMIT
    store = services.hub.store

    @app.before_request
    async def read_the_body_first() -> None:
        # Before anything can refuse the request: hypercorn closes a kept-alive HTTP/1.1
        # connection whose request body was left unread, and a client that had already
        # sent its next request on it gets no answer ("server disconnected", seen by the
        # conformance suite after a 401 to a POST). Bounded by MAX_CONTENT_LENGTH.
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            await request.get_data()

    @app.errorhandler(ProtocolError)
    async def protocol_error(exc: ProtocolError) -> Any:
        headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        return jsonify(_error_body(exc.code, exc.detail)), exc.code.http_status, headers

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> tuple[Any, int]:
        # The registry's status, not the framework's: a method a path does not have
        # is NOT_FOUND with 404 (VXS-8-5), not a 405 that no registry entry carries.
        # A crash reaches here as Quart's 500 (it has logged the traceback): it is
        # INTERNAL_ERROR, never disguised as the client's fault.
        status = exc.code or 500
        if status in (404, 405):
            code = ErrorCode.NOT_FOUND
        elif status >= 500:
            code = ErrorCode.INTERNAL_ERROR
        else:
            code = ErrorCode.INVALID_REQUEST
        detail = "the server failed" if status >= 500 else exc.description or ""
        return jsonify(_error_body(code, detail)), code.http_status

    def text(data: dict[str, Any], key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{key!r} must be a string")
        return value

    async def authed() -> Authenticated:
        return await services.identity.authenticate_session(
            bearer_token(request.headers.get("Authorization"))
        )

    async def current() -> Account:
        return (await authed()).account

    @app.get("/v1/health")
    async def health() -> Any:
        answer: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "live_messages": len(services.hub),
        }
        if services.membership is not None:
            answer["member"] = services.membership.member
            answer["members"] = list(services.membership.ring.members)
            # Of the live messages held here, those this process owns (the ring's
            # choice: it commits them); the others are mirrors of another's.
            answer["owned_messages"] = sum(not live.mirror for live in services.hub.held())
        return answer

    @app.post("/v1/accounts")
    async def register() -> Any:
        data = await json_body()
        account = await services.identity.register(text(data, "username"), text(data, "password"))
        return {"id": account.id, "username": account.username}, 201

    @app.get("/v1/messages/<message_id>/audio.opus")
    async def export(message_id: str) -> Any:
        account = await current()
        record = await services.threads.message(account, message_id)
        if record.kind != "audio":
            raise ProtocolError(ErrorCode.NOT_FOUND, f"message {message_id!r} has no audio")
        packets: list[bytes] = []
        seq = 0
        while seq < record.chunks:
            batch = await store.read_chunks(record.id, seq, 1024)
            if not batch:
                break
            for chunk in batch:
                packets.extend(chunk.packets)
            seq = batch[-1].seq + 1
        out = io.BytesIO()
        write_ogg_opus(packets, out)
        return Response(
            out.getvalue(),
            content_type="audio/ogg; codecs=opus",
            headers={"Content-Disposition": f'attachment; filename="{record.id}.opus"'},
        )

    add_service_routes(app, services, authed)
    if rtc is not None:
        add_webrtc_routes(app, rtc, current)
    add_web_routes(app)
    return app


#: The web client's files (the package ``voxer_stream.web``) and their media types.
WEB_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
WEB_HEADERS: Final = {
    # Only the page's own files and the server's own API; no inline script, no framing.
    # blob: images are the thumbnails the page fetched with its token (an <img src>
    # cannot send one).
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_web_routes(app: QuartTrio) -> None:
    """The web client: the page at ``/``, its files at ``/app/{name}``, as they are on
    disk (read at each request: a few KB, and an edited file shows on reload)."""
    files = importlib.resources.files("voxer_stream.web")

    def web_file(name: str) -> Response:
        if name not in WEB_FILES:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no file {name!r} in the web client")
        data = files.joinpath(name).read_bytes()
        return Response(data, content_type=WEB_FILES[name], headers=WEB_HEADERS)

    @app.get("/")
    async def web_page() -> Any:
        return web_file("index.html")

    @app.get("/app/<name>")
    async def web_asset(name: str) -> Any:
        return web_file(name)


def add_webrtc_routes(app: QuartTrio, rtc: RtcGateway, current: Any) -> None:
    """The WebRTC binding's signalling (spec section 12): WHIP and WHEP over REST."""

    async def offer() -> str:
        data = await request.get_data(as_text=False)
        try:
            return data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "the SDP offer is not UTF-8", "VXS-12-2"
            ) from None

    def created(kind: str, session_id: str, answer: str, **extra: str) -> Response:
        return Response(
            answer,
            status=201,
            content_type=SDP,
            headers={"Location": f"/v1/{kind}/{session_id}", **extra},
        )

    @app.post("/v1/threads/<thread_id>/whip")
    async def whip(thread_id: str) -> Any:
        account = await current()
        session, answer = await rtc.whip(account, thread_id, request.args.get("msg"), await offer())
        return created("whip", session.id, answer, **{"Voxer-Message": session.msg})

    @app.get("/v1/whip/<session_id>")
    async def whip_status(session_id: str) -> Any:
        return await rtc.status(await current(), session_id, "whip")

    @app.delete("/v1/whip/<session_id>")
    async def whip_end(session_id: str) -> Any:
        return await rtc.end(await current(), session_id, "whip")

    @app.post("/v1/messages/<message_id>/whep")
    async def whep_message(message_id: str) -> Any:
        account = await current()
        listen = whep_listen(message_id, request.query_string)
        session, answer = await rtc.whep_message(account, listen, await offer())
        return created("whep", session.id, answer)

    @app.post("/v1/threads/<thread_id>/whep")
    async def whep_thread(thread_id: str) -> Any:
        account = await current()
        own = monitor_own(request.query_string)
        session, answer = await rtc.whep_thread(account, thread_id, await offer(), own=own)
        return created("whep", session.id, answer)

    @app.get("/v1/whep/<session_id>")
    async def whep_status(session_id: str) -> Any:
        return await rtc.status(await current(), session_id, "whep")

    @app.delete("/v1/whep/<session_id>")
    async def whep_end(session_id: str) -> Any:
        return await rtc.end(await current(), session_id, "whep")


class Router:
    """Sends the live path to the raw ASGI handlers, the rest to Quart."""

    def __init__(self, services: Services, rtc: RtcGateway | None = None) -> None:
        self.services = services
        # Quart's own ASGI types are narrower TypedDicts than our plain dicts.
        self.rest: Any = create_rest_app(services, rtc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        if kind == "http":
            if path == "/v1/upload" and scope["method"] == "POST":
                await upload(scope, receive, send, self.services)
                return
            match = LISTEN_PATH.fullmatch(path)
            if match and scope["method"] == "GET":
                await listen(scope, receive, send, self.services, match.group(1))
                return
        elif kind == "websocket" and path == "/v1/ws":
            await serve_websocket(scope, receive, send, self.services)
            return
        await self.rest(scope, receive, send)
