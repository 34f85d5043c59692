"""`bkv key ...`, `bkv file ...` and `--help` through the real console script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from client_sdk import age
from client_sdk.keys import BackupKey, read_key_file

from .conftest import KeyPair, err_line, listing, run_bkv

HELP_COMMANDS = [
    (),
    ("key",),
    ("key", "new"),
    ("key", "public"),
    ("key", "export-age"),
    ("file",),
    ("file", "encrypt"),
    ("file", "decrypt"),
    ("backup",),
    ("backup", "create"),
    ("backup", "list"),
    ("backup", "restore"),
    ("backup", "forget"),
    ("backup", "check"),
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "bkv")
def test_help_exits_zero(command: tuple[str, ...]) -> None:
    result = run_bkv(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert b"usage: bkv" in result.stdout


def test_key_new_prints_16_groups_of_4_lowercase_hex() -> None:
    first, second = run_bkv("key", "new"), run_bkv("key", "new")
    for result in (first, second):
        assert result.returncode == 0
        assert re.fullmatch(rb"[0-9a-f]{4}( [0-9a-f]{4}){15}\n", result.stdout), result.stdout
    assert first.stdout != second.stdout
    BackupKey.parse(first.stdout.decode())


def test_key_new_out_writes_private_file_and_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "new.key"
    result = run_bkv("key", "new", "--out", out)
    assert result.returncode == 0 and result.stdout == b""
    assert out.stat().st_mode & 0o777 == 0o600
    key = read_key_file(out)
    again = run_bkv("key", "new", "--out", out)
    assert again.returncode == 1
    assert "already exists" in err_line(again)
    assert read_key_file(out) == key
    assert listing(tmp_path) == ["new.key"]


def test_key_public_and_export_from_file_and_stdin(key: KeyPair) -> None:
    from_file = run_bkv("key", "public", "--key-file", key.path)
    typed = key.key.digits().upper().replace(" ", "-")  # any case, dashes accepted
    from_stdin = run_bkv("key", "public", stdin=typed.encode() + b"\n")
    assert from_file.stdout.decode().strip() == key.key.recipient()
    assert from_stdin.stdout == from_file.stdout
    exported = run_bkv("key", "export-age", stdin=key.key.digits().encode())
    identity = exported.stdout.decode().strip()
    assert identity.startswith("AGE-SECRET-KEY-1")
    assert BackupKey.from_identity(identity) == key.key


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"0123 4567 zz\n", "unexpected character 'z' at position 11"),
        (b"abcd" * 15 + b"\n", "key has 60 hex digits, expected 64"),
        (b"", "no key given"),
    ],
)
def test_malformed_key_on_stdin(stdin: bytes, message: str) -> None:
    result = run_bkv("key", "public", stdin=stdin)
    assert result.returncode == 2
    assert message in err_line(result)
    assert result.stdout == b""


def test_malformed_key_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    result = run_bkv("key", "export-age", "--key-file", bad)
    assert result.returncode == 2
    assert err_line(result).startswith(f"bkv: {bad}: unexpected character")
    assert result.stdout == b""


def test_key_is_never_accepted_on_argv(key: KeyPair) -> None:
    result = run_bkv("key", "public", key.key.digits().replace(" ", ""))
    assert result.returncode == 2
    assert b"unrecognized arguments" in result.stderr


def test_file_round_trip_with_recipient_and_key_file(tmp_path: Path, key: KeyPair) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x00secret\xff" * 50_000)
    enc, dec = tmp_path / "plain.age", tmp_path / "plain.out"
    result = run_bkv("file", "encrypt", "-r", key.key.recipient(), plain, enc)
    assert result.returncode == 0, result.stderr
    result = run_bkv("file", "decrypt", "--key-file", key.path, enc, dec)
    assert result.returncode == 0, result.stderr
    assert dec.read_bytes() == plain.read_bytes()
    enc2 = tmp_path / "second.age"
    assert run_bkv("file", "encrypt", "--key-file", key.path, "-o", enc2, plain).returncode == 0
    assert (
        run_bkv("file", "decrypt", "--key-file", key.path, enc2, "-").stdout == plain.read_bytes()
    )
    assert listing(tmp_path) == sorted(
        ["backup.key", "plain.bin", "plain.age", "plain.out", "second.age"]
    )


def test_file_stdin_to_stdout(key: KeyPair) -> None:
    enc = run_bkv("file", "encrypt", "-r", key.key.recipient(), "-", "-", stdin=b"streamed")
    assert enc.returncode == 0 and enc.stdout.startswith(b"age-encryption.org/v1\n")
    dec = run_bkv("file", "decrypt", "--key-file", key.path, "-", "-", stdin=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == b"streamed"


def _encrypted(tmp_path: Path, key: KeyPair, size: int = 200_000) -> Path:
    enc = tmp_path / "data.age"
    with (tmp_path / "data.age").open("wb") as dst:
        age.encrypt(_Source(size), dst, [key.key.recipient()])  # type: ignore[arg-type]
    return enc


class _Source:
    """Deterministic plaintext without holding a file on disk."""

    def __init__(self, size: int) -> None:
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return b"p" * n


def test_file_decrypt_wrong_key_leaves_nothing(
    tmp_path: Path, key: KeyPair, other_key: KeyPair
) -> None:
    enc = _encrypted(tmp_path, key)
    before = listing(tmp_path)
    result = run_bkv("file", "decrypt", "--key-file", other_key.path, enc, tmp_path / "out")
    assert result.returncode == 3  # wrong key
    assert err_line(result) == "bkv: this key does not open this file"
    assert listing(tmp_path) == before


def test_file_decrypt_damaged_keeps_existing_output(tmp_path: Path, key: KeyPair) -> None:
    enc = _encrypted(tmp_path, key)
    data = bytearray(enc.read_bytes())
    data[150_000] ^= 1
    enc.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.write_bytes(b"previous content")
    before = listing(tmp_path)
    result = run_bkv("file", "decrypt", "--key-file", key.path, enc, out)
    assert result.returncode == 6  # damaged
    assert re.fullmatch(r"bkv: the file is damaged \(at byte \d+\)", err_line(result))
    assert out.read_bytes() == b"previous content"
    assert listing(tmp_path) == before


def test_file_decrypt_truncated(tmp_path: Path, key: KeyPair) -> None:
    enc = _encrypted(tmp_path, key)
    enc.write_bytes(enc.read_bytes()[:100_000])
    before = listing(tmp_path)
    result = run_bkv("file", "decrypt", "--key-file", key.path, enc, tmp_path / "out")
    assert result.returncode == 6  # damaged
    assert "the file is damaged (at byte" in err_line(result)
    assert listing(tmp_path) == before


def test_file_missing_input(tmp_path: Path, key: KeyPair) -> None:
    result = run_bkv("file", "decrypt", "--key-file", key.path, tmp_path / "nope", tmp_path / "o")
    assert result.returncode == 1
    assert "No such file or directory" in err_line(result)
    assert not (tmp_path / "o").exists()


def test_file_encrypt_bad_recipient(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"x")
    result = run_bkv("file", "encrypt", "-r", "age1nope", tmp_path / "in", tmp_path / "out")
    assert result.returncode == 2
    assert "recipient" in err_line(result)
    assert listing(tmp_path) == ["in"]


@pytest.mark.interop
def test_file_interop_with_age_binary(tmp_path: Path, key: KeyPair) -> None:
    identity = tmp_path / "identity.txt"
    identity.write_text(key.key.identity() + "\n")
    plain = tmp_path / "plain"
    plain.write_bytes(b"interop " * 20_000)
    by_age = tmp_path / "by-age.age"
    subprocess.run(["age", "-r", key.key.recipient(), "-o", by_age, plain], check=True, timeout=60)
    out = tmp_path / "out"
    assert run_bkv("file", "decrypt", "--key-file", key.path, by_age, out).returncode == 0
    assert out.read_bytes() == plain.read_bytes()
    by_bkv = tmp_path / "by-bkv.age"
    assert run_bkv("file", "encrypt", "--key-file", key.path, plain, by_bkv).returncode == 0
    opened = subprocess.run(
        ["age", "-d", "-i", identity, by_bkv], capture_output=True, check=True, timeout=60
    )
    assert opened.stdout == plain.read_bytes()
