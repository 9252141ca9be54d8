"""The conformance suite, run as an implementer runs it: a process against a server process.

It passes against the reference server; it lists its cases without a server; and it
is not blind: against the same server with one fault injected on purpose
(``tests/faulty_server.py``) it fails, naming the requirement the fault breaks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, server_process

from conformance.case import all_cases

ROOT = Path(__file__).resolve().parent.parent
FAULTY = ROOT / "tests" / "faulty_server.py"


def run_suite(url: str, tmp_path: Path, *options: str) -> tuple[int, str, dict[str, Any]]:
    """``python -m conformance --server URL``; its exit code, output and JSON report."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--server", url, "--json", str(report), *options],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert report.exists(), done.stdout + done.stderr
    return done.returncode, done.stdout, json.loads(report.read_text())


@contextmanager
def faulty_server(data_dir: Path, fault: str) -> Iterator[ServerProcess]:
    """The reference server with ``fault`` injected (see tests/faulty_server.py)."""
    process = subprocess.Popen(
        [sys.executable, str(FAULTY), fault, "serve", "--port=0", f"--data-dir={data_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert match, "the faulty server did not start"
        yield ServerProcess(process, match.group(0))
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def failed_ids(report: dict[str, Any]) -> set[str]:
    return {
        rid
        for result in report["results"]
        if result["verdict"] == "fail"
        for rid in result["failed_requirements"]
    }


def test_list_needs_no_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    for case in all_cases():
        assert case.id in done.stdout


@pytest.mark.slow
def test_the_suite_passes_against_the_reference_server(tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    log = tmp_path / "server.log"
    # --strict: the SHOULD and MAY cases too; the abandon period short enough to wait for;
    # --slow: the sync stream's 15 s keep-alive; --push: pushes to the suite's push service
    # on 127.0.0.1, which the server accepts with --allow-local-push.
    with server_process(
        tmp_path / "data",
        "--abandon-after=3",
        "--rtc-connect-timeout=2",
        "--rtc-max-sessions=3",
        "--allow-local-push",
        log=log,
    ) as server:
        code, out, report = run_suite(
            server.url,
            tmp_path,
            "--junit",
            str(junit),
            "--strict",
            "--slow",
            "--push",
            "--abandon-after",
            "3",
            "--rtc-connect-timeout",
            "2",
            "--rtc-max-sessions",
            "3",
        )
        assert server.stop() == 0
    # Bad input gets registry errors, never a crash: no traceback in the server's log.
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    bad = [r for r in report["results"] if r["verdict"] in ("fail", "error")]
    assert code == 0 and not bad, out
    # Every case of the messaging service ran (none skipped for want of an option).
    service = [r for r in report["results"] if r["section"].startswith("13")]
    assert len(service) >= 30 and all(r["verdict"] == "pass" for r in service), out
    summary = report["summary"]
    assert summary["pass"] >= 50
    assert out.rstrip().splitlines()[-1].startswith(f"{summary['pass']} passed, 0 failed")
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert sum(int(s.get("tests", 0)) for s in suites) == summary["cases"]


@pytest.mark.slow
def test_the_suite_passes_against_three_workers_on_redis(tmp_path: Path, redis_url: str) -> None:
    """``serve --workers 3 --redis``: three processes behind one port, each connection of
    the suite on whichever the kernel picks, behave as one server (issue 7), WebRTC
    sessions and their limits included. (``--storage memory`` is the same SQLite code
    on tmpfs: the run against the reference server covers it.)"""
    log = tmp_path / "server.log"
    with server_process(
        tmp_path / "data",
        "--workers=3",
        f"--redis={redis_url}",
        "--rtc-max-sessions=3",
        "--allow-local-push",
        log=log,
    ) as server:
        code, out, report = run_suite(server.url, tmp_path, "--push", "--rtc-max-sessions", "3")
        assert server.stop() == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert code == 0, out
    assert report["summary"]["fail"] == report["summary"]["error"] == 0


#: fault -> what the report of a whole run must name: from each set, at least one id
FAULTS = {
    "drop-chunk": [{"VXS-6.2-1"}],
    "duplicate-chunk": [{"VXS-6.2-1"}],
    "reorder-chunks": [{"VXS-6.2-1"}],
    # An ack before the commit breaks both the rule (5.3-3) and the ack's meaning (4.5-1).
    "ack-before-commit": [{"VXS-5.3-3", "VXS-4.5-1"}],
    "non-participant-listens": [{"VXS-6.1-1"}, {"VXS-8-2"}],
    "swap-error-code": [{"VXS-5.3-2"}],
    "rtp-timestamp-jump": [{"VXS-12-7"}],
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_injected_fault_fails_naming_its_requirement(tmp_path: Path, fault: str) -> None:
    # Only the cases that cite the requirements the fault breaks (``--only`` selects by
    # cited id; the summing-up claim case always runs): a whole run per fault would cost
    # the test suite minutes, and the whole run is checked fault-free above.
    options = [arg for ids in FAULTS[fault] for rid in sorted(ids) for arg in ("--only", rid)]
    with faulty_server(tmp_path / "data", fault) as server:
        code, out, report = run_suite(server.url, tmp_path, *options)
    assert code == 1, out
    named = failed_ids(report)
    for ids in FAULTS[fault]:
        assert ids & named, f"{fault}: the report names {sorted(named)}, none of {ids}\n{out}"
    claim = next(r for r in report["results"] if r["id"] == "1/server-role")
    assert claim["verdict"] == "fail"
    errors = [r["id"] for r in report["results"] if r["verdict"] == "error"]
    assert not errors, out
