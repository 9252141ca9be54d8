"""The catch-up benchmark runs end to end (`--quick`) and reports sane fields.

Speeds are not checked (they depend on the machine): only that every join
measured its times, that no joiner and no live listener lost, reordered or
duplicated a chunk, and that a paced join did not reach the live edge earlier
than its speed allows (VXS-6.4-1 is a lower bound, whatever the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GROUP_FIELDS = {
    "group",
    "kind",
    "speed",
    "backlog_s",
    "joins",
    "served_from",
    "time_to_message_ms",
    "time_to_first_chunk_ms",
    "time_to_live_edge_ms",
    "server_cpu_net_ms_per_join_mean",
    "lost",
    "duplicated",
    "reordered",
    "live_seq_ok",
    "live_during_ms",
    "live_quiet_ms",
    "live_p99_delta_ms",
}


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_catch_up_quick(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "catch-up", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "catch-up.json").read_text())
    assert (out / "catch-up.png").stat().st_size > 0
    assert report["scenario"] == "catch-up"
    assert "--quick" in report["command"]
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["packages"]["voxer-stream"]
    result = report["result"]
    assert result["server_exit"] == 0, result["server_stderr_tail"]
    assert result["join_errors"] == []
    assert result["joins_skipped"] == 0
    assert result["joins_done"] == result["joins_planned"] > 0
    assert result["join_lost"] == result["join_duplicated"] == result["join_reordered"] == 0

    live = result["live_listeners"]
    assert live["errors"] == []
    assert live["lost"] == live["reordered"] == live["duplicated"] == 0
    assert live["ended"] == live["listeners"]
    assert live["latency_ms"]["samples"] > 0
    assert result["talker_closed"] is True

    kinds = {g["kind"] for g in result["groups"]}
    assert kinds == {"fast", "paced"}
    for group in result["groups"]:
        assert set(group) >= GROUP_FIELDS, GROUP_FIELDS - set(group)
        assert group["lost"] == group["duplicated"] == group["reordered"] == 0
        assert group["live_seq_ok"] is True
        first, live_edge = group["time_to_first_chunk_ms"], group["time_to_live_edge_ms"]
        assert first["samples"] == live_edge["samples"] == group["joins"]
        assert 0 < first["p50"] <= live_edge["p50"]
        assert group["live_quiet_ms"]["samples"] > 0
        if group["kind"] == "paced":
            # No earlier than the pacing allows (one chunk of slack, see catch_up.analyse).
            assert group["live_edge_minus_expected_ms"]["min"] > -100

    for join in result["joins"]:
        # Every chunk from from_seq to the live edge, then a second of live chunks.
        assert join["start_seq"] == join["from_seq"]
        assert join["caught_up_chunks"] == join["live_seq"] - join["from_seq"] > 0
        assert join["after_live"] > 0
        assert join["distinct"] == join["received"] == join["caught_up_chunks"] + join["after_live"]
    assert set(result["targets"]) >= {"first_chunk_p99_under_50ms", "live_p99_moves_under_5ms"}
