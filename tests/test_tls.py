"""HTTP/2 over TLS with ALPN "h2" (VXS-10-1): the same upload and listen, encrypted."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import trio
import trustme
from conftest import make_thread, make_user

from voxer_stream.client.h2conn import H2Connection
from voxer_stream.transports.server import ServerConfig, run_server
from voxer_stream.wire import Chunk, Close, Closed, End, FrameDecoder, Open, encode_frame


async def test_upload_and_listen_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "data",
        certfile=str(certfile),
        keyfile=str(keyfile),
        synchronous="NORMAL",
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run_server, config)
        url = binds[0]
        assert url.startswith("https://")
        # REST over TLS with httpx (it trusts our CA through the context)
        async with httpx.AsyncClient(verify=client_context, http2=True, base_url=url) as http:
            response = await http.get("/v1/health")
            assert response.http_version == "HTTP/2"
        alice = await make_user(url, "alice", verify=client_context)
        thread = await make_thread(url, alice, verify=client_context)
        auth = [("authorization", f"Bearer {alice.token}")]
        chunks = [Chunk(seq=s, ts=s * 960, packets=(b"\x78" + bytes(20),)) for s in range(5)]
        body = encode_frame(Open(msg="tls", thread=thread, created=0))
        body += b"".join(encode_frame(c) for c in chunks) + encode_frame(Close(chunks=5))
        with trio.fail_after(10):
            async with await H2Connection.connect(url, ssl_context=client_context) as conn:
                stream = await conn.request("POST", "/v1/upload", auth)
                await stream.send(body)
                await stream.end()
                decoder = FrameDecoder()
                decoder.feed(await stream.read_all())
                assert list(decoder)[-1] == Closed(msg="tls", chunks=5, duration=5 * 960)
                stream = await conn.request("GET", "/v1/messages/tls/listen", auth, end_stream=True)
                decoder = FrameDecoder()
                decoder.feed(await stream.read_all())
                frames = list(decoder)
        assert [f for f in frames if isinstance(f, Chunk)] == chunks
        assert frames[-1] == End(chunks=5, duration=5 * 960)
        nursery.cancel_scope.cancel()
