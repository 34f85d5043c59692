"""OPRF (RFC 9497) ristretto255-SHA512 mode 0: published vectors and input validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bkv_protocol import group, oprf
from bkv_protocol.errors import ProtocolError

VECTORS = Path(__file__).parent.parent / "data" / "oprf_vectors.json"


def _mode0_suite() -> dict[str, Any]:
    suites = [
        s
        for s in json.loads(VECTORS.read_text())
        if s["identifier"] == "ristretto255-SHA512" and s["mode"] == 0
    ]
    assert len(suites) == 1
    suite: dict[str, Any] = suites[0]
    return suite


SUITE = _mode0_suite()
CASES = SUITE["vectors"]


def test_vector_count() -> None:
    # Two single-element (Batch=1) mode-0 vectors are published for this suite.
    assert len(CASES) == 2
    assert all(case["Batch"] == 1 for case in CASES)


def test_context_string_matches_vectors() -> None:
    assert bytes.fromhex(SUITE["groupDST"]) == oprf.HASH_TO_GROUP_DST


def test_derive_key_pair_vector() -> None:
    sk, pk = oprf.derive_key_pair(bytes.fromhex(SUITE["seed"]), bytes.fromhex(SUITE["keyInfo"]))
    assert sk.hex() == SUITE["skSm"]
    assert pk == group.scalar_mult_base(sk)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"input={c['Input'][:8]}")
def test_mode0_vector(case: dict[str, str]) -> None:
    sk = bytes.fromhex(SUITE["skSm"])
    oprf_input = bytes.fromhex(case["Input"])
    blind, blinded = oprf.blind(oprf_input, blind_scalar=bytes.fromhex(case["Blind"]))
    assert blinded.hex() == case["BlindedElement"]
    evaluated = oprf.blind_evaluate(sk, blinded)
    assert evaluated.hex() == case["EvaluationElement"]
    assert oprf.finalize(oprf_input, blind, evaluated).hex() == case["Output"]
    assert oprf.evaluate(sk, oprf_input).hex() == case["Output"]


def test_random_blind_gives_same_output() -> None:
    sk, _ = oprf.derive_key_pair(bytes(32), b"k")
    blind, blinded = oprf.blind(b"password")
    assert oprf.finalize(b"password", blind, oprf.blind_evaluate(sk, blinded)) == oprf.evaluate(
        sk, b"password"
    )
    assert oprf.evaluate(sk, b"password") != oprf.evaluate(sk, b"passwore")


def test_expand_message_xmd_sha512_rfc9380_vector() -> None:
    # RFC 9380 appendix K.3 (expand_message_xmd, SHA-512), msg="", len_in_bytes=0x20.
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    expected = "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    assert group.expand_message_xmd(b"", dst, 0x20).hex() == expected


def test_blind_evaluate_rejects_identity() -> None:
    with pytest.raises(ProtocolError, match="identity"):
        oprf.blind_evaluate(oprf.derive_key_pair(bytes(32), b"")[0], bytes(32))


def test_blind_evaluate_rejects_non_canonical() -> None:
    with pytest.raises(ProtocolError, match="canonical"):
        oprf.blind_evaluate(oprf.derive_key_pair(bytes(32), b"")[0], b"\xff" * 32)


def test_finalize_rejects_bad_evaluated_element() -> None:
    blind, _ = oprf.blind(b"x")
    with pytest.raises(ProtocolError, match="evaluated element"):
        oprf.finalize(b"x", blind, b"\x01" * 31)


@pytest.mark.parametrize(
    ("blind", "message"),
    [(bytes(32), "zero"), (b"\xff" * 32, "reduced"), (b"\x01" * 31, "32 bytes")],
)
def test_blind_rejects_bad_scalars(blind: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        oprf.blind(b"x", blind_scalar=blind)


def test_derive_key_pair_rejects_bad_seed() -> None:
    with pytest.raises(ProtocolError, match="seed"):
        oprf.derive_key_pair(bytes(31), b"")
