"""Fixtures for backup, storage and `bkv key|file|backup` tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from client_sdk.keys import BackupKey, write_key_file

BKV = str(Path(sys.executable).with_name("bkv"))
CLI_TIMEOUT = 60
S3_BUCKET = "bkv-test-backups"


def run_bkv(
    *args: str | os.PathLike[str],
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `bkv` console script (never a shell), bounded in time."""
    return subprocess.run(
        [BKV, *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def err_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one-line error; fails if stderr looks like a traceback."""
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    return text.strip()


def make_tree(root: Path) -> Path:
    """A small folder with nested dirs, empty files, binary data and unicode names."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "readme.txt").write_text("hello backup\n")
    (root / "docs" / "deep" / "deeper" / "leaf.bin").write_bytes(bytes(range(256)) * 300)
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.dat").write_bytes(os.urandom(200_000))
    (root / "фото-😀.jpg").write_bytes(os.urandom(1234))
    (root / "naïve café.txt").write_text("ünïcödé\n", encoding="utf-8")
    os.symlink("docs/readme.txt", root / "link-inside")
    return root


def tree_snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Relative path -> content (files), link target (links) or None (dirs)."""
    snap: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            snap[rel] = "->" + os.readlink(path)
        elif path.is_dir():
            snap[rel] = None
        else:
            snap[rel] = path.read_bytes()
    return snap


def listing(folder: Path) -> list[str]:
    """Every entry (hidden ones included) of a folder, sorted."""
    return sorted(os.listdir(folder))


@dataclass
class KeyPair:
    key: BackupKey
    path: Path


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    backup_key = BackupKey.generate()
    path = tmp_path / "backup.key"
    write_key_file(path, backup_key)
    return KeyPair(backup_key, path)


@pytest.fixture
def other_key(tmp_path: Path) -> KeyPair:
    backup_key = BackupKey.generate()
    path = tmp_path / "other.key"
    write_key_file(path, backup_key)
    return KeyPair(backup_key, path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on a free loopback port, with one empty bucket."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in (*_S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(_S3_ENV)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**os.environ, **_S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    s3 = S3Server(endpoint, env)
    s3.client().create_bucket(Bucket=S3_BUCKET)  # type: ignore[attr-defined]
    try:
        yield s3
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def argv(*parts: str | os.PathLike[str]) -> Sequence[str]:
    return [str(p) for p in parts]
