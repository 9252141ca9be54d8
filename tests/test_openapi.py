"""The REST surface against ``spec/openapi.yaml``: the document, its routes, and schemathesis.

Three kinds of test:

* the document: a valid OpenAPI 3.1 description (schemathesis loads and validates it),
  every operation named, summarised and secured as VXS-8-1 says, and every error it
  documents a registry pair whose HTTP status is the one it is listed under (VXS-9-1);
* the routes: the paths and methods of the document are exactly those the server has
  (the Quart app's URL map plus the three raw ASGI routes of the live path);
* the server: property-based tests (``schema.parametrize()``) of every REST operation
  against a real server process, authenticated, with some path parameters and body
  fields swapped for ids that exist (a thread, messages, an image, accounts), checking
  that nothing is a 5xx or a crash in disguise, and that every status code, content
  type, response header and response body is the documented one.

The live path (``/v1/upload``, ``/v1/messages/{id}/listen``, ``/v1/ws``) and the SSE
stream are listed in the document (tag ``streaming``) but not property-tested.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import hypothesis
import jsonschema_rs
import pytest
import schemathesis
import yaml
from conftest import server_process
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import InternalServerError

from voxer_stream.transports.app import create_rest_app
from voxer_stream.wire import ErrorCode

SPEC = Path(__file__).resolve().parent.parent / "spec" / "openapi.yaml"
RAW: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

#: The operations that need no bearer token: VXS-8-1's three, and the web client's files.
PUBLIC = {"getHealth", "register", "login", "getWebPage", "getWebAsset"}
#: Routes the ``Router`` serves before Quart sees them (the live path, spec 10 and 11).
RAW_ASGI_ROUTES = {
    ("POST", "/v1/upload"),
    ("GET", "/v1/messages/{message_id}/listen"),
    ("GET", "/v1/ws"),
}
#: The spec's example password, so that its examples log in and change a password.
PASSWORD = "correct horse"

# Offers are sent as they are: SDP is text (VXS-12-2: read as SDP whatever the label).
schemathesis.serializer.alias("application/sdp", "text/plain")

CONFIG = schemathesis.Config.from_dict(
    {
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": False},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "generation": {"mode": "all", "deterministic": True, "database": "none"},
    }
)
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)
rest = schema.exclude(tag="streaming")


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in RAW["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` chain."""
    while "$ref" in node:
        target: Any = RAW
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


# -- the document ----------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    assert RAW["openapi"].startswith("3.1.")
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises on the first error
    loaded = list(schema.get_all_operations())
    assert loaded and all(isinstance(result, Ok) for result in loaded), [
        result.err() for result in loaded if not isinstance(result, Ok)
    ]
    assert len(loaded) == len(list(operations()))


def test_every_operation_is_named_summarised_and_secured() -> None:
    assert RAW["security"] == [{"bearerAuth": []}]
    assert RAW["components"]["securitySchemes"]["bearerAuth"] == {
        **RAW["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    ids = []
    for method, path, operation in operations():
        where = f"{method} {path}"
        ids.append(operation.get("operationId"))
        assert operation.get("summary"), where
        public = operation.get("security") == []
        assert public == (operation.get("operationId") in PUBLIC), where
        streaming = "streaming" in operation.get("tags", [])
        if not public and not streaming:
            assert "401" in operation["responses"], f"{where} does not document 401"
    assert None not in ids and len(ids) == len(set(ids)), "operationIds must be unique"


def registry_pairs() -> set[tuple[int, str]]:
    variants = RAW["components"]["schemas"]["ErrorObject"]["oneOf"]
    return {(v["properties"]["code"]["const"], v["properties"]["name"]["const"]) for v in variants}


def test_the_error_schema_is_the_registry() -> None:
    assert registry_pairs() == {(int(code), code.name) for code in ErrorCode}


def test_every_documented_error_has_its_registry_status() -> None:
    """An error listed under status S may only be a code whose HTTP status is S (VXS-8-5)."""
    checked = 0
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            content = resolve(response).get("content", {}).get("application/json")
            if content is None or not status.isdigit() or int(status) < 400:
                continue
            body = resolve(content["schema"])
            codes = body.get("properties", {}).get("error", {}).get("properties", {})
            for code in codes.get("code", {}).get("enum", []):
                assert ErrorCode(code).http_status == int(status), f"{method} {path} {status}"
                checked += 1
    assert checked > 100


def examples() -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Every example of the document with the schema it illustrates."""
    for method, path, operation in operations():
        where = f"{method} {path}"
        for parameter in map(resolve, operation.get("parameters", [])):
            if "example" in parameter:
                yield f"{where} {parameter['name']}", parameter["schema"], parameter["example"]
            for name, example in parameter.get("examples", {}).items():
                yield f"{where} {parameter['name']} {name}", parameter["schema"], example["value"]
        bodies = [("request", operation.get("requestBody", {}))]
        bodies += [(status, resolve(r)) for status, r in operation["responses"].items()]
        for what, body in bodies:
            for media_type, content in body.get("content", {}).items():
                label = f"{where} {what} {media_type}"
                if "example" in content:
                    yield label, content["schema"], content["example"]
                for name, example in content.get("examples", {}).items():
                    yield f"{label} {name}", content["schema"], example["value"]
    for name, definition in RAW["components"]["schemas"].items():
        if "example" in definition:
            yield name, {"$ref": f"#/components/schemas/{name}"}, definition["example"]


def test_every_example_fits_its_schema() -> None:
    found = list(examples())
    assert len(found) > 30
    for label, node, example in found:
        validator = jsonschema_rs.Draft202012Validator({**node, "components": RAW["components"]})
        errors = [error.message for error in validator.iter_errors(example)]
        assert not errors, f"{label}: {errors}"


# -- the routes --------------------------------------------------------------------------


def server_routes() -> set[tuple[str, str]]:
    """Every (method, path) the server answers, paths in OpenAPI's ``{name}`` form."""
    services = SimpleNamespace(
        hub=SimpleNamespace(store=None), threads=None, messages=None, timeline=None
    )
    app = create_rest_app(services, rtc=object())  # type: ignore[arg-type]
    routes = set(RAW_ASGI_ROUTES)
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {
            (method, path) for method in rule.methods or () if method not in {"HEAD", "OPTIONS"}
        }
    return routes


def test_the_document_has_exactly_the_server_routes() -> None:
    documented = {(method, path) for method, path, _ in operations()}
    routes = server_routes()
    assert documented - routes == set(), "documented but not served"
    assert routes - documented == set(), "served but not documented"


# -- the server --------------------------------------------------------------------------


@dataclass
class Api:
    url: str
    token: str
    #: Operations that get another account's (or session's) token: they end sessions
    #: or change a password, which would spoil the main token for the others.
    tokens: dict[str, str] = field(default_factory=dict)
    #: Operations that get a fresh token per request (``DELETE /v1/sessions/current``
    #: ends the session it is sent with).
    pools: dict[str, list[str]] = field(default_factory=dict)
    #: Values that exist, by parameter or body member name, to swap into generated cases.
    real: dict[str, list[Any]] = field(default_factory=dict)
    #: The same, for one operation (destructive ones get their own resources).
    real_for: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def token_for(self, label: str) -> str:
        pool = self.pools.get(label)
        if pool:
            return pool.pop() if len(pool) > 1 else pool[0]
        return self.tokens.get(label, self.token)


#: Set by the ``api`` fixture; read by the hooks below while cases are drawn.
API: Api | None = None
#: Examples per operation; raise it (``OPENAPI_MAX_EXAMPLES=500``) for a deeper run.
MAX_EXAMPLES = int(os.environ.get("OPENAPI_MAX_EXAMPLES", "25"))
#: Sessions for ``DELETE /v1/sessions/{session_id}``, one per request (plus spare).
SESSION_POOL = MAX_EXAMPLES + 5


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A server process with four accounts, two threads, messages of every kind, an
    image, a push subscription and WebRTC sessions; the tokens the requests carry."""
    global API
    data = tmp_path_factory.mktemp("openapi") / "data"
    options = ("--synchronous", "NORMAL")
    with server_process(data, *options) as server, httpx.Client(base_url=server.url) as http:

        def call(method: str, path: str, token: str | None = None, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            headers.update(kw.pop("headers", {}))
            response = http.request(method, path, headers=headers, **kw)
            assert response.status_code in (200, 201), (method, path, response.text)
            return response.json()

        def login(username: str, device: str) -> dict[str, Any]:
            body = {"username": username, "password": PASSWORD, "device": device}
            return call("POST", "/v1/sessions", json=body)  # type: ignore[no-any-return]

        users = {}
        for name in ("alice", "bob", "carol", "dave"):
            users[name] = call(
                "POST", "/v1/accounts", json={"username": name, "password": PASSWORD}
            )
        # Every login now, before the generated ones fail: 5 failures for a username
        # (100 from an address) make its logins RATE_LIMITED for 15 minutes (VXS-8-9).
        alice = login("alice", "main")["token"]
        revokers = [login("alice", f"revoker {n}")["token"] for n in range(SESSION_POOL)]
        revoked = [login("alice", f"revoked {n}")["session_id"] for n in range(3)]
        bob = login("bob", "phone")["token"]
        dave = login("dave", "laptop")["token"]

        for thread_id, people in (("t-general", ["bob"]), ("t-victim", ["bob", "carol"])):
            body = {"id": thread_id, "title": thread_id, "participants": people}
            call("POST", "/v1/threads", alice, json=body)
        for message_id in ("m-hello", "m-recall"):
            body = {"id": message_id, "text": f"hello world {message_id}"}
            call("POST", "/v1/threads/t-general/messages", alice, json=body)
        call("POST", "/v1/threads/t-general/messages", bob, json={"id": "m-bob", "text": "hi"})
        media = call(
            "POST", "/v1/media", alice, content=png(), headers={"Content-Type": "image/png"}
        )["id"]
        body = {"id": "m-image", "kind": "image", "media": media, "caption": "a red square"}
        call("POST", "/v1/threads/t-general/messages", alice, json=body)
        body = {"id": "m-where", "kind": "location", "location": {"lat": 48.85, "lon": 2.35}}
        call("POST", "/v1/threads/t-general/messages", alice, json=body)
        call("PUT", "/v1/contacts/bob", alice, json={})
        call("PUT", "/v1/messages/m-hello/reactions/%F0%9F%91%8D", bob)
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        subscription = {
            "endpoint": "https://push.invalid/send/1",
            "keys": {"p256dh": b64url(point), "auth": b64url(os.urandom(16))},
        }
        sub = call("POST", "/v1/push/subscriptions", alice, json=subscription)["id"]
        # WebRTC sessions that never connect (the offer's only candidate is in TEST-NET-1):
        # the server gives them up after 30 s (VXS-12-10), long after this run.
        offer = RAW["components"]["schemas"]["SdpOffer"]["example"]
        rtc = {}
        for kind, path in (
            ("whip", "/v1/threads/t-general/whip?msg=m-webrtc-1"),
            ("whep", "/v1/messages/m-hello/whep"),
        ):
            response = http.post(path, content=offer, headers={"Authorization": f"Bearer {alice}"})
            assert response.status_code == 201, response.text
            rtc[kind] = response.headers["Location"].rsplit("/", 1)[1]

        API = Api(
            url=server.url,
            token=alice,
            tokens={"POST /v1/accounts/me/password": dave},
            pools={"DELETE /v1/sessions/{session_id}": revokers},
            real={
                "thread_id": ["t-general"],
                # m-webrtc-1: an audio message, live while the WHIP session lasts
                "message_id": ["m-hello", "m-bob", "m-image", "m-where", "m-webrtc-1"],
                "username": ["bob", "carol"],
                "account_id": [users["bob"]["id"], users["carol"]["id"]],
                "media_id": [media],
                "subscription_id": [sub],
                "emoji": ["👍"],
                # query parameters and body members
                "before": ["m-hello"],
                "since": ["1", "acked"],
                "q": ["hello", "hello world"],
                "thread": ["t-general"],
                "media": [media],
                "avatar": [media, None],
                "to": ["bob"],
                "participants": [["bob"], ["bob", "carol"]],
                "usernames": [["carol"], ["dave"]],
                "token": ["1", "3"],
                "old_password": [PASSWORD],
            },
            real_for={
                "DELETE /v1/sessions/{session_id}": {"session_id": revoked},
                **{
                    f"{method} /v1/{kind}/{{session_id}}": {"session_id": [rtc[kind]]}
                    for kind in rtc
                    for method in ("GET", "DELETE")
                },
                "DELETE /v1/messages/{message_id}": {"message_id": ["m-recall", "m-bob"]},
                # Roles and removals in a thread of their own: alice must stay admin of
                # t-general for the other operations.
                "PATCH /v1/threads/{thread_id}/participants/{account_id}": {
                    "thread_id": ["t-victim"]
                },
                "DELETE /v1/threads/{thread_id}/participants/{account_id}": {
                    "thread_id": ["t-victim"]
                },
            },
        )
        try:
            yield API
        finally:
            API = None
            assert server.process.poll() is None, "the server died during the run"


def swapped(label: str, values: Any) -> st.SearchStrategy[Any]:
    """``values`` as generated, or with members swapped for real ids (chosen by Hypothesis)."""
    if API is None or not isinstance(values, dict):
        return st.just(values)
    real = {**API.real, **API.real_for.get(label, {})}
    if not any(name in real for name in values):
        return st.just(values)
    return st.fixed_dictionaries(
        {
            name: st.sampled_from([value, *real[name]]) if name in real else st.just(value)
            for name, value in values.items()
        }
    )


@schema.hook("flatmap_path_parameters")
def real_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
    return swapped(context.operation.label, path_parameters)


@schema.hook("flatmap_body")
def real_body_members(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return swapped(context.operation.label, body)


#: The longest a generated sync long-poll may wait (ms): the document allows 60 s.
SYNC_TIMEOUT_CAP = 50


@schema.hook("flatmap_query")
def real_query_parameters(context: Any, query: Any) -> st.SearchStrategy[Any]:
    if isinstance(query, dict):
        timeout = query.get("timeout")
        if isinstance(timeout, str) and timeout.isascii() and timeout.isdigit():
            timeout = int(timeout)
        if isinstance(timeout, int) and not isinstance(timeout, bool):
            query = {**query, "timeout": min(timeout, SYNC_TIMEOUT_CAP)}
    return swapped(context.operation.label, query)


#: What werkzeug's ``InternalServerError`` says: the server crashed, whatever the status.
CRASH = InternalServerError.description


def not_a_crash_in_disguise(ctx: Any, response: Any, case: Any) -> None:
    """No unhandled exception, even one the server answers with a 4xx."""
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"].get("detail")
            assert detail != CRASH, (
                f"unhandled exception in the server, answered {response.status_code} "
                f"{body['error'].get('name')}"
            )


#: Server bugs this file found, since fixed: each has a regression case below.
FIXED_BUGS = {
    "masked-crash": (
        "app.py http_error maps every HTTPException that is not 404/405 to INVALID_REQUEST "
        "(104, HTTP 400), including the InternalServerError Quart raises for an unhandled "
        "exception: every crash is answered 400 with werkzeug's 'internal error' text "
        "instead of INTERNAL_ERROR (500, HTTP 500)"
    ),
    "search-cursor-overflow": (
        "GET /v1/search?before=<created>.<rank> with a part above 2**63-1 reaches SQLite "
        "(OverflowError in sqlite_service.search): a masked crash, not INVALID_REQUEST"
    ),
    "unicode-digits": (
        "int_arg (limit, timeout), parse_token (since, Last-Event-ID, the ack token) and "
        "the search cursor test str.isdigit(), which is true for '²', '³', '¹'; int() then "
        "raises ValueError: a masked crash, not INVALID_REQUEST"
    ),
    "lone-surrogates": (
        "json_body accepts JSON strings with lone surrogate escapes ('\\ud800'); SQLite "
        "and argon2 cannot encode them (UnicodeEncodeError): a masked crash, not "
        "INVALID_REQUEST, in every operation that stores or hashes a JSON string"
    ),
    "deep-json": (
        "json_body catches ValueError only; a deeply nested body raises RecursionError "
        "in json.loads: a masked crash, not INVALID_REQUEST"
    ),
    "empty-segment": (
        "werkzeug's merge_slashes answers a path with an empty segment (an empty path "
        "parameter) with a 308 text/html redirect to another route "
        "(/v1/threads//messages -> /v1/threads/messages, i.e. thread 'messages'), "
        "not NOT_FOUND (302, HTTP 404) as JSON (VXS-8-5, VXS-8-8)"
    ),
}


CHECKS = [
    not_a_server_error,
    not_a_crash_in_disguise,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@rest.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_server_answers_as_documented(case: schemathesis.Case, api: Api) -> None:
    token = api.token_for(case.operation.label)
    case.call_and_validate(
        base_url=api.url,
        headers={"Authorization": f"Bearer {token}"},
        checks=CHECKS,
        timeout=15,
    )


# -- the fixed server bugs, one regression case each ---------------------------------------------

SURROGATE = b"\\ud800"


def bug(
    name: str,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str | bytes] | None = None,
    status: int = 400,
) -> Any:
    return pytest.param(
        method,
        path,
        body,
        headers or {},
        status,
        id=f"{name}: {method} {path}",
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        bug("search-cursor-overflow", "GET", "/v1/search?q=hello&before=9223372036854775808.1"),
        bug("search-cursor-overflow", "GET", "/v1/search?q=hello&before=1.9223372036854775808"),
        bug("unicode-digits", "GET", "/v1/sync?limit=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/sync?timeout=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/sync?since=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/sync", headers={"Last-Event-ID": b"\xb2"}),
        bug("unicode-digits", "GET", "/v1/sync/stream?since=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/threads/t-general/messages?limit=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/search?q=hello&limit=%C2%B2"),
        bug("unicode-digits", "GET", "/v1/search?q=hello&before=%C2%B2.1"),
        bug("unicode-digits", "POST", "/v1/sync/ack", '{"token": "\u00b2"}'.encode()),
        bug(
            "lone-surrogates",
            "POST",
            "/v1/accounts",
            b'{"username": "zed", "password": "' + SURROGATE * 8 + b'"}',
        ),
        bug(
            "lone-surrogates",
            "POST",
            "/v1/sessions",
            b'{"username": "' + SURROGATE + b'", "password": "x"}',
        ),
        bug(
            "lone-surrogates", "PATCH", "/v1/accounts/me", b'{"display_name": "' + SURROGATE + b'"}'
        ),
        bug("lone-surrogates", "POST", "/v1/threads", b'{"title": "' + SURROGATE + b'"}'),
        bug(
            "lone-surrogates", "PATCH", "/v1/threads/t-general", b'{"title": "' + SURROGATE + b'"}'
        ),
        bug(
            "lone-surrogates",
            "POST",
            "/v1/threads/t-general/messages",
            b'{"text": "' + SURROGATE + b'"}',
        ),
        bug(
            "lone-surrogates",
            "POST",
            "/v1/messages/m-hello/forward",
            b'{"thread": "' + SURROGATE + b'"}',
        ),
        bug("deep-json", "POST", "/v1/accounts", b"[" * 100_000 + b"]" * 100_000),
        bug("empty-segment", "GET", "/v1/threads//messages", status=404),
        bug("empty-segment", "GET", "/v1/media//thumbnail", status=404),
    ],
)
def test_fixed_server_bug(
    api: Api,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str | bytes],
    status: int,
) -> None:
    """Each is a bad request (or an unknown path): a registry error, never a crash."""
    headers = {"Authorization": f"Bearer {api.token}", **headers}
    response = httpx.request(method, api.url + path, content=body, headers=headers, timeout=15)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == (104 if status == 400 else 302), error
    assert error["detail"] != CRASH
