"""The ChatD transport: status mapping, rotation over dead front ends, account tokens."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import tokens
from bkv_protocol.errors import ProtocolError
from client_sdk.config import ClientConfig
from client_sdk.errors import (
    AccountRejected,
    ConfigError,
    RateLimited,
    VaultError,
    VaultProtocolError,
    VaultUnavailable,
)
from client_sdk.vault_transport import (
    TOKEN_TTL_SECONDS,
    ChatDTransport,
    TokenSource,
    map_status,
    read_signing_key,
)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("code", "error_type", "text"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, AccountRejected, "rejected the account token"),
        (grpc.StatusCode.PERMISSION_DENIED, AccountRejected, "refused the token for this account"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimited, "try again shortly"),
        (grpc.StatusCode.INVALID_ARGUMENT, VaultProtocolError, "check fleet_public_key"),
        (grpc.StatusCode.UNAVAILABLE, VaultUnavailable, "unavailable"),
        (grpc.StatusCode.INTERNAL, VaultError, "failed with INTERNAL"),
    ],
)
def test_status_mapping(code: grpc.StatusCode, error_type: type, text: str) -> None:
    err = map_status(code, "details\nfrom chatd")
    assert type(err) is error_type
    assert text in str(err)
    assert "details from chatd" in str(err) and "\n" not in str(err)


def test_unreachable_front_ends_give_vault_unavailable_within_the_deadline() -> None:
    addresses = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    transport = ChatDTransport(addresses, deadline_seconds=2.0)
    request = pb.SealedRequest(account="alice", shard=0, type=pb.LOGIN_START, sealed=b"x")
    started = time.monotonic()
    try:
        with pytest.raises(VaultUnavailable) as info:
            transport.forward(request, "token")
    finally:
        transport.close()
    assert time.monotonic() - started < 10  # deadline 2 s plus generous scheduling slack
    assert str(info.value).startswith(f"vault unreachable via {addresses[0]}, {addresses[1]} (")


def config(tmp_path: Path, **extra: object) -> ClientConfig:
    return ClientConfig(
        fleet_public_key=b"\x01" * 32,
        shard_count=1,
        chatd=["127.0.0.1:1"],
        deadline_seconds=5.0,
        **extra,  # type: ignore[arg-type]
    )


def test_token_source_needs_a_token_or_a_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither token_signing_key_file nor token"):
        TokenSource(config(tmp_path))


def test_static_token_is_used_as_configured(tmp_path: Path) -> None:
    source = TokenSource(config(tmp_path, token="tok-123"))
    assert source.token_for("alice") == "tok-123"
    assert "tok-123" not in repr(source)


@pytest.mark.parametrize("encoding", ["raw", "hex", "hex-newline"])
def test_signing_key_file_formats(tmp_path: Path, encoding: str) -> None:
    seed = bytes(range(32))
    path = tmp_path / "token-signing.key"
    data = {"raw": seed, "hex": seed.hex().encode(), "hex-newline": seed.hex().encode() + b"\n"}
    path.write_bytes(data[encoding])
    assert read_signing_key(path) == seed


@pytest.mark.parametrize("content", [b"", b"short", b"zz" * 32, b"ab" * 33])
def test_bad_signing_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token-signing.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="expected 32 raw bytes or 64 hex digits"):
        read_signing_key(path)
    with pytest.raises(ConfigError, match="can't read it"):
        read_signing_key(tmp_path / "absent.key")


def test_minted_tokens_are_short_lived_and_per_account(tmp_path: Path) -> None:
    signing_key, public_key = tokens.generate_signing_key()
    key_file = tmp_path / "token-signing.key"
    key_file.write_bytes(signing_key.hex().encode())
    source = TokenSource(config(tmp_path, token_signing_key_file=key_file, token="ignored"))
    token = source.token_for("alice")
    assert tokens.verify_token(public_key, token) == "alice"
    assert tokens.verify_token(public_key, source.token_for("bob")) == "bob"
    with pytest.raises(ProtocolError, match="expired"):
        tokens.verify_token(public_key, token, now=time.time() + TOKEN_TTL_SECONDS + 1)
    assert "ignored" not in repr(source)
