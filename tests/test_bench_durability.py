"""The durability benchmark runs end to end (`--quick`): both storages, nothing lost.

Speeds are not checked here (they depend on the machine): only that each run acked
every offered chunk, that listeners lost and doubled nothing, and that the ratios exist.
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
def test_durability_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "durability", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=160,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "durability.json").read_text())
    assert {r["storage"] for r in result["runs"]} == {"sqlite", "memory"}
    for run in result["runs"]:
        assert run["lost"] == run["duplicated"] == 0 and not run["errors"], run
        assert run["ack_latency_ms"]["samples"] > 0 and run["live_latency_ms"]["samples"] > 0
        # every chunk offered in the window was acked (the server keeps up at this load)
        assert run["acked_chunks_per_s"] >= 0.9 * run["offered_chunks_per_s"], run
    for row in result["summary"]:
        assert row["live_p99_ratio_sqlite_over_memory"] > 0
    assert (tmp_path / "durability.png").stat().st_size > 0
    assert result["machine"]["cores"] and "--quick" in result["command"]
