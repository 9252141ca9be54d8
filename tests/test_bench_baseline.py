"""live-latency with the raw-TCP relay baseline (``--baseline relay``) runs end to end.

As for the other benchmark smoke tests, no speed is checked: only that both variants
(the shipped server and the relay in ``benchmarks/baselines/relay.py``) delivered every
chunk once and in order, and that the voxer/relay ratios were computed.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check_delivery(result: dict[str, Any], variant: str) -> None:
    where = f"{variant} N={result['listeners']}"
    assert result["variant"] == variant, where
    assert result["samples"] > 0, where
    assert result["chunks_sent"] > 0, where
    assert result["lost"] == 0, where
    assert result["reordered"] == 0, where
    assert result["duplicated"] == 0, where
    assert result["deliveries_received"] == result["deliveries_expected"], where
    assert result["ended"] == result["listeners"] * len(result["rounds"]), where
    assert result["errors"] == [], where
    assert result["talker_closed"] is True, where
    assert result["server_exit"] == 0, (where, result["server_stderr_tail"])
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], where
    assert result["server_cpu_us_per_delivery"] > 0, where


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_live_latency_quick_with_relay_baseline(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "live-latency",
            "--quick",
            "--baseline",
            "relay",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "x = voxer / relay" in proc.stdout
    report = json.loads((out / "live-latency.json").read_text())
    assert (out / "live-latency.png").stat().st_size > 0
    assert report["config"]["baseline"] == "relay"
    assert report["config"]["rounds"] == 1
    assert "benchmarks.baselines.relay" in report["config"]["baseline_server"]
    results = report["results"]
    assert [r["listeners"] for r in results] == [1, 10]
    for result in results:
        _check_delivery(result, "voxer")
        base = result["baseline"]
        assert base["name"] == "relay"
        _check_delivery(base, "relay")
        assert base["connections"] == base["listeners"]  # raw TCP: one per listener
        ratio = result["ratio"]
        assert ratio["of"] == "voxer / relay"
        for key in ("latency_p50", "latency_p99", "latency_p99_9", "cpu_per_delivery"):
            assert ratio[key] is not None and ratio[key] > 0, key
        assert len(ratio["per_round"]) == 1
    marginal = report["marginal_cpu_us_per_listener"]
    assert marginal["between"] == [1, 10]
    assert set(marginal) >= {"voxer", "relay", "ratio"}


async def test_relay_listener_from_seq_gets_held_chunks_then_live() -> None:
    """The relay itself (in-process): a listener joining at ``from_seq`` 2 after three
    chunks gets 2 from memory, then ``live``, then the next chunks as they come, then
    ``end``; a listener joining first gets everything. No storage is involved."""
    import trio

    from benchmarks.baselines.relay import Relay, _next_frame
    from voxer_stream.wire import (
        Chunk,
        Close,
        Closed,
        End,
        FrameDecoder,
        Listen,
        Live,
        Open,
        Opened,
        encode_frame,
    )

    packet = bytes([0x78]) + bytes(60)  # CELT fullband 20 ms, one frame (960 ticks)

    async def listen(port: int, from_seq: int, got: list[object]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(encode_frame(Listen(msg="m1", from_seq=from_seq)))
            decoder = FrameDecoder()
            while not (got and isinstance(got[-1], End)):
                frame = await _next_frame(stream, decoder)
                assert frame is not None
                got.append(frame)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, Relay().handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        early: list[object] = []
        late: list[object] = []
        talker = await trio.open_tcp_stream("127.0.0.1", port)
        decoder = FrameDecoder()
        await talker.send_all(encode_frame(Open(msg="m1", thread="t1", created=1)))
        assert isinstance(await _next_frame(talker, decoder), Opened)
        nursery.start_soon(listen, port, 0, early)
        with trio.fail_after(5):
            while not early:  # joined (its live frame) before any chunk
                await trio.sleep(0.005)
        for seq in range(3):
            await talker.send_all(encode_frame(Chunk(seq=seq, ts=seq * 960, packets=(packet,))))
        with trio.fail_after(5):
            while len(early) < 4:  # the relay holds chunks 0-2
                await trio.sleep(0.005)
        nursery.start_soon(listen, port, 2, late)
        with trio.fail_after(5):
            while len(late) < 2:  # held chunk 2, then live
                await trio.sleep(0.005)
        for seq in range(3, 5):
            await talker.send_all(encode_frame(Chunk(seq=seq, ts=seq * 960, packets=(packet,))))
        await talker.send_all(encode_frame(Close(chunks=5)))
        closed = await _next_frame(talker, decoder)
        assert closed == Closed(msg="m1", chunks=5, duration=5 * 960)
        await talker.aclose()
        with trio.fail_after(5):
            while not (early and late and isinstance(early[-1], End) and isinstance(late[-1], End)):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    def seqs(frames: list[object]) -> list[int]:
        return [f.seq for f in frames if isinstance(f, Chunk)]

    assert early[0] == Live(seq=0)
    assert seqs(early) == [0, 1, 2, 3, 4]
    assert isinstance(late[0], Chunk) and late[0].seq == 2  # held chunk first
    assert late[1] == Live(seq=3)
    assert seqs(late) == [2, 3, 4]
    assert early[-1] == late[-1] == End(chunks=5, duration=5 * 960)
