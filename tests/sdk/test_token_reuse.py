"""A client reuses an account's minted token (for half its lifetime) instead of signing anew."""

from __future__ import annotations

from pathlib import Path

from bkv_protocol import tokens
from client_sdk.config import ClientConfig
from client_sdk.vault_transport import TokenSource


def test_minted_tokens_are_reused_per_account(tmp_path: Path) -> None:
    signing, public = tokens.generate_signing_key()
    key_file = tmp_path / "token-signing.key"
    key_file.write_bytes(signing)
    config = ClientConfig(fleet_public_key=bytes(32), shard_count=1, chatd=["127.0.0.1:1"],
                          deadline_seconds=5.0, token_signing_key_file=key_file)
    source = TokenSource(config, ttl_seconds=300)
    alice = source.token_for("alice")
    assert source.token_for("alice") is alice
    bob = source.token_for("bob")
    assert bob != alice
    assert tokens.verify_token(public, alice) == "alice"
    assert tokens.verify_token(public, bob) == "bob"
    assert "alice" not in repr(source)
