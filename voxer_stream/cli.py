"""The ``voxer-stream`` command: run the server, or talk to one.

``voxer-stream serve`` runs the server; every other verb is a client. The server
URL comes from ``--server``, else ``$VOXER_URL``, else the one saved by ``login``,
else http://127.0.0.1:8750. ``login`` saves the token in ``$VOXER_CONFIG`` (default
~/.config/voxer-stream/client.json); ``$VOXER_TOKEN`` overrides it.

Output is plain text, one fact per line, or JSON with ``--json``. Errors: one line
on stderr and exit code 1 (2 for usage errors, from argparse).
"""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final

import trio

DEFAULT_URL: Final = "http://127.0.0.1:8750"
TICKS: Final = 48000


class CliError(Exception):
    """A failure reported as one line on stderr, exit code 1."""


# -- configuration ---------------------------------------------------------------


def config_path() -> Path:
    env = os.environ.get("VOXER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".config" / "voxer-stream" / "client.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a token
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)


def server_url(args: argparse.Namespace) -> str:
    url = args.server or os.environ.get("VOXER_URL") or load_config().get("server") or DEFAULT_URL
    return str(url).rstrip("/")


def token(args: argparse.Namespace) -> str:
    value = os.environ.get("VOXER_TOKEN") or load_config().get("token")
    if not value:
        raise CliError("not logged in: run `voxer-stream login USERNAME` (or set VOXER_TOKEN)")
    return str(value)


def password(args: argparse.Namespace, confirm: bool = False) -> str:
    if args.password is not None:
        return str(args.password)
    env = os.environ.get("VOXER_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        raise CliError("no password: use --password, VOXER_PASSWORD or a terminal")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != first:
        raise CliError("the passwords differ")
    return first


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text, flush=True)


# -- serve ---------------------------------------------------------------------------


#: A graceful shutdown that takes longer than this is cut short.
FORCE_STOP_AFTER = 10.0


async def _watch_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful shutdown (VXS-5.6-3); a second one, or
    ``FORCE_STOP_AFTER`` seconds without the server finishing: stop now."""
    log = logging.getLogger("voxer_stream")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
            shutdown.set()
            break
        with trio.move_on_after(FORCE_STOP_AFTER):
            async for _ in signals:
                break
        log.warning("stopping now, without waiting for the graceful shutdown")
        scope.cancel()


async def _serve(config: Any) -> None:
    from .transports.server import run_server

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await run_server(config, shutdown=shutdown, task_status=task_status)
            nursery.cancel_scope.cancel()  # done: stop watching for signals

        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        binds = await nursery.start(serve)
        print(f"voxer-stream serving on {binds[0]}", flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from .transports.server import ServerConfig

    if bool(args.certfile) != bool(args.keyfile):
        raise CliError("--certfile and --keyfile go together")
    if args.workers is not None and args.workers > 1:
        from .workers import Supervisor

        if args.redis is None:
            raise CliError("--workers needs --redis (the workers meet there)")
        if args.storage not in ("sqlite", "cassandra"):
            raise CliError("--workers needs a store they share (sqlite or cassandra)")
        if args.member is not None:
            raise CliError("--member names one process; workers are named host/pid")
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        raw: list[str] = args.raw_argv
        argv = raw[raw.index("serve") + 1 :]
        supervisor = Supervisor(argv, host=args.host, port=args.port, count=args.workers)
        return supervisor.run("https" if args.certfile else "http")
    # What is imported by now (the server's modules and their libraries, ~50,000
    # objects) lives as long as the process: keep it out of the cyclic collector's
    # full passes, which stop every live stream while they scan. At 1,000 listeners a
    # full pass measured 48-140 ms without this and 4-29 ms with it.
    gc.freeze()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aioice logs every ICE check at INFO: a line per candidate pair per WebRTC peer.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        certfile=args.certfile,
        keyfile=args.keyfile,
        synchronous=args.synchronous,
        abandon_after=args.abandon_after,
        storage=args.storage,
        rtc_idle_timeout=args.rtc_idle_timeout,
        rtc_connect_timeout=args.rtc_connect_timeout,
        rtc_max_sessions=args.rtc_max_sessions,
        rtc_max_total=args.rtc_max_total,
        timeline_retention_days=args.timeline_retention_days,
        push_subject=args.push_subject,
        allow_local_push=args.allow_local_push,
        redis_url=args.redis,
        member=args.member,
        reuse_port=args.reuse_port,
        cassandra_hosts=args.cassandra_hosts,
    )
    trio.run(_serve, config)
    return 0


# -- client verbs ------------------------------------------------------------------


async def cmd_register(args: argparse.Namespace) -> None:
    from .client import Rest

    pw = password(args, confirm=True)
    async with Rest(server_url(args)) as rest:
        account = await rest.register(args.username, pw)
    emit(args, account, f"registered {account['username']} ({account['id']})")


async def cmd_login(args: argparse.Namespace) -> None:
    from .client import Rest

    url = server_url(args)
    pw = password(args)
    async with Rest(url) as rest:
        tok = await rest.login(args.username, pw)
        session = rest.session
    config = load_config()
    config.update(server=url, token=tok, username=args.username)
    save_config(config)
    emit(
        args,
        {"username": args.username, "account_id": session.get("account_id"), "server": url},
        f"logged in as {args.username} on {url}",
    )


async def cmd_logout(args: argparse.Namespace) -> None:
    from .client import Rest, ServerError

    config = load_config()
    tok = os.environ.get("VOXER_TOKEN") or config.get("token")
    if tok:
        async with Rest(server_url(args), str(tok)) as rest:
            try:
                await rest.logout()
            except ServerError as exc:
                if exc.name != "UNAUTHENTICATED":
                    raise
    config.pop("token", None)
    config.pop("username", None)
    save_config(config)
    emit(args, {"logged_out": True}, "logged out")


async def cmd_whoami(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        me = await rest.me()
    emit(args, me, f"{me['username']} ({me['id']})")


def _thread_line(thread: dict[str, Any]) -> str:
    people = ",".join(p["username"] for p in thread.get("participants", []))
    counts = f"{thread.get('unread', 0)} unread, {thread.get('unheard', 0)} unheard"
    return f"{thread['id']}\t{thread.get('title', '')}\t{people}\t{counts}"


def _message_line(m: dict[str, Any]) -> str:
    """id, sender, kind, then what it holds: audio's state, chunks and length; a text."""
    head = f"{m['id']}\t{m['sender']}\t{m.get('kind', 'audio')}"
    if m.get("recalled"):
        return f"{head}\t(recalled)"
    if m.get("kind", "audio") == "audio":
        return f"{head}\t{m['state']}\t{m['chunks']}\t{m['duration'] / TICKS:.2f}s"
    if m.get("kind") == "text":
        return f"{head}\t{m.get('text', '')}"
    if m.get("kind") == "location":
        where = m.get("location", {})
        return f"{head}\t{where.get('lat')},{where.get('lon')}\t{where.get('label', '')}"
    return f"{head}\t{m.get('image', {}).get('url', '')}"


async def cmd_thread_create(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        thread = await rest.create_thread(args.title, args.participant or [], id=args.id)
    emit(args, thread, thread["id"])


async def cmd_threads(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        threads = await rest.threads()
    emit(args, threads, "\n".join(_thread_line(t) for t in threads))


async def cmd_messages(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        messages = await rest.messages(args.thread_id)
    emit(args, messages, "\n".join(_message_line(m) for m in messages))


async def cmd_say(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        message = await rest.post_text(args.thread_id, args.text, id=args.id, to=args.to)
    emit(args, message, message["id"])


async def cmd_sync(args: argparse.Namespace) -> None:
    """Print the timeline's events, one JSON object a line; ``--follow`` long-polls for
    more until interrupted, so it can be piped (``voxer-stream sync -f | jq``)."""
    from .client import Rest

    since = args.since
    async with Rest(server_url(args), token(args)) as rest:
        while True:
            page = await rest.sync(since, limit=1000, wait=25.0 if args.follow else 0.0)
            for event in page["events"]:
                print(json.dumps(event, ensure_ascii=False), flush=True)
            if page["limited"]:
                print("warning: events were trimmed before this page", file=sys.stderr)
            since = page["next"]
            if not page["more"] and not args.follow:
                break
    print(f"next: {since}", file=sys.stderr)


async def cmd_talk(args: argparse.Namespace) -> None:
    from .client import chunks_from_packets, realtime, talk
    from .media.encode import encode_file
    from .wire import Open

    path = Path(args.audiofile)
    tok = token(args)
    try:
        packets = await trio.to_thread.run_sync(encode_file, path)
    except FileNotFoundError as exc:
        raise CliError(f"no such file: {path}") from exc
    except Exception as exc:  # PyAV raises its own error types for unreadable input
        raise CliError(f"cannot encode {path}: {exc}") from exc
    if not packets:
        raise CliError(f"{path} has no audio")
    chunks = chunks_from_packets(packets, args.packets_per_chunk)
    message_id = args.message_id or uuid.uuid4().hex
    open_frame = Open(msg=message_id, thread=args.thread_id, created=int(time.time() * 1000))
    if not args.json:
        print(message_id, flush=True)
    source = realtime(chunks) if args.realtime else chunks
    closed = await talk(server_url(args), tok, open_frame, source)
    emit(
        args,
        {"msg": closed.msg, "chunks": closed.chunks, "duration": closed.duration},
        f"closed {closed.msg}: {closed.chunks} chunks, {closed.duration / TICKS:.2f} s",
    )


async def cmd_listen(args: argparse.Namespace) -> None:
    from .client import listen
    from .media.ogg import OggOpusWriter
    from .media.opus import packets_duration
    from .wire import Chunk, End, Listen, Live, MessageInfo

    request = Listen(
        msg=args.message_id,
        from_seq=args.from_seq,
        from_ts=round(args.from_time * TICKS) if args.from_time is not None else None,
        live_edge=args.live_edge,
        speed=args.speed,
    )
    tok = token(args)
    out: BinaryIO | None = None
    if args.output:
        out = await trio.to_thread.run_sync(Path(args.output).open, "wb")
    writer = OggOpusWriter(out) if out is not None else None
    chunks = packets = ticks = 0
    live_at: int | None = None
    start_seq = 0
    end: End | None = None
    started = time.monotonic()
    live_after: float | None = None
    try:
        async for frame in listen(server_url(args), tok, request):
            if isinstance(frame, MessageInfo):
                start_seq = frame.start_seq
            elif isinstance(frame, Chunk):
                chunks += 1
                ticks += packets_duration(frame.packets)
                for packet in frame.packets:
                    packets += 1
                    if writer is not None:
                        writer.write_packet(packet)
                if out is not None:
                    out.flush()
            elif isinstance(frame, Live):
                live_at = frame.seq
                live_after = time.monotonic() - started
            elif isinstance(frame, End):
                end = frame
    finally:
        if writer is not None and out is not None:
            if writer.packet_count:
                writer.close()
            out.close()
    summary = {
        "msg": args.message_id,
        "start_seq": start_seq,
        "chunks": chunks,
        "packets": packets,
        "duration": ticks,
        "live_at": live_at,
        "live_after": live_after,
        "end": {"chunks": end.chunks, "duration": end.duration} if end else None,
        "output": args.output,
    }
    lines = [
        f"chunks {chunks} (from seq {start_seq}), packets {packets}",
        f"received {ticks / TICKS:.2f} s of audio",
    ]
    if end is not None:
        lines.append(f"duration {end.duration / TICKS:.2f} s (message total)")
    if live_at is None:
        lines.append("live: no (the message was closed before the listener caught up)")
    else:
        lines.append(f"live: at seq {live_at}, after {live_after or 0:.3f} s")
    if args.output:
        lines.append(f"written to {args.output}")
    emit(args, summary, "\n".join(lines))


async def cmd_export(args: argparse.Namespace) -> None:
    from .client import Rest

    async with Rest(server_url(args), token(args)) as rest:
        data = await rest.export(args.message_id)
    await trio.Path(args.output).write_bytes(data)
    emit(args, {"output": args.output, "bytes": len(data)}, f"{len(data)} bytes to {args.output}")


# -- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxer-stream", description="Store-and-stream voice: server and client."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8750, help="0 picks a free port")
    serve.add_argument("--data-dir", default="./data")
    serve.add_argument("--certfile")
    serve.add_argument("--keyfile")
    serve.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    serve.add_argument(
        "--storage",
        choices=["sqlite", "memory", "cassandra"],
        default="sqlite",
        help="memory keeps nothing across restarts: only for measuring what storage costs",
    )
    serve.add_argument(
        "--abandon-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a live message that had no talker for this long (VXS-5.7-3)",
    )
    serve.add_argument(
        "--rtc-idle-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="close a WebRTC (WHIP) message after this long without RTP (VXS-12-4)",
    )
    serve.add_argument(
        "--rtc-connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up a WebRTC peer that has not connected this long after the answer (VXS-12-10)",
    )
    serve.add_argument(
        "--rtc-max-sessions",
        type=int,
        default=20,
        metavar="N",
        help="WebRTC sessions one account may have open at once (VXS-12-12)",
    )
    serve.add_argument(
        "--rtc-max-total",
        type=int,
        default=500,
        metavar="N",
        help="WebRTC sessions the server has open at once, all accounts (VXS-12-12)",
    )
    serve.add_argument(
        "--timeline-retention-days",
        type=float,
        default=90.0,
        metavar="DAYS",
        help="trim timeline events older than this (0: keep all); VXS-13.5-4",
    )
    serve.add_argument(
        "--push-subject",
        default="mailto:admin@localhost",
        help="the contact URI Web Push requests carry (VAPID sub, RFC 8292)",
    )
    serve.add_argument(
        "--allow-local-push",
        action="store_true",
        help="accept Web Push endpoints over http on 127.0.0.1 (tests, development)",
    )
    serve.add_argument(
        "--cassandra-hosts",
        default="127.0.0.1",
        metavar="HOSTS",
        help="host[:port],... of Cassandra/ScyllaDB nodes, for --storage cassandra",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N server processes on the port, one service (needs --redis)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="redis://host:port/db shared with other serve processes on the same data: "
        "live audio, timelines and presence cross processes through it",
    )
    serve.add_argument(
        "--member",
        metavar="NAME",
        help="with --redis: this process's name in the ring, unique among the processes "
        "sharing the Redis (default: HOST/PID)",
    )
    serve.set_defaults(sync_func=cmd_serve)

    def client(name: str, func: Callable[..., Coroutine[Any, Any, None]], help: str) -> Any:
        p = sub.add_parser(name, help=help)
        p.add_argument("--server", help="server URL (default: $VOXER_URL, saved, or local)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = client("register", cmd_register, "create an account")
    p.add_argument("username")
    p.add_argument("--password")
    p = client("login", cmd_login, "log in and save the token")
    p.add_argument("username")
    p.add_argument("--password")
    client("logout", cmd_logout, "end the session and forget the token")
    client("whoami", cmd_whoami, "show the logged-in account")

    thread = sub.add_parser("thread", help="thread commands")
    thread_sub = thread.add_subparsers(dest="thread_command", required=True, metavar="ACTION")
    create = thread_sub.add_parser("create", help="create a thread")
    create.add_argument("--server")
    create.add_argument("--json", action="store_true")
    create.add_argument("--title", required=True)
    create.add_argument("--participant", action="append", metavar="USERNAME")
    create.add_argument("--id")
    create.set_defaults(func=cmd_thread_create)

    client("threads", cmd_threads, "list your threads")
    p = client("messages", cmd_messages, "list a thread's messages")
    p.add_argument("thread_id")

    p = client("say", cmd_say, "send a text message")
    p.add_argument("thread_id")
    p.add_argument("text")
    p.add_argument("--id", help="a message id of your choosing (a replay is then harmless)")
    p.add_argument("--to", metavar="USERNAME", help="direct it to one participant")

    p = client("sync", cmd_sync, "print your timeline's events as JSON lines")
    p.add_argument("--since", metavar="TOKEN", help="the token a previous sync ended with")
    p.add_argument("-f", "--follow", action="store_true", help="keep waiting for new events")

    p = client("talk", cmd_talk, "send an audio file as a voice message")
    p.add_argument("thread_id")
    p.add_argument("audiofile")
    p.add_argument("--realtime", action="store_true", help="pace chunks like a microphone")
    p.add_argument("--message-id")
    p.add_argument("--packets-per-chunk", type=int, default=1, choices=range(1, 51), metavar="N")

    p = client("listen", cmd_listen, "listen to a message (live or stored)")
    p.add_argument("message_id")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, metavar="N")
    start.add_argument("--from-time", type=float, metavar="SECONDS")
    start.add_argument("--live-edge", action="store_true")
    p.add_argument("--speed", type=float, default=0.0, help="0 = as fast as possible")
    p.add_argument("-o", "--output", metavar="OUT.opus")

    p = client("export", cmd_export, "download a stored message as Ogg/Opus")
    p.add_argument("message_id")
    p.add_argument("-o", "--output", required=True, metavar="OUT.opus")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .client import ClientError, ServerError
    from .wire import ProtocolError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if hasattr(args, "sync_func"):
            result: int = args.sync_func(args)
            return result
        trio.run(partial(args.func, args))
        return 0
    except ServerError as exc:
        detail = f": {exc.detail}" if exc.detail else ""
        print(f"error: {exc.name} ({exc.code}){detail}", file=sys.stderr)
    except ProtocolError as exc:
        print(f"error: {exc.code.name} ({int(exc.code)}): {exc.detail}", file=sys.stderr)
    except (ClientError, CliError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
