"""The floor: a live relay on raw trio TCP, chunks in memory, no HTTP and no storage.

``python -m benchmarks.baselines.relay --port 0`` prints ``relay listening on
tcp://127.0.0.1:PORT`` as its first stdout line (as ``voxer-stream serve`` prints its
URL) and relays until SIGINT.

It moves the same bytes as voxer-stream's live path, so that the ratio between the two
is the price of what voxer-stream adds (HTTP/2, auth, the Opus check, storage, acks),
not of a different workload:

* Framing is the protocol's: both directions are CBOR sequences of the protocol's
  frames (``voxer_stream.wire``), delimited by CBOR itself and decoded with
  ``FrameDecoder``. No length prefix.
* A talker connection sends ``open``, then ``chunk`` frames, then ``close``; the relay
  answers ``opened`` and, at the end, ``closed``. No acks: nothing is stored.
* Each chunk is decoded and re-encoded once (as the server's ``chunk_frame``) and
  appended to the message's in-memory list, then every listener task is woken.
* A listener connection sends one ``listen`` frame (``msg``, ``from_seq``). Its task is
  a cursor into the list, like the server's reader (``pipeline/reader.py``): it sends
  what is held from its cursor (catch-up batched into one write), then ``live``, then
  each new chunk with one ``send_all`` per chunk per listener, and ``end`` at close.
* ``TCP_NODELAY`` on every connection (``trio.SocketStream`` sets it; set again here so
  the baseline does not depend on that default). One listener per connection: raw TCP
  has no streams to multiplex.

No auth, no validation beyond decoding the frames and checking seq order, no
backpressure policy beyond the socket's own buffer (a stalled listener blocks only its
own task, as in the server). Small on purpose, but not a straw man: every per-delivery
step is one the server also has to take.

The load-generator side (talker and listener processes) is in this module too
(``relay_talker_main``, ``relay_listener_main``), reusing ``benchmarks.live_latency``'s
open-loop schedule and per-listener checks so both variants are measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import zlib
from typing import Any

import trio

from voxer_stream.wire import (
    Chunk,
    Close,
    Closed,
    End,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    Listen,
    Live,
    Open,
    Opened,
    ProtocolError,
    encode_frame,
)

RECEIVE_SIZE = 65536
#: Chunks per write when a listener catches up (the server's TAIL_BATCH plays this role).
CATCH_UP_BATCH = 64


# -- the relay server ---------------------------------------------------------


class Message:
    """One message: its encoded chunk frames (index = seq), shared by every listener."""

    def __init__(self) -> None:
        self.wire: list[bytes] = []
        self.closed = False
        self.duration = 0
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def publish(self, frame: bytes) -> None:
        self.wire.append(frame)
        self._wake()

    def close(self, duration: int) -> None:
        self.closed = True
        self.duration = duration
        self._wake()

    async def wait_beyond(self, seq: int) -> None:
        """Wait until chunk ``seq`` is held or the message closes."""
        while len(self.wire) <= seq and not self.closed:
            await self._changed.wait()


class Relay:
    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}

    def message(self, msg: str) -> Message:
        # Whoever names a message first creates it, so a listener may arrive first.
        return self.messages.setdefault(msg, Message())

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection; its first frame says whether it is a talker or a listener.
        The connection is closed when its operation ends (a listener reads to EOF)."""
        async with stream:
            await self._handle(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        with contextlib.suppress(OSError):
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
        decoder = FrameDecoder()
        try:
            first = await _next_frame(stream, decoder)
            if isinstance(first, Open):
                await self._talker(stream, decoder, first)
            elif isinstance(first, Listen):
                await self._listener(stream, first)
            elif first is not None:
                raise ProtocolError(
                    ErrorCode.UNEXPECTED_FRAME, f"first frame {first.TYPE!r}, not open or listen"
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; nothing to tell it
        except ProtocolError as exc:
            # A bug in the load generator, not load: say so on the wire and in stderr.
            print(f"relay: {exc}", file=sys.stderr, flush=True)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(encode_frame(Error.from_exception(exc)))

    async def _talker(self, stream: trio.SocketStream, decoder: FrameDecoder, open_: Open) -> None:
        message = self.message(open_.msg)
        if message.wire or message.closed:
            raise ProtocolError(ErrorCode.MESSAGE_CONFLICT, "the relay takes one upload per msg")
        opened = Opened(msg=open_.msg, next_seq=0, state="live")
        await stream.send_all(encode_frame(opened))
        last: Chunk | None = None
        while True:
            for frame in decoder:
                if isinstance(frame, Chunk):
                    if frame.seq != len(message.wire):
                        raise ProtocolError(
                            ErrorCode.SEQUENCE_GAP, f"chunk {frame.seq}, {len(message.wire)} next"
                        )
                    message.publish(encode_frame(frame))
                    last = frame
                elif isinstance(frame, Close):
                    duration = last.ts + _duration(last.packets) if last else 0
                    message.close(duration)
                    chunks = len(message.wire)
                    closed = Closed(msg=open_.msg, chunks=chunks, duration=duration)
                    await stream.send_all(encode_frame(closed))
                    return
                else:
                    raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"{frame.TYPE!r} in an upload")
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return  # the talker left without close: the message stays open
            decoder.feed(data)

    async def _listener(self, stream: trio.SocketStream, listen: Listen) -> None:
        message = self.message(listen.msg)
        cursor = listen.from_seq or 0
        said_live = False
        while True:
            held = len(message.wire)
            if cursor < held:
                if held - cursor == 1:
                    await stream.send_all(message.wire[cursor])  # the live path
                    cursor += 1
                else:
                    batch = message.wire[cursor : cursor + CATCH_UP_BATCH]
                    await stream.send_all(b"".join(batch))
                    cursor += len(batch)
            elif message.closed:
                end = End(chunks=len(message.wire), duration=message.duration)
                await stream.send_all(encode_frame(end))
                return
            else:
                if not said_live:
                    said_live = True
                    await stream.send_all(encode_frame(Live(seq=cursor)))
                await message.wait_beyond(cursor)


def _duration(packets: tuple[bytes, ...]) -> int:
    # Only for the end frame's duration, once per message: no per-chunk Opus parsing.
    from voxer_stream.media.opus import packets_duration

    return packets_duration(packets)


async def _next_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> Frame | None:
    while True:
        for frame in decoder:
            return frame
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        decoder.feed(data)


async def serve(host: str, port: int) -> None:
    """Relay until SIGINT or SIGTERM, then stop cleanly (exit status 0, as the server)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, Relay().handle, listeners)
            print(f"relay listening on tcp://{bound_host}:{bound_port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines.relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    trio.run(serve, args.host, args.port)
    return 0


# -- load generators for the relay (run in their own processes) ---------------


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    return host, int(port)


async def _connect(url: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*_address(url))
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
    return stream


def relay_talker_main(url: str, msg: str, packets: list[bytes], pipe: Any) -> None:
    """The relay's talker process: the same open-loop schedule as the HTTP/2 talker."""
    from benchmarks.live_latency import run_in_process

    run_in_process(pipe, "relay talker", _relay_talk, url, msg, packets, pipe)


async def _relay_talk(url: str, msg: str, packets: list[bytes], pipe: Any) -> Any:
    from benchmarks.live_latency import TalkerResult, send_on_schedule

    result = TalkerResult()
    decoder = FrameDecoder()
    async with await _connect(url) as stream:
        await stream.send_all(encode_frame(Open(msg=msg, thread="relay", created=_now_ms())))
        opened = await _next_frame(stream, decoder)
        if not isinstance(opened, Opened):
            raise RuntimeError(f"relay answered open with {opened}")
        pipe.send(("opened",))
        _, t0 = await trio.to_thread.run_sync(pipe.recv)
        closed: list[Frame | None] = []

        async def read_closed() -> None:
            closed.append(await _next_frame(stream, decoder))

        async def send(chunk: Chunk) -> None:
            await stream.send_all(encode_frame(chunk))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_closed)
            await send_on_schedule(packets, t0, send, result)
            await stream.send_all(encode_frame(Close(chunks=len(packets))))
        if not (closed and isinstance(closed[0], Closed)):
            raise RuntimeError(f"relay answered close with {closed}")
        result.closed = True
        result.acked = closed[0].chunks - 1  # no acks on the relay; "everything relayed"
    return result


def _now_ms() -> int:
    return int(time.time() * 1000)


class _ListenStream:
    """A raw TCP listen connection with the two methods ``live_latency._listen_one`` uses.

    So the relay's listeners decode, timestamp and check chunks with the very code the
    HTTP/2 listeners use: only the transport underneath differs.
    """

    def __init__(self, stream: trio.SocketStream, msg: str) -> None:
        self.stream = stream
        self.msg = msg

    async def response_status(self) -> int:
        await self.stream.send_all(encode_frame(Listen(msg=self.msg, from_seq=0)))
        return 200

    async def receive(self) -> bytes | None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        return data or None


def relay_listener_main(
    url: str,
    msg: str,
    indexes: list[int],
    recording: list[int],
    pipe: Any,
    full_clients: bool = False,
) -> None:
    from benchmarks.live_latency import run_in_process

    args = (url, msg, indexes, recording, pipe, full_clients)
    run_in_process(pipe, "relay listeners", _relay_listen_all, *args)


async def _sink(stream: trio.SocketStream, msg: str, result: Any, ready: trio.Semaphore) -> None:
    """A plain listener as cheap as the HTTP/2 ones (``benchmarks.h2sink``): it decodes
    nothing, only counts and checksums the bytes until the relay closes after ``end``;
    ``live_latency.check_sinks`` then compares them with a recording listener's."""
    result.sink = True
    is_ready = False
    try:
        await stream.send_all(encode_frame(Listen(msg=msg, from_seq=0)))
        while data := await stream.receive_some(RECEIVE_SIZE):
            result.body_bytes += len(data)
            result.body_crc32 = zlib.crc32(data, result.body_crc32)
            if not is_ready:
                is_ready = True
                ready.release()  # the first bytes are ``live``: no chunk is held yet
        result.ended = True
    except (trio.BrokenResourceError, OSError) as exc:
        result.error = f"relay sink {result.index}: {exc!r}"
    finally:
        if not is_ready:
            ready.release()


async def _relay_listen_all(
    url: str,
    msg: str,
    indexes: list[int],
    recording: list[int],
    pipe: Any,
    full_clients: bool = False,
) -> list[Any]:
    from benchmarks.live_latency import ListenerResult, _listen_one

    results = [ListenerResult(index=i) for i in indexes]
    ready = trio.Semaphore(0, max_value=len(results))
    # Sinks first, recording listeners last: as in ``live_latency._listen_all``.
    sinks = [r for r in results if r.index not in recording and not full_clients]
    clients = [r for r in results if r not in sinks]
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        for group in (sinks, clients):
            # One connection per listener: raw TCP has no streams.
            for result in group:
                stream = await stack.enter_async_context(await _connect(url))
                if result in sinks:
                    nursery.start_soon(_sink, stream, msg, result, ready)
                else:
                    listen = _ListenStream(stream, msg)
                    record = result.index in recording
                    nursery.start_soon(_listen_one, listen, result, record, ready)
            with trio.fail_after(60):
                for _ in group:
                    await ready.acquire()
        pipe.send(("ready",))
    return results


if __name__ == "__main__":
    sys.exit(main())
