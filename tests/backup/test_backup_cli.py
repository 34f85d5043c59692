"""`bkv backup create|list|restore` through the real console script, errors included."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from client_sdk.backup import BACKUP_ID_RE

from .conftest import KeyPair, err_line, listing, run_bkv, tree_snapshot


def _create(tree: Path, store: Path | str, key: KeyPair) -> str:
    result = run_bkv("backup", "create", tree, "--to", store, "--key-file", key.path)
    assert result.returncode == 0, result.stderr
    backup_id: str = result.stdout.decode().strip()
    assert BACKUP_ID_RE.fullmatch(backup_id), backup_id
    return backup_id


def test_round_trip_by_id_and_by_path(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    assert listing(store) == [f"{backup_id}.age", f"{backup_id}.json"]
    manifest = json.loads((store / f"{backup_id}.json").read_text())
    assert manifest["recipient"] == key.key.recipient()
    assert manifest["size"] == (store / f"{backup_id}.age").stat().st_size
    assert "readme" not in (store / f"{backup_id}.json").read_text()  # no file list

    by_id = tmp_path / "by-id"
    result = run_bkv("backup", "restore", backup_id, "--from", store, "--key-file", key.path, by_id)
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(by_id) == tree_snapshot(tree)

    by_path = tmp_path / "by-path"
    by_path.mkdir()  # an existing empty folder is fine
    url = f"file://{store}/{backup_id}.age"
    key_text = key.key.digits().encode()
    result = run_bkv("backup", "restore", url, by_path, stdin=key_text)
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(by_path) == tree_snapshot(tree)
    assert not [name for name in listing(tmp_path) if name.startswith(".")]


def test_create_with_recipient_only_and_list(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "nested" / "store"  # created on demand
    ids = []
    for _ in range(2):
        result = run_bkv("backup", "create", tree, "--to", store, "-r", key.key.recipient(), "-q")
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.decode().strip())
    listed = run_bkv("backup", "list", "--to", store)
    assert listed.returncode == 0
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split()[0] == "ID"
    assert [line.split()[0] for line in lines[1:]] == sorted(ids)
    for line in lines[1:]:
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d+\.\d KiB$", line), line


def test_list_empty_storage(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_bkv("backup", "list", "--to", tmp_path / "empty")
    assert result.returncode == 0 and result.stdout == b""
    assert "no backups" in err_line(result)


def test_wrong_key(tmp_path: Path, tree: Path, key: KeyPair, other_key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    dest = tmp_path / "dest"
    before = listing(tmp_path)
    result = run_bkv(
        "backup", "restore", backup_id, "--from", store, "--key-file", other_key.path, dest
    )
    assert result.returncode == 2
    assert err_line(result) == "bkv: this key does not open this backup"
    assert listing(tmp_path) == before  # no dest, no temporary folder


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_backup(tmp_path: Path, tree: Path, key: KeyPair, damage: str) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    backup = store / f"{backup_id}.age"
    data = bytearray(backup.read_bytes())
    if damage == "flip":
        data[-1000] ^= 0x40  # the tail: much of the tar was already extracted
    else:
        del data[len(data) - 5000 :]
    backup.write_bytes(bytes(data))
    before = listing(tmp_path)
    result = run_bkv("backup", "restore", backup, "--key-file", key.path, tmp_path / "dest")
    assert result.returncode == 3
    match = re.fullmatch(r"bkv: the backup is damaged \(at byte (\d+)\)", err_line(result))
    assert match is not None
    assert 0 < int(match.group(1)) < len(data)
    assert listing(tmp_path) == before


def test_malformed_key_file(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    bad = tmp_path / "bad.key"
    bad.write_text(key.key.digits()[:-1] + "\n")
    before = listing(tmp_path)
    result = run_bkv(
        "backup", "restore", backup_id, "--from", store, "--key-file", bad, tmp_path / "d"
    )
    assert result.returncode == 2
    assert err_line(result) == f"bkv: {bad}: key has 63 hex digits, expected 64"
    assert listing(tmp_path) == before


def test_missing_storage(tmp_path: Path, key: KeyPair) -> None:
    missing = tmp_path / "no-such-store"
    result = run_bkv("backup", "list", "--to", missing)
    assert result.returncode == 4
    assert err_line(result) == f"bkv: storage not found: {missing}"
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--from", missing,
        "--key-file", key.path, tmp_path / "dest",
    )  # fmt: skip
    assert result.returncode == 4
    assert err_line(result) == f"bkv: storage not found: {missing}"
    assert listing(tmp_path) == ["backup.key"]


def test_missing_backup(tmp_path: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    store.mkdir()
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--from", store,
        "--key-file", key.path, tmp_path / "dest",
    )  # fmt: skip
    assert result.returncode == 4
    assert err_line(result) == f"bkv: backup not found: 20260101T000000Z-abcdef in {store}"
    assert listing(tmp_path) == ["backup.key", "store"]


def test_id_without_storage(tmp_path: Path, key: KeyPair) -> None:
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--key-file", key.path, tmp_path / "d"
    )
    assert result.returncode == 2
    assert "--from URL" in err_line(result)


def test_destination_not_empty(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    result = run_bkv("backup", "restore", backup_id, "--from", store, "--key-file", key.path, dest)
    assert result.returncode == 1
    assert err_line(result) == f"bkv: {dest} is not empty"
    assert listing(dest) == ["keep.txt"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_source_folder(tmp_path: Path, key: KeyPair, kind: str) -> None:
    src = tmp_path / "src"
    if kind == "file":
        src.write_text("not a folder")
    store = tmp_path / "store"
    result = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path)
    assert result.returncode == 1
    expected = (
        f"folder to back up not found: {src}" if kind == "missing" else f"not a folder: {src}"
    )
    assert err_line(result) == f"bkv: {expected}"
    assert result.stdout == b""
    assert not store.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_in_source(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    secret = tree / "docs" / "readme.txt"
    secret.chmod(0)
    store = tmp_path / "store"
    result = run_bkv("backup", "create", tree, "--to", store, "--key-file", key.path)
    assert result.returncode == 1
    assert err_line(result) == f"bkv: can't read {secret}: Permission denied"
    assert listing(store) == []  # the partial upload was discarded


def test_link_outside_source_is_skipped_with_warning(
    tmp_path: Path, tree: Path, key: KeyPair
) -> None:
    os.symlink("/etc/hostname", tree / "outside")
    result = run_bkv("backup", "create", tree, "--to", tmp_path / "s", "--key-file", key.path)
    assert result.returncode == 0
    assert f"skipped {tree / 'outside'}: symbolic link pointing outside" in err_line(result)
    backup_id = result.stdout.decode().strip()
    dest = tmp_path / "dest"
    restored = run_bkv(
        "backup", "restore", backup_id, "--from", tmp_path / "s", "--key-file", key.path, dest
    )
    assert restored.returncode == 0, restored.stderr
    assert not (dest / "outside").exists() and not (dest / "outside").is_symlink()


def test_unsupported_storage_url(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    result = run_bkv("backup", "create", tree, "--to", "ftp://host/x", "--key-file", key.path)
    assert result.returncode == 2
    assert "unsupported storage URL" in err_line(result)


def test_quiet_and_non_tty_print_no_progress(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    result = run_bkv("backup", "create", tree, "--to", tmp_path / "s", "--key-file", key.path)
    assert result.stderr == b""  # stderr is a pipe here: no progress bar
