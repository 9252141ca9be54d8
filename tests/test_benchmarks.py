"""The live-latency benchmark runs end to end (`--quick`) and reports sane fields.

Speeds are not checked (they depend on the machine); only that the run measured
something and that no listener lost, reordered or duplicated a chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RESULT_FIELDS = {
    "listeners",
    "listener_processes",
    "connections",
    "recording_listeners",
    "chunks_sent",
    "measured_chunks",
    "deliveries_expected",
    "deliveries_received",
    "lost",
    "reordered",
    "duplicated",
    "samples",
    "latency_ms",
    "server_cpu_s",
    "server_cpu_us_per_delivery",
    "talker_send_lag_us",
}


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_live_latency_quick(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "live-latency", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "live-latency.json").read_text())
    assert (out / "live-latency.png").stat().st_size > 0
    assert report["scenario"] == "live-latency"
    assert "--quick" in report["command"]
    machine = report["machine"]
    assert machine["cores"] >= 1
    assert machine["python"]
    assert machine["packages"]["voxer-stream"]
    results = report["results"]
    assert [r["listeners"] for r in results] == [1, 10]
    for result in results:
        assert set(result) >= RESULT_FIELDS, RESULT_FIELDS - set(result)
        assert set(result["latency_ms"]) >= {"p50", "p99", "p99_9", "max"}
        assert result["samples"] > 0
        assert result["chunks_sent"] > 0
        assert result["lost"] == 0
        assert result["reordered"] == 0
        assert result["duplicated"] == 0
        assert result["deliveries_received"] == result["deliveries_expected"]
        assert result["errors"] == []
        assert result["talker_closed"] is True
        assert result["server_exit"] == 0, result["server_stderr_tail"]
        lat = result["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
