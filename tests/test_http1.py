"""REST over HTTP/1.1 keep-alive (curl, browsers): a refused POST never stalls the connection.

The server refuses ``POST /v1/threads`` with a bad token before it reads the body. When
the body arrives just after the response has ended, hypercorn closes the connection
from the app's task while quart-trio is cancelling it; before the fix in
``transports/hypercorn_fix.py`` the close was cut half-way and the client's next
request on that connection waited forever (2-3% of such requests).
"""

from __future__ import annotations

import random
import re

import trio
from conftest import RunningServer

BODY = b'{"title":"x","participants":[]}'
REQUEST = (
    b"POST /v1/threads HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer nope\r\nContent-Length: %d\r\n\r\n" % len(BODY)
)


async def read_response(stream: trio.SocketStream) -> bytes | None:
    """One whole response (by Content-Length), or None if the server closed the connection."""
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
        head, sep, rest = buf.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        if sep and length and len(rest) >= int(length.group(1)):
            return head


async def test_refused_posts_on_one_connection_never_hang(server: RunningServer) -> None:
    """1,200 refused POSTs, reconnecting whenever the server closes; none may go unanswered.

    How often the server closes instead of keeping the connection alive depends on timing
    (a body that arrives after the 401 closes it), so the count that proves keep-alive was
    exercised is of answers on a reused connection, over a fixed number of requests.
    """
    port = int(server.url.rsplit(":", 1)[1])
    rng = random.Random(7)
    sent = reused = 0
    while sent < 1200:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            on_this_connection = 0
            while sent < 1200:
                sent += 1
                try:
                    await stream.send_all(REQUEST)
                    await trio.sleep(rng.choice([0, 0.0001, 0.0003, 0.001]))
                    await stream.send_all(BODY)
                except trio.BrokenResourceError:
                    break
                # Either the 401 or a closed connection (the server may close one whose
                # request body it did not read); never silence.
                with trio.fail_after(5):
                    head = await read_response(stream)
                if head is None:
                    break
                assert head.startswith(b"HTTP/1.1 401"), head
                reused += on_this_connection > 0
                on_this_connection += 1
    # The REST app reads a (bounded) body before it refuses the request, so the server has
    # no reason to close: 1,197 of 1,200 were answered on a reused connection here.
    assert reused >= 1000, (sent, reused)
