"""Library-level backup tests: round trips, unsafe archives, listing, storage, progress."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client_sdk import age
from client_sdk.backup import (
    BACKUP_ID_RE,
    BackupNotFound,
    DamagedBackupError,
    DestinationError,
    InvalidRecipientError,
    SourceError,
    WrongKeyError,
    create_backup,
    list_backups,
    new_backup_id,
    restore_backup,
)
from client_sdk.progress import CountingStream, ProgressBar, format_duration, format_size, render
from client_sdk.storage import (
    ObjectNotFound,
    StorageNotFound,
    StorageURLError,
    open_storage,
    split_object_url,
)

from .conftest import KeyPair, listing, tree_snapshot


def test_round_trip_reports_progress(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    seen: list[tuple[int, int | None]] = []
    backup_id = create_backup(
        tree,
        str(tmp_path / "store"),
        key.key.recipient(),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen and all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    done, estimate = seen[-1]
    assert estimate is not None and done > 200_000
    restored: list[tuple[int, int | None]] = []
    dest = tmp_path / "dest"
    restore_backup(
        backup_id,
        key.key,
        dest,
        storage_url=str(tmp_path / "store"),
        progress=lambda d, t: restored.append((d, t)),
    )
    assert tree_snapshot(dest) == tree_snapshot(tree)
    size = (tmp_path / "store" / f"{backup_id}.age").stat().st_size
    assert restored[-1] == (size, size)
    assert dest.stat().st_mode & 0o777 == 0o700  # restored data is private by default


def test_empty_folder_round_trip(tmp_path: Path, key: KeyPair) -> None:
    (tmp_path / "void").mkdir()
    store = str(tmp_path / "store")
    backup_id = create_backup(tmp_path / "void", store, key.key.recipient())
    restore_backup(backup_id, key.key, tmp_path / "out", storage_url=store)
    assert listing(tmp_path / "out") == []


def test_bad_recipient_is_refused_before_anything_is_written(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(InvalidRecipientError):
        create_backup(tree, str(tmp_path / "store"), "AGE-SECRET-KEY-1QQQ")
    assert not (tmp_path / "store").exists()


def test_wrong_key_library(tmp_path: Path, tree: Path, key: KeyPair, other_key: KeyPair) -> None:
    store = str(tmp_path / "store")
    backup_id = create_backup(tree, store, key.key.recipient())
    with pytest.raises(WrongKeyError, match="this key does not open this backup"):
        restore_backup(backup_id, other_key.key, tmp_path / "dest", storage_url=store)
    assert not (tmp_path / "dest").exists()


def _store_archive(store: Path, key: KeyPair, tar_bytes: bytes) -> str:
    """Encrypt arbitrary (authenticated but hostile) content as a backup in ``store``."""
    store.mkdir(exist_ok=True)
    backup_id = new_backup_id()
    with (store / f"{backup_id}.age").open("wb") as dst:
        age.encrypt(io.BytesIO(tar_bytes), dst, [key.key.recipient()])
    return backup_id


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


UNSAFE = {
    "dot-dot": [_member("ok.txt"), _member("../escaped.txt")],
    "dot-dot-inside": [_member("a/../b.txt")],
    "absolute": [_member("/tmp/absolute-bkv-test.txt")],
    "device": [_member("dev", tarfile.CHRTYPE)],
    "symlink-out": [_member("link", tarfile.SYMTYPE, "../../etc"), _member("link/x")],
    "abs-symlink": [_member("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink-out": [_member("hl", tarfile.LNKTYPE, "../outside.txt")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused(tmp_path: Path, key: KeyPair, case: str) -> None:
    store = tmp_path / "store"
    backup_id = _store_archive(store, key, _tar(*((m, b"evil") for m in UNSAFE[case])))
    (tmp_path / "outside.txt").write_text("outside")
    before = listing(tmp_path)
    with pytest.raises(DamagedBackupError, match="unsafe entry"):
        restore_backup(backup_id, key.key, tmp_path / "dest", storage_url=str(store))
    assert listing(tmp_path) == before
    assert not Path("/tmp/absolute-bkv-test.txt").exists()


def test_authenticated_garbage_is_not_an_archive(tmp_path: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _store_archive(store, key, os.urandom(5000))
    with pytest.raises(DamagedBackupError, match="not a valid archive"):
        restore_backup(backup_id, key.key, tmp_path / "dest", storage_url=str(store))
    assert listing(tmp_path) == ["backup.key", "store"]


def test_not_an_age_file(tmp_path: Path, key: KeyPair) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "x.age").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DamagedBackupError, match="damaged"):
        restore_backup(str(tmp_path / "store" / "x.age"), key.key, tmp_path / "dest")
    assert listing(tmp_path) == ["backup.key", "store"]


def test_destination_checks(tmp_path: Path, key: KeyPair) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="is not a folder"):
        restore_backup("a.age", key.key, tmp_path / "file", storage_url=str(tmp_path))
    with pytest.raises(DestinationError, match="does not exist"):
        restore_backup("a.age", key.key, tmp_path / "no" / "dest", storage_url=str(tmp_path))
    with pytest.raises(BackupNotFound, match="backup not found: a in"):
        restore_backup("a.age", key.key, tmp_path / "dest", storage_url=str(tmp_path))


def test_listing_shows_only_complete_backups(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    good = create_backup(tree, str(store), key.key.recipient())
    (store / "20250101T000000Z-aaaaaa.json").write_text("{}")  # junk manifest
    (store / "20250101T000000Z-aaaaaa.age").write_bytes(b"x")
    (store / "20250102T000000Z-bbbbbb.age").write_bytes(b"x")  # no manifest
    (store / f".{good}.age.123.part").write_bytes(b"x")  # an upload in progress
    infos = list_backups(str(store))
    assert [i.backup_id for i in infos] == [good]
    assert infos[0].recipient == key.key.recipient()
    assert infos[0].size == (store / f"{good}.age").stat().st_size
    with pytest.raises(StorageNotFound):
        list_backups(str(tmp_path / "absent"))


def test_backup_ids_sort_by_time() -> None:
    early = new_backup_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_backup_id(datetime(2026, 11, 23, 12, 15, 0, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-") and BACKUP_ID_RE.fullmatch(early)
    assert early < late
    assert len({new_backup_id() for _ in range(20)}) == 20


def test_folder_writer_publishes_only_on_commit(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "s"), create=True)
    with storage.open_writer("obj") as writer:
        writer.write(b"partial")
    assert storage.names() == [] and listing(tmp_path / "s") == []
    with storage.open_writer("obj") as writer:
        writer.write(memoryview(b"whole"))
        assert writer.commit() == 5
    assert storage.read_small("obj", 10) == b"whole"
    with pytest.raises(ObjectNotFound):
        storage.open_reader("missing")
    with pytest.raises(StorageURLError):
        storage.open_writer("../escape")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/data/b/x.age", ("/data/b", "x.age")),
        ("file:///data/b/x.age", ("/data/b", "x.age")),
        ("file:///data/my%20b/x.age", ("/data/my b", "x.age")),
        ("s3://bucket/pre/fix/x.age", ("s3://bucket/pre/fix", "x.age")),
        ("s3://bucket/x.age", ("s3://bucket", "x.age")),
    ],
)
def test_split_object_url(url: str, expected: tuple[str, str]) -> None:
    assert split_object_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://h/x", "file://remote-host/x", "s3:///nobucket", ""])
def test_bad_storage_urls(url: str) -> None:
    with pytest.raises(StorageURLError):
        open_storage(url)


def test_progress_formatting() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(20 * 1024 * 1024) == "20.0 MiB"
    assert format_duration(65) == "1:05" and format_duration(3725) == "1:02:05"
    line = render("restoring", 50 * 1024, 100 * 1024, 2.0)
    assert "50%" in line and "25.0 KiB/s" in line and "ETA 0:02" in line
    assert "ETA" not in render("encrypting", 10, None, 1.0)
    assert "100%" in render("x", 200, 100, 1.0)  # an estimate that was too low


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        with ProgressBar("restoring", stream=stream, interval=0.0) as bar:
            counter = CountingStream(io.BytesIO(b"x" * 3000), bar, 3000)
            while counter.read(1000):
                pass
    assert pipe.getvalue() == ""
    assert tty.getvalue().startswith("\rrestoring [") and tty.getvalue().endswith("\n")
    assert "100% 2.9 KiB / 2.9 KiB" in tty.getvalue()
    quiet = _Tty()
    with ProgressBar("x", stream=quiet, enabled=False) as bar:
        bar(1, 2)
    assert quiet.getvalue() == ""


@pytest.mark.interop
def test_backup_opens_with_stock_age_and_tar(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = create_backup(tree, str(store), key.key.recipient())
    identity = tmp_path / "identity.txt"
    identity.write_text(key.key.identity() + "\n")
    opened = subprocess.run(
        ["age", "-d", "-i", identity, store / f"{backup_id}.age"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    with tarfile.open(fileobj=io.BytesIO(opened.stdout), mode="r:") as tar:
        names = set(tar.getnames())
    assert {"docs/readme.txt", "фото-😀.jpg", "empty-dir", "link-inside"} <= names
    # and a tar made by hand, encrypted by the stock tool, restores with bkv
    plain = tmp_path / "hand.tar"
    plain.write_bytes(_tar((_member("hand/made.txt"), b"by age")))
    subprocess.run(
        ["age", "-r", key.key.recipient(), "-o", store / "hand.age", plain], check=True, timeout=60
    )
    restore_backup(str(store / "hand.age"), key.key, tmp_path / "dest")
    assert (tmp_path / "dest" / "hand" / "made.txt").read_bytes() == b"by age"


def test_source_changing_mid_backup_discards_the_upload(tmp_path: Path, key: KeyPair) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-big.bin").write_bytes(os.urandom(600_000))  # fills the tar buffer first
    doomed = src / "z-last.txt"
    doomed.write_text("deleted while the backup runs")

    def delete_on_first_progress(done: int, total: int | None) -> None:
        doomed.unlink(missing_ok=True)  # runs in the tar thread, before z-last is read

    store = tmp_path / "store"
    with pytest.raises(SourceError, match=f"can't read {doomed}: No such file or directory"):
        create_backup(src, str(store), key.key.recipient(), progress=delete_on_first_progress)
    assert listing(store) == []  # no object, no manifest, no temporary file
