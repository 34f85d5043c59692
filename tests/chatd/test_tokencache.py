"""ChatD's cache of verified account tokens: same verdicts as verify_token, expiry kept."""

from __future__ import annotations

import time

import pytest

from bkv_protocol import tokens
from bkv_protocol.errors import ProtocolError
from chatd_proxy.tokencache import VerifiedTokenCache


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_cached_token_still_expires() -> None:
    signing, public = tokens.generate_signing_key()
    clock = Clock()
    cache = VerifiedTokenCache(public, clock=clock)
    token = tokens.mint_token(signing, "alice", ttl_seconds=60, now=clock.now)
    assert cache.verify(token) == "alice"
    assert cache.verify(token) == "alice" and len(cache) == 1
    clock.now += 61
    with pytest.raises(ProtocolError, match="expired"):
        cache.verify(token)
    assert len(cache) == 0


def test_bad_tokens_are_refused_and_not_cached() -> None:
    signing, public = tokens.generate_signing_key()
    other_signing, _ = tokens.generate_signing_key()
    cache = VerifiedTokenCache(public)
    forged = tokens.mint_token(other_signing, "alice")
    for _ in range(2):
        with pytest.raises(ProtocolError, match="signature"):
            cache.verify(forged)
    good = tokens.mint_token(signing, "alice")
    tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    with pytest.raises(ProtocolError):
        cache.verify(tampered)
    assert len(cache) == 0


def test_the_cache_is_bounded() -> None:
    signing, public = tokens.generate_signing_key()
    cache = VerifiedTokenCache(public, max_entries=3)
    minted = [tokens.mint_token(signing, f"user{i}") for i in range(5)]
    assert [cache.verify(t) for t in minted] == [f"user{i}" for i in range(5)]
    assert len(cache) == 3
    assert cache.verify(minted[0]) == "user0"  # evicted, verified again
    assert "user" not in repr(cache)
