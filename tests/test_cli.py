"""The ``voxer-stream`` command end to end: server and clients as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import server_process

from voxer_stream.media.encode import encode_file, tone_wav
from voxer_stream.media.ogg import read_ogg_opus

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[str]:
    """``voxer-stream serve --port 0``; it must exit 0 on SIGTERM at the end."""
    with server_process(tmp_path / "data", "--synchronous", "NORMAL") as server:
        yield server.url
        assert server.stop() == 0


class Cli:
    def __init__(self, url: str, config: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VOXER_")},
            "VOXER_URL": url,
            "VOXER_CONFIG": str(config),
        }

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "voxer_stream", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result


def test_register_talk_listen_export(cli_server: str, tmp_path: Path) -> None:
    alice = Cli(cli_server, tmp_path / "alice.json")
    bob = Cli(cli_server, tmp_path / "bob.json")
    alice.run("register", "alice", "--password", PASSWORD)
    bob.env["VOXER_PASSWORD"] = PASSWORD  # the other way to give a password
    bob.run("register", "bob")
    out = alice.run("register", "alice", "--password", PASSWORD, code=1)
    assert out.stderr.startswith("error: USERNAME_TAKEN (203)")
    assert out.stderr.count("\n") == 1
    alice.run("login", "alice", "--password", PASSWORD)
    bob.run("login", "bob")
    assert json.loads((tmp_path / "alice.json").read_text())["server"] == cli_server
    assert alice.run("whoami").stdout.startswith("alice (")
    alice_id = json.loads(alice.run("whoami", "--json").stdout)["id"]
    me = json.loads(bob.run("whoami", "--json").stdout)
    assert me["username"] == "bob"

    thread = alice.run("thread", "create", "--title", "plans", "--participant", "bob").stdout
    thread_id = thread.strip()
    assert bob.run("threads").stdout.split("\t")[0] == thread_id

    wav = tmp_path / "tone.wav"
    tone_wav(wav, 2.0, 440.0)
    packets = encode_file(wav)
    talk = alice.run("talk", thread_id, str(wav), "--message-id", "m1", "--json")
    closed = json.loads(talk.stdout)
    assert closed == {"msg": "m1", "chunks": len(packets), "duration": 960 * len(packets)}
    (line,) = bob.run("messages", thread_id).stdout.splitlines()
    assert line.split("\t")[:4] == ["m1", alice_id, "audio", "closed"]

    heard = tmp_path / "heard.opus"
    summary = json.loads(bob.run("listen", "m1", "-o", str(heard), "--json").stdout)
    assert summary["chunks"] == len(packets)
    assert summary["end"] == {"chunks": len(packets), "duration": 960 * len(packets)}
    _, got = read_ogg_opus(heard.read_bytes())
    assert got == packets

    text = bob.run("listen", "m1", "--from-seq", "50").stdout
    assert f"chunks {len(packets) - 50} (from seq 50)" in text

    exported = tmp_path / "export.opus"
    bob.run("export", "m1", "-o", str(exported))
    _, got = read_ogg_opus(exported.read_bytes())
    assert got == packets

    # Errors: one line on stderr with the registry name and code, exit 1.
    carol = Cli(cli_server, tmp_path / "carol.json")
    carol.run("register", "carol", "--password", PASSWORD)
    carol.run("login", "carol", "--password", PASSWORD)
    # A message in a thread carol is not in is answered as if it did not exist.
    err = carol.run("listen", "m1", code=1).stderr
    assert err.startswith("error: MESSAGE_NOT_FOUND (301)") and err.count("\n") == 1
    assert bob.run("listen", "nope", code=1).stderr.startswith("error: MESSAGE_NOT_FOUND (301)")
    bob.run("logout")
    assert "not logged in" in bob.run("whoami", code=1).stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cli = Cli("http://127.0.0.1:9", tmp_path / "c.json")
    cli.run("listen", code=2)
    cli.run("listen", "m1", "--from-seq", "1", "--live-edge", code=2)
    cli.run("frobnicate", code=2)
    # No server there: one line, exit 1.
    cli.env["VOXER_TOKEN"] = "t"
    err = cli.run("whoami", code=1).stderr
    assert err.startswith("error: ") and err.count("\n") == 1
