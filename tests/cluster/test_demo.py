"""`bkv demo` runs the whole story against its own cluster and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_demo_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "bkv"), "demo", "--state-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "9 attempts left" in out
    assert "Demo complete" in out
    assert "stopped" in out
    # Nothing from the cluster is left running.
    assert not any((tmp_path / "c" / "pids").glob("*.pid"))
