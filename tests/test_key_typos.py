"""Finding the one mistyped digit of a backup key from a backup's public fingerprint."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from client_sdk.key_typos import find_typo, fingerprint, matches, typed_digits
from client_sdk.keys import BackupKey

KEY = BackupKey(bytes.fromhex("7abe" * 16))


def _grouped(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def test_fingerprint_is_public_and_stable() -> None:
    fp = fingerprint(KEY)
    assert fp.startswith("bkvfp1-") and len(fp) == 7 + 16
    assert fp == fingerprint(BackupKey(KEY.raw)) and matches(KEY, fp)
    assert KEY.raw.hex() not in fp
    assert not matches(BackupKey.generate(), fp)


@settings(max_examples=25, deadline=None)
@given(key=hs.binary(min_size=32, max_size=32), where=hs.integers(0, 63),
       kind=hs.sampled_from(["substitution", "transposition", "insertion", "deletion"]),
       digit=hs.sampled_from("0123456789abcdef"))
def test_every_single_edit_is_found(key: bytes, where: int, kind: str, digit: str) -> None:
    right = key.hex()
    if kind == "substitution":
        if right[where] == digit:
            return
        typed = right[:where] + digit + right[where + 1 :]
    elif kind == "transposition":
        where = min(where, 62)
        if right[where] == right[where + 1]:
            return
        typed = right[:where] + right[where + 1] + right[where] + right[where + 2 :]
    elif kind == "insertion":  # the user added a digit
        typed = right[:where] + digit + right[where:]
    else:  # the user left one out
        typed = right[:where] + right[where + 1 :]
    typo = find_typo(_grouped(typed.upper()), fingerprint(BackupKey(key)))
    assert typo is not None and typo.key is not None
    # the same key, or one differing only in bits X25519 clamps away: it opens the backup
    assert fingerprint(typo.key) == fingerprint(BackupKey(key))
    assert right not in typo.message()  # the message never spells out the whole key


def test_message_names_the_position_and_digits() -> None:
    right = KEY.raw.hex()
    typed = right[:18] + ("a" if right[18] != "a" else "b") + right[19:]
    typo = find_typo(typed, fingerprint(KEY))
    assert typo is not None
    assert typo.message() == (f"digit 19 (group 5) looks wrong: with {right[18]!r} instead of "
                              f"{typed[18]!r} this key opens the backup")


def test_two_mistakes_or_another_key_find_nothing() -> None:
    right = KEY.raw.hex()
    two = ("0" if right[0] != "0" else "1") + right[1:10] + ("0" if right[10] != "0" else "1") \
        + right[11:]
    assert find_typo(two, fingerprint(KEY)) is None
    assert find_typo(BackupKey.generate().raw.hex(), fingerprint(KEY)) is None
    assert find_typo("not a key", fingerprint(KEY)) is None
    assert find_typo(right[:60], fingerprint(KEY)) is None
    assert typed_digits("12-ab CD") == "12abcd" and typed_digits("12g") is None


def test_search_is_quick() -> None:
    """About 2,000 X25519 derivations: well under a second (a figure, not a timing gate)."""
    right = KEY.raw.hex()
    start = time.perf_counter()
    assert find_typo(right[:63] + ("0" if right[63] != "0" else "1"), fingerprint(KEY))
    elapsed = time.perf_counter() - start
    print(f"typo search: {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize("typed", ["", "0" * 62, "0" * 66])
def test_lengths_far_off_are_not_searched(typed: str) -> None:
    assert find_typo(typed, fingerprint(KEY)) is None
