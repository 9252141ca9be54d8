"""WebRTC sessions across the processes of one service (``serve --redis``, issue 7).

A WHIP or WHEP session lives in the process that negotiated its peer (its ICE
candidates are that process's sockets), but its resource, ``/v1/whip/{id}`` or
``/v1/whep/{id}``, must answer from any process, because with ``--workers`` the kernel
hands each new connection to any of them. And the session limits of VXS-12-12 count
the sessions of all processes.

* **Where each session is** lives in Redis: a hash per account
  (``voxer:rtc:acct:<account>``, session id -> process) and one for all
  (``voxer:rtc:all``), written when a session starts and when it ends. A process that
  died leaves its entries behind; they are ignored (and removed) once it is out of the
  ring, so counts are right within the ring's ttl.
* **A request for a session held elsewhere** goes to its process over the bus
  (``voxer:rtc:<member>``), which answers on a reply channel of the asker's: the
  session's status, or the registry error it would have answered with itself.

Redis is reached with redis-py's sync client in a worker thread: these are a few
commands per session, never on a media path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

import redis
import trio

from ..bus import follow_json
from ..wire import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from ..bus import Bus, Membership

log = logging.getLogger(__name__)

ALL_KEY: Final = "voxer:rtc:all"
#: How long an asker waits for the process holding a session (an end waits for the
#: message to be durable).
ASK_TIMEOUT: Final = 20.0

#: ``(op, kind, account, session)`` -> the session's status; raises ``ProtocolError``.
Handler = Callable[[str, str, str, str], Awaitable[dict[str, Any]]]


def account_key(account_id: str) -> str:
    return f"voxer:rtc:acct:{account_id}"


def request_channel(member: str) -> str:
    return f"voxer:rtc:{member}"


class SharedSessions:
    def __init__(self, url: str, bus: Bus, membership: Membership) -> None:
        self.bus = bus
        self.membership = membership
        self.member = membership.member
        self._client = redis.Redis.from_url(url)
        self._limiter = trio.CapacityLimiter(4)

    async def _redis(self, fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # -- where sessions are ------------------------------------------------------------

    async def started(self, account_id: str, session_id: str) -> None:
        def op() -> None:
            pipe = self._client.pipeline()
            pipe.hset(account_key(account_id), session_id, self.member)
            pipe.hset(ALL_KEY, session_id, self.member)
            pipe.execute()

        try:
            await self._redis(op)
        except redis.RedisError as exc:  # counted here only, and found here only
            log.warning("rtc: cannot share session %s: %s", session_id, exc)

    async def ended(self, account_id: str, session_id: str) -> None:
        def op() -> None:
            pipe = self._client.pipeline()
            pipe.hdel(account_key(account_id), session_id)
            pipe.hdel(ALL_KEY, session_id)
            pipe.execute()

        with trio.CancelScope(shield=True), contextlib.suppress(redis.RedisError):
            await self._redis(op)

    async def elsewhere(self, account_id: str) -> tuple[int, int]:
        """Sessions open on the other live processes: the account's, and all."""
        alive = set(self.membership.ring.members)

        def op() -> tuple[int, int]:
            counts = []
            for key in (account_key(account_id), ALL_KEY):
                raw: dict[bytes, bytes] = self._client.hgetall(key)  # type: ignore[assignment]
                entries = {k.decode(): v.decode() for k, v in raw.items()}
                dead = [s for s, member in entries.items() if member not in alive]
                if dead and alive:
                    self._client.hdel(key, *dead)
                counts.append(sum(1 for m in entries.values() if m in alive and m != self.member))
            return counts[0], counts[1]

        try:
            result: tuple[int, int] = await self._redis(op)
        except redis.RedisError as exc:
            log.warning("rtc: cannot count the other processes' sessions: %s", exc)
            return 0, 0
        return result

    async def holder(self, account_id: str, session_id: str) -> str | None:
        def op() -> bytes | None:
            found = self._client.hget(account_key(account_id), session_id)
            return found.encode() if isinstance(found, str) else found

        member = await self._redis(op)
        if member is None:
            return None
        name = member.decode()
        return name if name in self.membership.ring.members else None

    # -- requests for a session held elsewhere -----------------------------------------

    async def ask(self, op: str, kind: str, account_id: str, session_id: str) -> dict[str, Any]:
        """The answer of the process holding the session; ``NOT_FOUND`` if none has it."""
        member = await self.holder(account_id, session_id)
        if member is None or member == self.member:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such session", "VXS-12-11")
        reply = f"voxer:rtc:reply:{uuid.uuid4().hex}"
        request = {
            "op": op,
            "kind": kind,
            "account": account_id,
            "session": session_id,
            "reply": reply,
        }
        async with self.bus.subscribe(reply) as answers:
            self.bus.publish(request_channel(member), json.dumps(request).encode())
            with trio.move_on_after(ASK_TIMEOUT):
                answer = json.loads(await answers.receive())
                if "error" in answer:
                    error = answer["error"]
                    code, detail = ErrorCode(int(error["code"])), str(error["detail"])
                    raise ProtocolError(code, detail, error.get("requirement"))
                status: dict[str, Any] = answer["status"]
                return status
        raise ProtocolError(ErrorCode.INTERNAL_ERROR, f"the process holding {session_id} is silent")

    async def serve(self, handler: Handler) -> None:
        """Answer the other processes' requests for this process's sessions."""
        try:
            await self._serve(handler)
        finally:
            self._client.close()

    async def _serve(self, handler: Handler) -> None:
        requests = follow_json(self.bus, request_channel(self.member))
        async with aclosing(requests), trio.open_nursery() as nursery:
            async for request in requests:
                try:
                    args = [str(request[k]) for k in ("op", "kind", "account", "session")]
                    reply = str(request["reply"])
                except KeyError:
                    continue
                nursery.start_soon(self._answer, handler, args, reply)

    async def _answer(self, handler: Handler, args: list[str], reply: str) -> None:
        try:
            answer: dict[str, Any] = {"status": await handler(*args)}
        except ProtocolError as exc:
            error = {"code": int(exc.code), "detail": exc.detail, "requirement": exc.requirement}
            answer = {"error": error}
        except Exception:
            log.exception("rtc: a request for session %s failed", args[3])
            answer = {"error": {"code": int(ErrorCode.INTERNAL_ERROR), "detail": "failed"}}
        self.bus.publish(reply, json.dumps(answer).encode())
