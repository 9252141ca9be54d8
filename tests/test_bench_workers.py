"""The workers benchmark runs end to end (`--quick`): N = 1 and 2 on Redis, nothing lost.

Not a speed check: at two and four threads the 50 ms limit holds on any machine that
is not overloaded, but a shared one may miss it once, so holding is not asserted; every
step that ran must have delivered every chunk to every listener exactly once, and the
JSON must give one entry per N with its ratios to N = 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "workers", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "workers.json").read_text())
    assert [e["workers"] for e in result["workers"]] == [1, 2]
    assert result["alone"] is None and result["reference"] == "1"
    for entry in result["workers"]:
        assert entry["redis"] and "--redis" in entry["server"]
        assert entry["steps"], entry
        assert entry["steps"][0]["talkers"] == 2
        for step in entry["steps"]:
            assert step["lost"] == step["duplicated"] == 0 and not step["errors"], step
            assert step["listeners"] == 5 * step["talkers"]
            assert step["live_latency_ms"]["samples"] > 0
            assert step["sockets_loopback_only"]
            # N = 1 is one plain serve process; N = 2 a supervisor and two workers.
            assert step["server_processes"] == (1 if entry["workers"] == 1 else 3)
            assert f"--workers {entry['workers']}" in step["server_command"]
        ratio = entry["ratio_vs_1"]
        assert set(ratio) >= {"threads_carried", "cpu_per_delivery_at_capacity"}
        if entry["capacity_threads"]:
            assert entry["server_cpu_us_per_delivery"] > 0
    reference = result["workers"][0]
    if reference["capacity_threads"]:
        assert reference["ratio_vs_1"]["threads_carried"] == 1.0
        assert reference["ratio_vs_1"]["cpu_per_delivery_at_capacity"] == 1.0
    assert (tmp_path / "workers.png").stat().st_size > 0
    # The report's targets table gets its two rows from this JSON.
    readme = tmp_path / "README.md"
    assert report.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| workers")]
    assert len(rows) == 2, rows
    assert all("N = 1 on Redis" in row and "N = 2 x" in row for row in rows), rows
