"""Backups in S3, against a moto server on a free loopback port (never a public endpoint)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from client_sdk.backup import create_backup, list_backups, restore_backup
from client_sdk.storage import StorageNotFound, open_storage
from client_sdk.storage.s3 import PART_SIZE, S3Storage

from .conftest import S3_BUCKET, KeyPair, S3Server, err_line, listing, run_bkv, tree_snapshot

MULTIPART_BYTES = 20 * 1024 * 1024


def test_cli_round_trip_with_parallel_pack_uploads(
    tmp_path: Path, key: KeyPair, s3_server: S3Server
) -> None:
    src = tmp_path / "big"
    (src / "media").mkdir(parents=True)
    (src / "media" / "video.bin").write_bytes(os.urandom(MULTIPART_BYTES))
    (src / "notes.txt").write_text("small file next to a big one\n")
    url = f"s3://{S3_BUCKET}/phone/backups"
    created = run_bkv(
        "backup", "create", src, "--to", url, "--key-file", key.path, env=s3_server.env
    )
    assert created.returncode == 0, created.stderr
    backup_id = created.stdout.decode().strip()

    s3: Any = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="phone/backups/")
            ["Contents"]]  # fmt: skip
    packs = [k for k in keys if k.startswith("phone/backups/pack-")]
    assert len(packs) >= 2  # 20 MB in packs of about 8 MiB
    assert f"phone/backups/snapshot-{backup_id}.age" in keys
    assert s3.list_multipart_uploads(Bucket=S3_BUCKET).get("Uploads") is None

    again = run_bkv("backup", "create", src, "--to", url, "--key-file", key.path, "--json",
                    env=s3_server.env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert '"new_bytes": 0' in again.stdout.decode()

    listed = run_bkv("backup", "list", "--to", url, "--key-file", key.path, env=s3_server.env)
    assert listed.returncode == 0 and backup_id in listed.stdout.decode()
    checked = run_bkv("backup", "check", "--to", url, "--key-file", key.path, "--read-data",
                      env=s3_server.env)  # fmt: skip
    assert checked.returncode == 0, checked.stderr

    dest = tmp_path / "restored"
    restored = run_bkv(
        "backup", "restore", backup_id, "--from", url, "--key-file", key.path, dest,
        env=s3_server.env,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert tree_snapshot(dest) == tree_snapshot(src)


def test_library_round_trip_with_explicit_endpoint(
    tmp_path: Path, tree: Path, key: KeyPair, s3_server: S3Server
) -> None:
    url = f"s3://{S3_BUCKET}/lib"
    backup_id = create_backup(tree, url, key.key.recipient(), s3_endpoint=s3_server.endpoint)
    infos = list_backups(url, s3_endpoint=s3_server.endpoint)
    assert backup_id in [info.backup_id for info in infos]
    dest = tmp_path / "dest"
    restore_backup(backup_id, key.key, dest, storage_url=url, s3_endpoint=s3_server.endpoint)
    assert tree_snapshot(dest) == tree_snapshot(tree)


def test_aborted_multipart_upload_leaves_nothing(s3_server: S3Server) -> None:
    storage = open_storage(f"s3://{S3_BUCKET}/aborted", s3_endpoint=s3_server.endpoint)
    assert isinstance(storage, S3Storage)
    chunk = b"\x01" * (1024 * 1024)
    with storage.open_writer("never.age") as writer:
        for _ in range(PART_SIZE // len(chunk) + 1):
            writer.write(chunk)
        assert writer.parts_uploaded == 1  # type: ignore[attr-defined]
    s3: Any = s3_server.client()
    assert s3.list_multipart_uploads(Bucket=S3_BUCKET).get("Uploads") is None
    assert storage.names() == []


def test_missing_bucket_and_backup(tmp_path: Path, key: KeyPair, s3_server: S3Server) -> None:
    result = run_bkv("backup", "list", "--to", "s3://no-such-bucket-bkv/x",
                     "--key-file", key.path, env=s3_server.env)  # fmt: skip
    assert result.returncode == 7
    assert err_line(result) == "bkv: storage not found: s3://no-such-bucket-bkv"
    result = run_bkv(
        "backup", "restore", "20260101T000000Z-abcdef", "--from", f"s3://{S3_BUCKET}/none",
        "--key-file", key.path, tmp_path / "dest", env=s3_server.env,
    )  # fmt: skip
    assert result.returncode == 7
    assert err_line(result) == (
        f"bkv: backup not found: 20260101T000000Z-abcdef in s3://{S3_BUCKET}/none"
    )
    assert listing(tmp_path) == ["backup.key"]
    with pytest.raises(StorageNotFound):
        list_backups("s3://no-such-bucket-bkv", s3_endpoint=s3_server.endpoint)


def test_unreachable_endpoint(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    result = run_bkv(
        "backup", "create", tree, "--to", f"s3://{S3_BUCKET}/x", "--key-file", key.path,
        "--s3-endpoint", f"http://127.0.0.1:{port}", env=env,
    )  # fmt: skip
    assert result.returncode == 8
    assert "unreachable" in err_line(result)
    assert result.stdout == b""


def test_packs_upload_in_parallel_with_a_bound(
    tmp_path: Path, key: KeyPair, s3_server: S3Server
) -> None:
    import threading
    import time

    from client_sdk.repository import Repository, archiver

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"video-{i}.mp4").write_bytes(os.urandom(5_000_000))
    repo = Repository.open(f"s3://{S3_BUCKET}/parallel", key.key, s3_endpoint=s3_server.endpoint)
    lock = threading.Lock()
    state = {"now": 0, "most": 0, "puts": 0}

    def before(**_kwargs: object) -> None:
        with lock:
            state["now"] += 1
            state["puts"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)  # a slow network: uploads overlap if they can

    def after(**_kwargs: object) -> None:
        with lock:
            state["now"] -= 1

    events = repo.storage._client.meta.events  # type: ignore[attr-defined]
    events.register("before-call.s3.PutObject", before)
    events.register("after-call.s3.PutObject", after)
    result = archiver.create(src, repo, workers=3)
    assert result.new_bytes == 20_000_000
    assert state["puts"] >= 6  # 3 packs of about 8 MiB, lock, index, config, snapshot
    assert 2 <= state["most"] <= 3
    dest = tmp_path / "dest"
    from client_sdk.repository import restorer

    restorer.restore(repo, result.snapshot_id, dest)
    assert tree_snapshot(dest) == tree_snapshot(src)
