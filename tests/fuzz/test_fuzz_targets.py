"""The fuzz targets in the default test run: seed replay, a guard check and a short atheris run.

The committed seeds (real messages, ``make_corpus.py``) replay in process on
every run; a short coverage-guided atheris run over all targets at once
follows when atheris is installed (``make fuzz`` runs each target longer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, Target, run_one

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
QUICK_SECONDS = 8  # the atheris share of the default run (plus start-up)


def test_every_target_has_seeds() -> None:
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(TARGETS)
    for name in TARGETS:
        assert 2 <= len(list((CORPUS / name).iterdir())) <= 10, name


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_replay_cleanly(name: str) -> None:
    for seed in sorted((CORPUS / name).iterdir()):
        data = seed.read_bytes()
        run_one(TARGETS[name], data)
        # Truncations and single flipped bytes of real messages: the cheapest mutations.
        for cut in {0, 1, len(data) // 2, max(0, len(data) - 1)}:
            run_one(TARGETS[name], data[:cut])
        for pos in range(0, len(data), max(1, len(data) // 16)):
            run_one(TARGETS[name], data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1 :])


def test_seeds_reach_past_the_first_check() -> None:
    """Seeds are real messages: each parser accepts at least one of them untouched."""
    accepted = []
    for name, target in TARGETS.items():
        for seed in sorted((CORPUS / name).iterdir()):
            try:
                target.run(seed.read_bytes())
            except target.allowed:
                continue
            accepted.append(name)
            break
    assert sorted(accepted) == sorted(TARGETS)


def test_an_undocumented_exception_is_a_finding() -> None:
    def parser(data: bytes) -> None:
        if data == b"boom":
            raise IndexError("parser bug")
        raise ValueError("documented refusal")

    target = Target("selftest", parser, (ValueError,))
    run_one(target, b"ok")
    with pytest.raises(IndexError):
        run_one(target, b"boom")


def test_quick_atheris_run_over_every_target(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--target", "all", "--together",
         "--seconds", str(QUICK_SECONDS), "--artifacts", str(tmp_path)],
        capture_output=True, text=True, timeout=QUICK_SECONDS + 120, check=False,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir())
    assert done.returncode == 0 and not crashes, done.stderr[-4000:]
    assert "Done" in done.stderr and "stat::number_of_executed_units" in done.stderr
