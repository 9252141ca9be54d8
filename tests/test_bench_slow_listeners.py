"""The slow-listeners benchmark runs end to end (`--quick`) and reports sane fields.

Speeds and memory slopes are not checked (they depend on the machine); only that
both runs measured something, that the stalled listener really stalled (the server
stopped at its receive window), and that nobody lost, duplicated or reordered a
chunk: the stalled listener included, once it reads again (VXS-6.5-2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_slow_listeners_quick(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "slow-listeners", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=130,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "slow-listeners.json").read_text())
    assert (out / "slow-listeners.png").stat().st_size > 0
    assert report["scenario"] == "slow-listeners"
    assert "--quick" in report["command"]
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["packages"]["voxer-stream"]
    config = report["config"]
    assert config["listeners"] == 20
    assert config["stalling_listeners"] == 1

    summary = report["summary"]
    assert summary["stalled_listeners_complete_in_order"] is True
    assert summary["healthy_lost"] == 0
    assert summary["healthy_duplicated"] == 0
    assert summary["healthy_sequence_breaks"] == 0
    assert summary["errors"] == 0
    for key in ("p50", "p99", "p99_9"):
        assert summary["healthy_latency_ms"][key]["ratio"] > 0

    runs = report["runs"]
    assert [r["mode"] for r in runs] == ["control", "stalled"]
    for run in runs:
        chunks = run["chunks_sent"]
        assert chunks > 0
        assert run["server_exit"] == 0, run["server_stderr_tail"]
        assert run["talker_closed"] is True
        assert run["talker_acked_seq"] == chunks - 1  # the highest seq acked
        healthy = run["healthy"]
        assert healthy["deliveries_received"] == healthy["deliveries_expected"]
        assert healthy["ended"] == run["healthy_listeners"] == 19
        assert healthy["samples"] > 0
        lat = healthy["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
        assert len(healthy["windows"]) >= 2
        assert run["server"]["rss_growth_mb_per_min"] is not None
        assert len(run["server"]["samples"]) >= 10
        stalling = run["stalling"]
        assert stalling["all_complete_in_order"] is True
        assert stalling["received"] == [chunks]
        assert stalling["lost"] == stalling["duplicated"] == stalling["sequence_breaks"] == 0

    stalled = runs[1]["stalling"]
    # It stopped reading after the warm-up and was behind when it resumed ...
    assert 0 < stalled["received_before_stall"][0] < chunks
    assert stalled["chunks_behind_at_resume"][0] > 0
    # ... because flow control stopped the server: what it had sent but the listener
    # had not read is about one receive window (plus frame headers), not the backlog.
    unread = stalled["unread_bytes_at_resume"][0]
    assert 0 < unread <= config["stall_window_bytes"] * 1.25
    assert runs[0]["stalling"]["received_before_stall"] == []
