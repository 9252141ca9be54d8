"""The bus between server processes and the ring of members, on a real redis-server
(started by the test suite on a free loopback port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import trio

from voxer_stream.bus import LocalBus, Membership, RedisBus, Ring


def test_the_ring_is_the_same_everywhere_and_moves_little() -> None:
    keys = [f"m{n}" for n in range(3000)]
    three = Ring(["p1", "p2", "p3"])
    assert Ring(["p3", "p1", "p2"]).owner("m7") == three.owner("m7")  # order does not matter
    spread = Counter(three.owner(k) for k in keys)
    assert set(spread) == {"p1", "p2", "p3"} and min(spread.values()) > 600
    two = Ring(["p1", "p3"])  # p2 died
    moved = [k for k in keys if three.owner(k) != two.owner(k)]
    assert all(three.owner(k) == "p2" for k in moved)  # only p2's keys move
    assert Ring().owner("m1") is None


@pytest.mark.parametrize("kind", ["local", "redis"])
async def test_subscribers_get_every_message_in_order(kind: str, redis_url: str) -> None:
    async def run(bus: LocalBus | RedisBus) -> None:
        async with bus.subscribe("live:m1") as first, bus.subscribe("live:m1") as second:
            for n in range(500):
                bus.publish("live:m1", n.to_bytes(4, "big"))
            bus.publish("live:other", b"not for us")
            for subscription in (first, second):
                with trio.fail_after(5):
                    got = [int.from_bytes(await subscription.receive(), "big") for _ in range(500)]
                assert got == list(range(500))
                assert not subscription.overflowed

    if kind == "local":
        await run(LocalBus())
    else:
        async with RedisBus(redis_url) as bus:
            await run(bus)


async def test_a_message_published_after_subscribe_returns_is_never_missed(
    redis_url: str,
) -> None:
    """subscribe() returns once Redis confirmed it: the 'subscribe, then read storage'
    handoff of the pipeline relies on it, across processes."""
    async with RedisBus(redis_url) as publisher, RedisBus(redis_url) as listener:
        for n in range(20):
            async with listener.subscribe(f"c{n}") as subscription:
                publisher.publish(f"c{n}", b"first")
                with trio.fail_after(5):
                    assert await subscription.receive() == b"first"


async def test_a_slow_subscriber_overflows_instead_of_holding_anyone(redis_url: str) -> None:
    async with (
        RedisBus(redis_url, buffer=10) as bus,
        bus.subscribe("c") as slow,
        bus.subscribe("c") as fast,
    ):
        for n in range(50):
            bus.publish("c", bytes([n]))
        with trio.fail_after(5):
            while not slow.overflowed:
                await trio.sleep(0.01)
        assert [await fast.receive() for _ in range(10)] == [bytes([n]) for n in range(10)]
    assert bus.published == 50 and bus.dropped == 0


async def test_members_see_one_ring_and_a_leaver_is_gone_at_once(redis_url: str) -> None:
    members = [Membership(redis_url, f"p{n}", ttl=1.0, period=0.2) for n in range(3)]
    async with trio.open_nursery() as nursery:
        scopes = []
        for member in members:
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(
                member: Membership = member,
                scope: trio.CancelScope = scope,
                *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await member.run(task_status=task_status)

            await nursery.start(run)
        with trio.fail_after(3):
            while not all(len(m.ring) == 3 for m in members):
                await trio.sleep(0.05)
        assert len({m.owner("m42") for m in members}) == 1
        start = trio.current_time()
        scopes[2].cancel()  # p2 leaves on purpose: removes itself and says so
        with trio.fail_after(3):
            while not all(m.ring.members == ("p0", "p1") for m in members[:2]):
                await trio.sleep(0.01)
        assert trio.current_time() - start < 0.5  # at once, not after the ttl
        nursery.cancel_scope.cancel()


MEMBER = textwrap.dedent(
    """
    import sys, trio
    from voxer_stream.bus import Membership
    async def main():
        m = Membership(sys.argv[1], "killed", ttl=1.0, period=0.2)
        async with trio.open_nursery() as n:
            await n.start(m.run)
            print("up", flush=True)
    trio.run(main)
    """
)


async def test_a_killed_member_is_dropped_within_ttl_plus_period(redis_url: str) -> None:
    process = subprocess.Popen(  # noqa: ASYNC220 (started once, before any await)
        [sys.executable, "-c", MEMBER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert await trio.to_thread.run_sync(process.stdout.readline) == "up\n"
        watcher = Membership(redis_url, "watcher", ttl=1.0, period=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            with trio.fail_after(3):
                while "killed" not in watcher.ring.members:
                    await trio.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)  # no goodbye
            start = trio.current_time()
            with trio.fail_after(5):
                while "killed" in watcher.ring.members:
                    await trio.sleep(0.02)
            gone_after = trio.current_time() - start
            assert gone_after <= watcher.dropped_after + 0.3, gone_after
            assert watcher.ring.members == ("watcher",)
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
