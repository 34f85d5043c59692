"""`bkv backup create|list|restore|forget|check` through the real console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from client_sdk.backup import BACKUP_ID_RE, create_backup

from .conftest import KeyPair, err_line, listing, run_bkv, tree_snapshot


def _create(tree: Path, store: Path | str, key: KeyPair, *extra: str) -> str:
    result = run_bkv("backup", "create", tree, "--to", store, "--key-file", key.path, *extra)
    assert result.returncode == 0, result.stderr
    backup_id: str = result.stdout.decode().strip()
    assert BACKUP_ID_RE.fullmatch(backup_id), backup_id
    return backup_id


def _restore(store: Path, backup_id: str, key: KeyPair, dest: Path, *extra: str) -> None:
    result = run_bkv(
        "backup", "restore", backup_id, "--from", store, "--key-file", key.path, dest, *extra
    )
    assert result.returncode == 0, result.stderr


def _kinds(store: Path) -> list[str]:
    return sorted({name.split("-")[0] for name in listing(store)})


def test_round_trip_and_stock_age_opens_every_object(
    tmp_path: Path, tree: Path, key: KeyPair
) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    assert _kinds(store) == ["config.age", "index", "key", "pack", "snapshot"]
    dest = tmp_path / "dest"
    _restore(store, backup_id, key, dest)
    assert tree_snapshot(dest) == tree_snapshot(tree)
    assert (dest / "docs" / "readme.txt").stat().st_mtime_ns == (
        tree / "docs" / "readme.txt"
    ).stat().st_mtime_ns
    assert not [name for name in listing(tmp_path) if name.startswith(".")]

    identity = tmp_path / "identity.txt"
    identity.write_text(key.key.identity() + "\n")
    for name in listing(store):
        opened = subprocess.run(
            ["age", "-d", "-i", identity, store / name], capture_output=True, timeout=60
        )
        assert opened.returncode == 0, (name, opened.stderr)
        if name.startswith("snapshot-"):
            snapshot = json.loads(opened.stdout)
            assert snapshot["id"] == backup_id and snapshot["format"] == "bkv-snapshot/v1"
            assert "docs/readme.txt" in {entry["path"] for entry in snapshot["tree"]}
        assert b"hello backup" not in (store / name).read_bytes()


def test_second_backup_stores_only_the_change(tmp_path: Path, key: KeyPair) -> None:
    src = tmp_path / "src"
    (src / "media").mkdir(parents=True)
    (src / "media" / "video.bin").write_bytes(os.urandom(6_000_000))
    (src / "msgstore.db").write_bytes(os.urandom(3_000_000))
    store = tmp_path / "store"
    first = json.loads(
        run_bkv("backup", "create", src, "--to", store, "--key-file", key.path, "--json").stdout
    )
    assert first["new_bytes"] == 9_000_000
    with (src / "msgstore.db").open("ab") as db:
        db.write(os.urandom(30_000))
    (src / "media" / "new.jpg").write_bytes(os.urandom(200_000))
    before = sum(p.stat().st_size for p in store.iterdir())
    second = json.loads(
        run_bkv("backup", "create", src, "--to", store, "--key-file", key.path, "--json").stdout
    )
    added = sum(p.stat().st_size for p in store.iterdir()) - before
    assert second["unchanged_files"] == 1  # the video was not read again
    assert second["new_bytes"] < 200_000 + 30_000 + 4 * 1024 * 1024  # the DB's last chunk
    assert added < 1.5 * (200_000 + 30_000) + 4 * 1024 * 1024 + 20_000

    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path)
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "FILES", "SIZE", "NEW"]
    assert [line.split()[0] for line in lines[1:]] == [first["snapshot_id"], second["snapshot_id"]]
    rows = json.loads(
        run_bkv("backup", "list", "--to", store, "--key-file", key.path, "--json").stdout
    )
    assert [r["files"] for r in rows] == [2, 3]
    assert rows[1]["new_bytes"] == second["new_bytes"]
    dest = tmp_path / "dest"
    _restore(store, first["snapshot_id"], key, dest)
    assert (dest / "msgstore.db").stat().st_size == 3_000_000


def test_single_file_backups_still_list_and_restore(
    tmp_path: Path, tree: Path, key: KeyPair
) -> None:
    store = tmp_path / "store"
    old_id = create_backup(tree, str(store), key.key.recipient())
    new_id = _create(tree, store, key)
    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path)
    lines = listed.stdout.decode().splitlines()[1:]
    assert [line.split()[0] for line in lines] == sorted([old_id, new_id])
    assert any(line.split()[3] == "-" for line in lines)  # no file count for the old format
    dest = tmp_path / "old"
    _restore(store, old_id, key, dest)
    assert tree_snapshot(dest) == tree_snapshot(tree)
    by_url = tmp_path / "by-url"
    result = run_bkv("backup", "restore", f"file://{store}/{old_id}.age", by_url,
                     stdin=key.key.digits().encode())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(by_url) == tree_snapshot(tree)
    forgot = run_bkv("backup", "forget", old_id, "--to", store, "--key-file", key.path)
    assert forgot.returncode == 0, forgot.stderr
    assert f"{old_id}.age" not in listing(store)


def test_restore_one_path(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    one = tmp_path / "one"
    _restore(store, backup_id, key, one, "--path", "docs/deep")
    assert tree_snapshot(one) == {
        k: v for k, v in tree_snapshot(tree).items() if k == "docs" or k.startswith("docs/deep")
    }
    single = tmp_path / "single"
    _restore(store, backup_id, key, single, "--path", "binary.dat")
    assert listing(single) == ["binary.dat"]
    before = listing(tmp_path)
    result = run_bkv("backup", "restore", backup_id, "--from", store, "--key-file", key.path,
                     tmp_path / "none", "--path", "no/such")  # fmt: skip
    assert result.returncode == 2
    assert err_line(result) == f"bkv: no/such is not in backup {backup_id}"
    assert listing(tmp_path) == before


def test_forget_and_prune(tmp_path: Path, key: KeyPair) -> None:
    src = tmp_path / "src"
    src.mkdir()
    store = tmp_path / "store"
    ids = []
    for day in range(3):
        (src / f"day{day}.bin").write_bytes(os.urandom(1_500_000))
        if day:
            (src / f"day{day - 1}.bin").unlink()
        ids.append(_create(src, store, key, "-q"))
    size = sum(p.stat().st_size for p in store.iterdir())
    result = run_bkv("backup", "forget", "--to", store, "--key-file", key.path, "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["removed", ids[0], "removed", ids[1]]
    assert sum(p.stat().st_size for p in store.iterdir()) < size - 2_900_000
    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path, "--json")
    assert [row["id"] for row in json.loads(listed.stdout)] == [ids[2]]
    checked = run_bkv("backup", "check", "--to", store, "--key-file", key.path, "--read-data")
    assert checked.returncode == 0, checked.stderr
    assert "no problems found" in checked.stdout.decode()
    dest = tmp_path / "dest"
    _restore(store, ids[2], key, dest)
    assert listing(dest) == ["day2.bin"]
    unknown = run_bkv("backup", "forget", "20260101T000000Z-abcdef", "--to", store,
                      "--key-file", key.path)  # fmt: skip
    assert unknown.returncode == 7
    assert "backup not found: 20260101T000000Z-abcdef" in err_line(unknown)
    both = run_bkv("backup", "forget", ids[2], "--keep-last", "1", "--to", store,
                   "--key-file", key.path)  # fmt: skip
    assert both.returncode == 2


def test_list_empty_storage(tmp_path: Path, key: KeyPair) -> None:
    (tmp_path / "empty").mkdir()
    result = run_bkv("backup", "list", "--to", tmp_path / "empty", "--key-file", key.path)
    assert result.returncode == 0 and result.stdout == b""
    assert "no backups" in err_line(result)


def test_wrong_key(tmp_path: Path, tree: Path, key: KeyPair, other_key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    dest = tmp_path / "dest"
    before, stored = listing(tmp_path), listing(store)
    result = run_bkv(
        "backup", "restore", backup_id, "--from", store, "--key-file", other_key.path, dest
    )
    assert result.returncode == 3
    assert err_line(result) == "bkv: this key does not open this backup"
    assert listing(tmp_path) == before  # no dest, no temporary folder
    for command in (("create", tree), ("list",), ("check",)):
        result = run_bkv("backup", *command, "--to", store, "--key-file", other_key.path)
        assert result.returncode == 3, command
        assert err_line(result) == "bkv: this key does not open this backup"
    assert listing(store) == stored


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_pack(tmp_path: Path, tree: Path, key: KeyPair, damage: str) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    (pack,) = [store / n for n in listing(store) if n.startswith("pack-")]
    data = bytearray(pack.read_bytes())
    if damage == "flip":
        data[-1000] ^= 0x40
        pack.write_bytes(bytes(data))
    elif damage == "truncate":
        pack.write_bytes(bytes(data[:-5000]))
    else:
        pack.unlink()
    before = listing(tmp_path)
    result = run_bkv("backup", "restore", backup_id, "--from", store, "--key-file", key.path,
                     tmp_path / "dest")  # fmt: skip
    assert result.returncode == 6
    assert err_line(result).startswith(f"bkv: {pack.name} ")
    assert listing(tmp_path) == before
    checked = run_bkv("backup", "check", "--to", store, "--key-file", key.path, "--read-data")
    assert checked.returncode == 6
    assert pack.name in err_line(checked)


def test_malformed_key_file(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _create(tree, store, key)
    bad = tmp_path / "bad.key"
    bad.write_text(key.key.digits()[:-2] + "zz\n")  # one digit short: test_key_typo_cli.py
    before = listing(tmp_path)
    result = run_bkv(
        "backup", "restore", backup_id, "--from", store, "--key-file", bad, tmp_path / "d"
    )
    assert result.returncode == 2
    assert err_line(result).startswith(f"bkv: {bad}: unexpected character 'z' at position")
    assert listing(tmp_path) == before


def test_missing_storage(tmp_path: Path, key: KeyPair) -> None:
    missing = tmp_path / "no-such-store"
    for command in (("list", "--to"), ("check", "--to"), ("forget", "--keep-last", "1", "--to")):
        result = run_bkv("backup", *command, missing, "--key-file", key.path)
        assert result.returncode == 7, command
        assert err_line(result) == f"bkv: storage not found: {missing}"
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--from", missing,
        "--key-file", key.path, tmp_path / "dest",
    )  # fmt: skip
    assert result.returncode == 7
    assert err_line(result) == f"bkv: storage not found: {missing}"
    assert listing(tmp_path) == ["backup.key"]


def test_missing_backup(tmp_path: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    store.mkdir()
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--from", store,
        "--key-file", key.path, tmp_path / "dest",
    )  # fmt: skip
    assert result.returncode == 7
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
    assert listing(store) == []  # the packs already written were deleted again


def test_link_outside_source_is_skipped_with_warning(
    tmp_path: Path, tree: Path, key: KeyPair
) -> None:
    os.symlink("/etc/hostname", tree / "outside")
    result = run_bkv("backup", "create", tree, "--to", tmp_path / "s", "--key-file", key.path)
    assert result.returncode == 0
    assert f"skipped {tree / 'outside'}: symbolic link pointing outside" in err_line(result)
    backup_id = result.stdout.decode().strip()
    dest = tmp_path / "dest"
    _restore(tmp_path / "s", backup_id, key, dest)
    assert not (dest / "outside").exists() and not (dest / "outside").is_symlink()
    assert os.readlink(dest / "link-inside") == "docs/readme.txt"


def test_unsupported_storage_url(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    result = run_bkv("backup", "create", tree, "--to", "ftp://host/x", "--key-file", key.path)
    assert result.returncode == 2
    assert "unsupported storage URL" in err_line(result)


def test_quiet_and_non_tty_print_no_progress(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    result = run_bkv("backup", "create", tree, "--to", tmp_path / "s", "--key-file", key.path)
    assert result.stderr == b""  # stderr is a pipe here: no progress bar
    assert re.fullmatch(rb"\d{8}T\d{6}Z-[0-9a-f]{6}\n", result.stdout)


def test_a_damaged_snapshot_hides_no_other_backup(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    good, bad = _create(tree, store, key), _create(tree, store, key)
    snapshot = store / f"snapshot-{bad}.age"
    data = bytearray(snapshot.read_bytes())
    data[-20] ^= 0x01
    snapshot.write_bytes(bytes(data))
    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path)
    assert listed.returncode == 6
    assert [line.split()[0] for line in listed.stdout.decode().splitlines()[1:]] == [good]
    assert f"bkv: snapshot-{bad}.age in {store} is damaged" in err_line(listed)
    assert err_line(listed).endswith("bkv: 1 damaged backups not listed")
    forgot = run_bkv("backup", "forget", "--to", store, "--key-file", key.path, "--keep-last", "1")
    assert forgot.returncode == 6  # nothing is deleted while a kept backup can't be read
    assert f"snapshot-{bad}.age" in err_line(forgot)
    assert f"snapshot-{good}.age" in listing(store)
    removed = run_bkv("backup", "forget", bad, "--to", store, "--key-file", key.path)
    assert removed.returncode == 0, removed.stderr
    assert _ids_listed(store, key) == [good]


def _ids_listed(store: Path, key: KeyPair) -> list[str]:
    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path, "--json")
    assert listed.returncode == 0, listed.stderr
    return [row["id"] for row in json.loads(listed.stdout)]
