"""Per-account token buckets (driven by a fake clock, so the test is exact)."""

from __future__ import annotations

import pytest

from chatd_proxy.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back at 2/s
    assert limiter.allow("a") is True
    assert limiter.allow("a") is False
    clock.now += 100  # refills to the burst, never beyond
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_accounts_are_independent() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.allow("a") is True
    assert limiter.allow("a") is False
    assert limiter.allow("b") is True


def test_table_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_buckets=10)
    for i in range(50):
        limiter.allow(f"user{i}")
        clock.now += 0.01
    assert len(limiter) <= 10


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)
