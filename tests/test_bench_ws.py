"""live-latency with WebSocket listeners (``--transport ws``) runs end to end.

As for the other benchmark smoke tests, no speed is checked: only that every listener,
each on a WebSocket connection of its own (``/v1/ws``), got every chunk once and in
order, and that the transport is recorded in the JSON.
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
def test_live_latency_quick_over_websocket(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "live-latency",
            "--quick",
            "--transport",
            "ws",
            "--listeners",
            "1",
            "10",
            "--baseline",
            "none",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "listeners over WebSocket" in proc.stdout
    report = json.loads((out / "live-latency.json").read_text())
    assert (out / "live-latency.png").stat().st_size > 0
    config = report["config"]
    assert config["transport"] == "ws"
    assert "/v1/ws" in config["transport_detail"]
    assert config["streams_per_connection"] is None  # no multiplexing over WebSocket
    assert config["baseline"] == "none"
    results = report["results"]
    assert [r["listeners"] for r in results] == [1, 10]
    for result in results:
        where = f"N={result['listeners']}"
        assert result["transport"] == "ws", where
        assert result["connections"] == result["listeners"], where  # one each
        assert result["samples"] > 0, where
        assert result["chunks_sent"] > 0, where
        assert result["lost"] == 0, where
        assert result["reordered"] == 0, where
        assert result["duplicated"] == 0, where
        assert result["deliveries_received"] == result["deliveries_expected"], where
        assert result["ended"] == result["listeners"], where
        assert result["errors"] == [], where
        assert result["talker_closed"] is True, where
        assert result["server_exit"] == 0, (where, result["server_stderr_tail"])
        lat = result["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], where
        assert result["server_cpu_us_per_delivery"] > 0, where


def test_streams_per_conn_is_refused_with_websocket() -> None:
    """``--streams-per-conn`` is about HTTP/2 multiplexing: with ws it is an error, not
    silently ignored (argparse exits with 2 before anything starts)."""
    from benchmarks.live_latency import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--transport", "ws", "--streams-per-conn", "1"])
    assert exc.value.code == 2
    args = parse_args(["--quick"])
    assert (args.transport, args.streams_per_conn) == ("h2", 50)
