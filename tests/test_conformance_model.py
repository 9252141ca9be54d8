"""The conformance suite's stateful model (``conformance/model.py``) against the real server.

The model runs its own trio loop in a thread, so these are plain sync tests. One server
process serves the module: each example of the model makes its own thread and messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, server_process

from conformance.model import Listener, ProtocolModel, main, run_model
from conformance.spec import requirements
from voxer_stream.wire import Chunk, Frame


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server_process(tmp_path_factory.mktemp("model") / "data") as proc:
        yield proc


def test_model_cites_only_ids_of_the_spec() -> None:
    source = (Path(__file__).parent.parent / "conformance" / "model.py").read_text(encoding="utf-8")
    cited = set(re.findall(r'"(VXS-[0-9.]+-\d+)"', source))
    assert cited
    assert cited <= set(requirements()), cited - set(requirements())


def test_reference_server_matches_the_model(served: ServerProcess) -> None:
    # A fixed seed keeps the programs the same from run to run; the server's timing
    # (and so which interleavings really happen) still varies.
    result = run_model(served.url, examples=15, steps=30, seed=20241125)
    assert result.ok, result.report
    stats = result.stats
    # Not blind: the programs really ran talkers, listeners, drops and stalls.
    assert stats.chunks_sent > 50, stats.summary()
    assert stats.chunks_checked > 10, stats.summary()
    assert stats.drops and stats.resumes and stats.stalls, stats.summary()
    assert stats.live_required, stats.summary()


class DropsSecondChunk(ProtocolModel):
    """The model's view of a server that loses one chunk on its way to a listener."""

    def received(self, listener: Listener, frames: list[Frame]) -> list[Frame]:
        kept: list[Frame] = []
        for frame in frames:
            if isinstance(frame, Chunk):
                seen = getattr(listener, "seen", 0)
                listener.seen = seen + 1  # type: ignore[attr-defined]
                if seen == 1:
                    continue
            kept.append(frame)
        return kept


def test_model_catches_a_dropped_chunk(served: ServerProcess) -> None:
    result = run_model(
        served.url, examples=15, steps=25, seed=7, base=DropsSecondChunk, shrink=False
    )
    assert not result.ok
    assert "VXS-6.2-1" in result.report, result.report
    assert "dropped" in result.report, result.report


def test_cli(served: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", served.url, "--examples", "2", "--steps", "8", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "PASS: " in out and "seed 3" in out, out
