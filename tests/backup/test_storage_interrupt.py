"""An interrupt (Ctrl-C) while an object is being published leaves no hidden part file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client_sdk.storage import open_storage

from .conftest import listing


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_keyboard_interrupt_during_commit_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    storage = open_storage(str(tmp_path / "store"), create=True)

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    with storage.open_writer("object.age") as writer:
        writer.write(b"x" * 1000)
        monkeypatch.setattr(os, where, interrupted)
        with pytest.raises(KeyboardInterrupt):
            writer.commit()
        monkeypatch.undo()
    assert listing(tmp_path / "store") == []


def test_commit_then_exit_keeps_the_object(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "store"), create=True)
    storage.write_small("kept.age", b"data")
    assert listing(tmp_path / "store") == ["kept.age"]
    assert storage.read_small("kept.age", 10) == b"data"


def test_abandoned_part_files_go_only_when_old(tmp_path: Path) -> None:
    import time

    storage = open_storage(str(tmp_path / "store"), create=True)
    old = tmp_path / "store" / ".pack-a.age.0123456789ab.part"
    fresh = tmp_path / "store" / ".pack-b.age.ba9876543210.part"
    for part in (old, fresh):
        part.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    storage.write_small("kept.age", b"data")
    assert storage.remove_abandoned(3600) == 1
    assert listing(tmp_path / "store") == [fresh.name, "kept.age"]
