"""The account -> shard map is stable, in range, and spreads accounts."""

from __future__ import annotations

import pytest

from bkv_protocol.errors import ProtocolError
from bkv_protocol.sharding import shard_for


def test_stable_known_values() -> None:
    # Pinned values: changing the hash would move every account to another shard.
    assert [shard_for(f"user{i}", 4) for i in range(8)] == [1, 2, 1, 0, 2, 2, 2, 0]
    assert [shard_for(f"user{i}", 2) for i in range(8)] == [1, 0, 1, 0, 0, 0, 0, 0]
    assert shard_for("alice", 1) == 0


def test_spread_over_shards() -> None:
    counts = [0, 0]
    for i in range(1000):
        counts[shard_for(f"account-{i}", 2)] += 1
    assert min(counts) > 400


def test_rejects_zero_shards() -> None:
    with pytest.raises(ProtocolError):
        shard_for("alice", 0)
