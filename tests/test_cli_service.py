"""The CLI's messaging verbs: ``say``, ``messages`` showing every kind, ``threads`` with
counts, and ``sync`` printing (and following) the timeline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import server_process
from test_cli import PASSWORD, Cli


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[str]:
    with server_process(tmp_path / "data", "--synchronous", "NORMAL") as server:
        yield server.url
        assert server.stop() == 0


def test_say_messages_threads_and_sync(cli_server: str, tmp_path: Path) -> None:
    alice = Cli(cli_server, tmp_path / "alice.json")
    bob = Cli(cli_server, tmp_path / "bob.json")
    for who, cli in (("alice", alice), ("bob", bob)):
        cli.run("register", who, "--password", PASSWORD)
        cli.run("login", who, "--password", PASSWORD)
    thread = alice.run("thread", "create", "--title", "plans", "--participant", "bob").stdout
    thread = thread.strip()
    assert alice.run("say", thread, "first", "--id", "s1").stdout.strip() == "s1"
    alice.run("say", thread, "first", "--id", "s1")  # a replay: still one message
    alice.run("say", thread, "just for you", "--to", "bob")
    lines = bob.run("messages", thread).stdout.splitlines()
    assert [line.split("\t")[2:] for line in lines] == [["text", "first"], ["text", "just for you"]]
    assert bob.run("threads").stdout.strip().endswith("2 unread, 0 unheard")
    events = [json.loads(line) for line in bob.run("sync").stdout.splitlines()]
    assert [e["type"] for e in events] == ["thread", "message", "message"]
    last = events[-1]["token"]
    # --follow waits for what comes next and prints it as it arrives.
    follow = subprocess.Popen(
        [sys.executable, "-m", "voxer_stream", "sync", "--follow", "--since", last],
        env=bob.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        alice.run("say", thread, "are you there?")
        assert follow.stdout is not None
        event = json.loads(follow.stdout.readline())
        assert (event["type"], event["data"]["text"]) == ("message", "are you there?")
    finally:
        follow.terminate()
        follow.communicate(timeout=10)
