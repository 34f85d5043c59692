"""Interoperability with the stock `age` tool, both directions, using a backup key's identity."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from client_sdk import age
from client_sdk.keys import BackupKey

pytestmark = pytest.mark.interop

AGE = shutil.which("age") or "/usr/bin/age"
AGE_KEYGEN = shutil.which("age-keygen") or "/usr/bin/age-keygen"
SIZES = [0, 1, 200 * 1024 + 1]


@pytest.fixture(scope="module", autouse=True)
def _require_age() -> None:
    if not os.access(AGE, os.X_OK):
        pytest.skip("the age tool is not installed")


@pytest.fixture
def key() -> BackupKey:
    return BackupKey.generate()


def identity_file(tmp_path: Path, key: BackupKey) -> Path:
    path = tmp_path / "identity.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# backup key identity\n{key.identity()}\n")
    return path


def run_age(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [AGE, *map(str, args)], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("size", SIZES)
def test_age_decrypts_our_files(tmp_path: Path, key: BackupKey, size: int) -> None:
    data = os.urandom(size)
    sealed = tmp_path / "backup.age"
    with sealed.open("wb") as dst:
        age.encrypt(io.BytesIO(data), dst, [key.recipient()])
    # Plaintext on stdout: age creates an -o file lazily, so not at all for empty output.
    result = run_age("-d", "-i", identity_file(tmp_path, key), sealed)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_age_files(tmp_path: Path, key: BackupKey, size: int) -> None:
    data = os.urandom(size)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(data)
    sealed = tmp_path / "backup.age"
    other = BackupKey.generate()
    result = run_age("-r", other.recipient(), "-r", key.recipient(), "-o", sealed, plain)
    assert result.returncode == 0, result.stderr.decode()
    out = io.BytesIO()
    with sealed.open("rb") as src:
        age.decrypt(src, out, [key.identity()])
    assert out.getvalue() == data


def test_age_rejects_our_tampered_file(tmp_path: Path, key: BackupKey) -> None:
    """The negative control: the interop check above would catch a broken file."""
    sealed = io.BytesIO()
    age.encrypt(io.BytesIO(b"x" * 1000), sealed, [key.recipient()])
    damaged = bytearray(sealed.getvalue())
    damaged[-20] ^= 1
    path = tmp_path / "damaged.age"
    path.write_bytes(bytes(damaged))
    result = run_age("-d", "-i", identity_file(tmp_path, key), path)
    assert result.returncode != 0


def test_age_keygen_derives_the_same_recipient(tmp_path: Path, key: BackupKey) -> None:
    if not os.access(AGE_KEYGEN, os.X_OK):
        pytest.skip("age-keygen is not installed")
    result = subprocess.run(
        [AGE_KEYGEN, "-y", str(identity_file(tmp_path, key))], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == key.recipient()
