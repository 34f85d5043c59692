"""Backup keys: generation, the 64-digit codec, age identity/recipient, key files."""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_sdk import age
from client_sdk.keys import BackupKey, KeyFormatError, read_key_file, write_key_file

# The testkit's X25519 identity and the recipient `age-keygen -y` prints for it.
KIT_IDENTITY = "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
KIT_RECIPIENT = "age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef"


def test_generate_is_random_and_32_bytes() -> None:
    keys = {BackupKey.generate().raw for _ in range(16)}
    assert len(keys) == 16
    assert all(len(k) == 32 for k in keys)


def test_digits_format() -> None:
    key = BackupKey(bytes(range(32)))
    text = key.digits()
    assert re.fullmatch(r"[0-9a-f]{4}( [0-9a-f]{4}){15}", text)
    assert text.startswith("0001 0203 ")
    assert text.replace(" ", "") == bytes(range(32)).hex()


@pytest.mark.parametrize(
    "transform",
    [
        lambda t: t,
        lambda t: t.upper(),
        lambda t: t.replace(" ", ""),
        lambda t: t.replace(" ", "-"),
        lambda t: f"  {t}\n",
        lambda t: t.replace(" ", " - "),
    ],
)
def test_parse_accepts_case_spaces_dashes(transform: Callable[[str], str]) -> None:
    key = BackupKey.generate()
    assert BackupKey.parse(transform(key.digits())) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0123 4567 89ab cdeg", "unexpected character 'g' at position 19"),
        ("  x", "unexpected character 'x' at position 3"),
        ("0123\t4567", "unexpected character '\\t' at position 5"),
        ("ab" * 31, "key has 62 hex digits, expected 64"),
        ("ab" * 33, "key has 66 hex digits, expected 64"),
        ("", "key has 0 hex digits, expected 64"),
    ],
)
def test_parse_errors_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        BackupKey.parse(text)
    assert str(info.value) == message


def test_key_is_the_age_identity_scalar() -> None:
    key = BackupKey.from_identity(KIT_IDENTITY)
    assert key.identity() == KIT_IDENTITY
    assert key.recipient() == KIT_RECIPIENT
    assert BackupKey.parse(key.digits()).identity() == KIT_IDENTITY
    # A backup made to the recipient opens with the key's identity.
    sealed = io.BytesIO()
    age.encrypt(io.BytesIO(b"chat history"), sealed, [key.recipient()])
    out = io.BytesIO()
    age.decrypt(io.BytesIO(sealed.getvalue()), out, [key.identity()])
    assert out.getvalue() == b"chat history"


def test_from_identity_rejects_other_strings() -> None:
    with pytest.raises(KeyFormatError):
        BackupKey.from_identity(BackupKey.generate().recipient())


def test_repr_and_str_hide_the_secret() -> None:
    key = BackupKey.generate()
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert key.raw.hex() not in text
        assert key.digits() not in text
        assert key.identity() not in text
        assert key.identity().lower() not in text.lower()


def test_not_picklable() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(BackupKey.generate())


def test_equality() -> None:
    key = BackupKey.generate()
    assert key == BackupKey(key.raw)
    assert key != BackupKey.generate()


def test_key_file_round_trip_mode_and_no_temp(tmp_path: Path) -> None:
    key = BackupKey.generate()
    path = tmp_path / "backup.key"
    write_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.digits() + "\n"
    assert read_key_file(path) == key
    assert os.listdir(tmp_path) == ["backup.key"]


def test_key_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    first, second = BackupKey.generate(), BackupKey.generate()
    write_key_file(path, first)
    with pytest.raises(FileExistsError):
        write_key_file(path, second)
    assert read_key_file(path) == first
    write_key_file(path, second, overwrite=True)
    assert read_key_file(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["backup.key"]


def test_bad_key_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.key"
    path.write_text("0123 zzzz\n")
    with pytest.raises(KeyFormatError, match=r"typo\.key: unexpected character 'z' at position 6"):
        read_key_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFormatError, match="not a text key file"):
        read_key_file(path)
    path.write_text("0" * 10_000)
    with pytest.raises(KeyFormatError, match="too large"):
        read_key_file(path)


SEPARATORS = st.lists(st.sampled_from(["", " ", "-"]), min_size=64, max_size=64)


@given(st.binary(min_size=32, max_size=32), SEPARATORS)
def test_parse_round_trips_any_separators(raw: bytes, separators: list[str]) -> None:
    text = "".join(sep + digit for sep, digit in zip(separators, raw.hex(), strict=True))
    assert BackupKey.parse(text).raw == raw
    assert BackupKey.parse(BackupKey(raw).digits()).raw == raw


@given(st.text(max_size=100))
def test_parse_only_ever_raises_key_format_error(text: str) -> None:
    try:
        key = BackupKey.parse(text)
    except KeyFormatError as err:
        assert "\n" not in str(err)
    else:
        assert len(key.raw) == 32
