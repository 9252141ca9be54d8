"""The rtc-latency benchmark (voxer-stream's WebRTC binding beside Janus) runs end to end.

As for the other benchmark smoke tests, no speed is checked: only that both variants
delivered every packet to every subscriber once, in order and byte for byte, that
every server stayed on 127.0.0.1, and that the voxer/janus ratios were computed. The
cheap cases below check the pieces that decide those counts without starting anything.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check_delivery(result: dict[str, Any], variant: str, packets: int) -> None:
    where = f"{variant} N={result['listeners']}"
    n = result["listeners"]
    assert result["variant"] == variant, where
    assert result["connected"] == n, where
    assert result["chunks_sent"] == packets, where
    assert result["samples"] > 0, where
    for key in ("lost", "reordered", "duplicated", "mismatched", "out_of_range"):
        assert result[key] == 0, (where, key, result["errors"])
    assert result["deliveries_received"] == result["deliveries_expected"] == n * packets, where
    assert result["ended"] == n, where
    assert result["errors"] == [], where
    assert result["talker_closed"] is True, where
    assert result["server_exit"] == 0, (where, result["server_stderr_tail"])
    assert result["server_bound"], where
    assert all(a.split(" ", 1)[1].startswith("127.0.0.1:") for a in result["server_bound"]), where
    assert result["ssrcs_per_subscriber_max"] == 1, where
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"], where
    assert result["server_cpu_us_per_delivery"] > 0, where


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rtc_latency_quick_voxer_and_janus(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "rtc-latency", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert "x = voxer / janus" in proc.stdout
    report = json.loads((out / "rtc-latency.json").read_text())
    assert (out / "rtc-latency.png").stat().st_size > 0
    assert report["scenario"] == "rtc-latency"
    assert "--quick" in report["command"]
    packages = report["machine"]["packages"]
    assert packages["aiortc"] and packages["voxer-stream"]
    assert packages["janus"], "janus --version gave no version"
    config = report["config"]
    assert config["rounds"] == 1
    assert "--rtc-idle-timeout" in config["voxer_server"]
    packets = config["packets"]
    results = report["results"]
    assert [r["listeners"] for r in results] == [1, 10]
    for result in results:
        _check_delivery(result, "voxer", packets)
        assert result["whip_status"]["chunks"] == packets  # one chunk per RTP payload
        janus = result["baseline"]
        assert janus["name"] == "janus"
        _check_delivery(janus, "janus", packets)
        assert janus["payload_types"] == [111]
        assert janus["janus"]["plugins"] == ["janus.plugin.streaming"]
        assert janus["janus"]["transports"] == ["janus.transport.http"]
        ratio = result["ratio"]
        assert ratio["of"] == "voxer / janus"
        for key in ("latency_p50", "latency_p99", "latency_p99_9", "cpu_per_delivery"):
            assert ratio[key] is not None and ratio[key] > 0, key
        assert len(ratio["per_round"]) == 1
    assert report["marginal_cpu_us_per_subscriber"]["between"] == [1, 10]


class _Arrival:
    def __init__(self, timestamp: int, payload: bytes, ssrc: int = 7) -> None:
        self.arrival_ns = 0
        self.timestamp = timestamp
        self.payload = payload
        self.ssrc = ssrc
        self.payload_type = 111


def test_tap_counts_by_rtp_timestamp() -> None:
    """The index is (RTP timestamp - first) / 960 across the 32-bit wrap; a repeat is a
    duplicate, an earlier index a reordering, a foreign payload a mismatch, and a
    timestamp off the 20 ms grid out of range. What never came is lost."""
    from benchmarks.rtc_latency import SubscriberResult, Tap

    packets = [bytes([0x78, i]) for i in range(8)]
    origin = 0xFFFFFFFF - 2 * 960 + 1  # packet 2 wraps past 2**32
    tap = Tap(SubscriberResult(index=0), packets)

    def ts(i: int) -> int:
        return (origin + i * 960) & 0xFFFFFFFF

    for i in (0, 1, 3, 2, 3):
        tap(_Arrival(ts(i), packets[i]))
    tap(_Arrival(ts(4), b"\x78other"))
    tap(_Arrival(ts(5) + 1, packets[5]))  # not on the grid
    tap(_Arrival(ts(9), packets[7]))  # beyond the last packet
    tap.finish()
    result = tap.result
    assert [index for index, _ in result.arrivals] == [0, 1, 3, 2, 4]
    assert (result.received, result.distinct, result.lost) == (8, 5, 3)
    assert (result.duplicated, result.reordered, result.mismatched) == (1, 1, 1)
    assert result.out_of_range == 2
    assert not tap.complete.is_set()


def test_janus_config_keeps_streaming_and_http_only(tmp_path: Path) -> None:
    """The generated janus.jcfg disables every other module found in the library folder,
    binds HTTP and the mountpoint to 127.0.0.1 and gathers ICE on lo only."""
    from benchmarks.baselines.janus import KEEP, MOUNTPOINT_ID, write_config

    lib = tmp_path / "lib"
    for sub, names in {
        "plugins": ["libjanus_streaming.so", "libjanus_echotest.so", "libjanus_sip.so"],
        "transports": ["libjanus_http.so", "libjanus_websockets.so"],
        "events": ["libjanus_sampleevh.so"],
        "loggers": ["libjanus_jsonlog.so"],
    }.items():
        (lib / sub).mkdir(parents=True)
        for name in [*names, *(f"{n}.1" for n in names)]:
            (lib / sub / name).write_bytes(b"")
    conf = tmp_path / "conf"
    write_config(conf, http_port=18088, rtp_port=15002, lib=lib)
    main = (conf / "janus.jcfg").read_text()
    assert 'disable = "libjanus_echotest.so,libjanus_sip.so"' in main
    assert 'disable = "libjanus_websockets.so"' in main
    assert 'disable = "libjanus_sampleevh.so"' in main
    assert 'disable = "libjanus_jsonlog.so"' in main
    assert all(keep not in main for keep in KEEP)
    assert 'ice_enforce_list = "lo"' in main and "ignore_mdns = true" in main
    assert "stun_server" not in main and "turn_server" not in main
    http = (conf / "janus.transport.http.jcfg").read_text()
    assert 'ip = "127.0.0.1"' in http and "port = 18088" in http
    assert "admin_http = false" in http
    streaming = (conf / "janus.plugin.streaming.jcfg").read_text()
    assert f"id = {MOUNTPOINT_ID}" in streaming
    assert 'audioiface = "127.0.0.1"' in streaming and "audioport = 15002" in streaming
    assert 'audiocodec = "opus"' in streaming and "video = false" in streaming


def test_bound_addresses_reads_this_process_sockets() -> None:
    """The loopback check reads /proc: a UDP socket bound here is found, by address."""
    import os

    from benchmarks.rtc_latency import bound_addresses, not_loopback

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        found = bound_addresses(os.getpid())
    assert f"udp 127.0.0.1:{port}" in found
    assert not_loopback([f"udp 127.0.0.1:{port}"]) == []
    assert not_loopback(["udp 192.0.2.2:5000", "tcp6 [::1]:80"]) == [
        "udp 192.0.2.2:5000",
        "tcp6 [::1]:80",
    ]
