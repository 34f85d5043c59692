"""A key typed with one wrong, missing, extra or swapped digit: the CLI names the position.

Real `bkv` processes against a real folder repository. The repository records
its key's public fingerprint in an object name; a key that does not open it is
compared, edit by edit, against that fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client_sdk.key_typos import fingerprint, fingerprints_in
from client_sdk.keys import BackupKey

from .conftest import KeyPair, err_line, listing, run_bkv


def _backup(tree: Path, store: Path, key: KeyPair) -> str:
    made = run_bkv("backup", "create", tree, "--to", store, "--key-file", key.path)
    assert made.returncode == 0, made.stderr
    return made.stdout.decode().strip()


def _typed(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "typed.key"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _groups(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def test_the_repository_names_its_key_fingerprint(tmp_path: Path, tree: Path,
                                                  key: KeyPair) -> None:
    store = tmp_path / "store"
    _backup(tree, store, key)
    names = sorted(p.name for p in store.iterdir())
    assert fingerprints_in(names) == [fingerprint(key.key)]


@pytest.mark.parametrize("kind", ["substitution", "transposition", "missing", "extra"])
def test_one_mistyped_digit_is_named(tmp_path: Path, tree: Path, key: KeyPair,
                                     kind: str) -> None:
    store = tmp_path / "store"
    backup_id = _backup(tree, store, key)
    right = key.key.raw.hex()
    at = 18  # digit 19
    if kind == "substitution":
        wrong = "0" if right[at] != "0" else "1"
        typed = right[:at] + wrong + right[at + 1 :]
        expected = f"digit 19 (group 5) looks wrong: with {right[at]!r} instead of {wrong!r}"
    elif kind == "transposition":
        at = next(i for i in range(18, 63) if right[i] != right[i + 1])
        typed = right[:at] + right[at + 1] + right[at] + right[at + 2 :]
        expected = f"digits {at + 1} and {at + 2} look swapped"
    elif kind == "missing":
        typed = right[:at] + right[at + 1 :]
        expected = "a digit seems to be missing before digit"
    else:
        typed = right[:at] + "7" + right[at:]
        expected = "seems to be extra: without it this key opens the backup"
    dest = tmp_path / "dest"
    before = listing(tmp_path)
    result = run_bkv("backup", "restore", backup_id, "--from", store,
                     "--key-file", _typed(tmp_path, _groups(typed)), dest)
    assert result.returncode == 3, result.stderr
    message = err_line(result)
    assert expected in message, message
    assert right not in message and _groups(right) not in message
    assert sorted(listing(tmp_path)) == sorted([*before, "typed.key"])  # no dest left behind
    listed = run_bkv("backup", "list", "--to", store, "--key-file", tmp_path / "typed.key")
    assert listed.returncode == 3 and expected in err_line(listed)


def test_another_key_altogether_gets_no_hint(tmp_path: Path, tree: Path, key: KeyPair) -> None:
    store = tmp_path / "store"
    backup_id = _backup(tree, store, key)
    other = BackupKey.generate().raw.hex()
    result = run_bkv("backup", "restore", backup_id, "--from", store,
                     "--key-file", _typed(tmp_path, other), tmp_path / "dest")
    assert result.returncode == 3
    assert err_line(result) == "bkv: this key does not open this backup"
