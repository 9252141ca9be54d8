"""The capacity benchmark runs end to end (`--quick`): steps up, nothing lost.

Not a speed check: at two and four threads any machine holds the 20 ms limit, so the
run must report both steps as held, with every listener's chunks delivered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_capacity_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "capacity", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=160,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "capacity.json").read_text())
    assert [s["talkers"] for s in result["steps"]] == [2, 4]
    for step in result["steps"]:
        assert step["lost"] == step["duplicated"] == 0 and not step["errors"], step
        assert step["listeners"] == 5 * step["talkers"]
        assert step["live_latency_ms"]["samples"] > 0
    assert result["capacity_threads"] in (0, 2, 4)
    assert (tmp_path / "capacity.png").stat().st_size > 0
