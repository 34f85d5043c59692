"""ChatD refuses what it must before anything reaches a vault node.

ChatD runs for real (in process, or as the `bkv-chatd` process); its shard map
points at loopback ports where nothing listens, so every request that passes
its checks ends in UNAVAILABLE "no vault leader reachable".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import envelope_pb2, services_pb2, services_pb2_grpc
from bkv_protocol import tokens
from bkv_protocol.sharding import shard_for
from chatd_proxy.config import ChatDConfig, ConfigError
from chatd_proxy.server import ChatDServer
from tests.cluster.conftest import wait_until

SHARDS = 3


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _config_dict(public_key: bytes, *, burst: int = 5) -> dict[str, object]:
    return {
        "listen": "127.0.0.1:0",
        "datacenter": "dc1",
        "token_public_key": public_key.hex(),
        "deadline_seconds": 0.3,
        "rate_limit": {"per_account_per_second": 0.01, "burst": burst},
        "shards": [{"id": i, "nodes": [_dead_address()]} for i in range(SHARDS)],
    }


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return tokens.generate_signing_key()


@pytest.fixture(scope="module")
def chatd(keys: tuple[bytes, bytes]) -> Iterator[services_pb2_grpc.ChatDStub]:
    server = ChatDServer(ChatDConfig.from_mapping(_config_dict(keys[1])))
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield services_pb2_grpc.ChatDStub(channel)
    finally:
        channel.close()
        server.stop(0)


def _request(account: str, shard: int | None = None) -> envelope_pb2.SealedRequest:
    return envelope_pb2.SealedRequest(
        account=account,
        shard=shard_for(account, SHARDS) if shard is None else shard,
        type=envelope_pb2.LOGIN_START,
        sealed=b"\x00" * 64,
    )


def _call(stub: services_pb2_grpc.ChatDStub, req: envelope_pb2.SealedRequest,
          token: str | None) -> grpc.RpcError:
    metadata = [] if token is None else [("bkv-account-token", token)]
    with pytest.raises(grpc.RpcError) as info:
        stub.Forward(req, metadata=metadata, timeout=5)
    return info.value


def test_missing_token(chatd: services_pb2_grpc.ChatDStub) -> None:
    err = _call(chatd, _request("alice"), None)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_forged_and_expired_tokens(chatd: services_pb2_grpc.ChatDStub,
                                   keys: tuple[bytes, bytes]) -> None:
    other, _ = tokens.generate_signing_key()
    err = _call(chatd, _request("alice"), tokens.mint_token(other, "alice"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    expired = tokens.mint_token(keys[0], "alice", ttl_seconds=1, now=time.time() - 10)
    err = _call(chatd, _request("alice"), expired)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.details() or "")
    err = _call(chatd, _request("alice"), "garbage")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_for_another_account(chatd: services_pb2_grpc.ChatDStub,
                                   keys: tuple[bytes, bytes]) -> None:
    err = _call(chatd, _request("bob"), tokens.mint_token(keys[0], "mallory"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_wrong_shard(chatd: services_pb2_grpc.ChatDStub, keys: tuple[bytes, bytes]) -> None:
    account = "carol"
    wrong = (shard_for(account, SHARDS) + 1) % SHARDS
    err = _call(chatd, _request(account, wrong), tokens.mint_token(keys[0], account))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_leader_then_rate_limited(chatd: services_pb2_grpc.ChatDStub,
                                     keys: tuple[bytes, bytes]) -> None:
    token = tokens.mint_token(keys[0], "dave")
    codes = [_call(chatd, _request("dave"), token).code() for _ in range(7)]
    assert codes[:5] == [grpc.StatusCode.UNAVAILABLE] * 5
    assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    err = _call(chatd, _request("dave"), token)
    assert "rate limit" in (err.details() or "")
    # Another account has its own bucket.
    other = _call(chatd, _request("erin"), tokens.mint_token(keys[0], "erin"))
    assert other.code() == grpc.StatusCode.UNAVAILABLE
    # which of the two depends on whether ChatD's probes have confirmed the loss yet
    assert other.details() in ("no vault leader reachable", NO_QUORUM_DETAILS)


NO_QUORUM_DETAILS = "the vault has no quorum: 1 of 1 nodes unreachable; try again later"


def test_a_shard_without_quorum_is_named_in_details_and_trailer(
    chatd: services_pb2_grpc.ChatDStub, keys: tuple[bytes, bytes]
) -> None:
    """Every node of the shard is dead: once ChatD's probes confirm it, it says so."""
    errors: list[grpc.RpcError] = []

    def said_no_quorum() -> bool:
        account = f"quorum-{len(errors)}"  # a fresh account each time: no rate limit
        errors.append(_call(chatd, _request(account), tokens.mint_token(keys[0], account)))
        return errors[-1].details() == NO_QUORUM_DETAILS

    wait_until(said_no_quorum, 15, "ChatD to report the lost quorum")
    err = errors[-1]
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert ("bkv-no-quorum", "1/1") in tuple(err.trailing_metadata() or ())


def test_oversized_message_refused(chatd: services_pb2_grpc.ChatDStub,
                                   keys: tuple[bytes, bytes]) -> None:
    req = _request("frank")
    req.sealed = b"\x00" * (128 * 1024)
    err = _call(chatd, req, tokens.mint_token(keys[0], "frank"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cluster_status_lists_unreachable(chatd: services_pb2_grpc.ChatDStub) -> None:
    reply = chatd.ClusterStatus(services_pb2.ClusterStatusRequest(), timeout=10)
    assert len(reply.nodes) == 0
    assert len(reply.unreachable) == SHARDS


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"token_public_key": "abcd"}, "token_public_key"),
        ({"shards": [{"id": 1, "nodes": ["127.0.0.1:1"]}]}, "shard ids"),
        ({"listen": "nowhere"}, "listen"),
        ({"surprise": 1}, "unknown key"),
        ({"rate_limit": {"burst": 0}}, "burst"),
    ],
)
def test_config_errors(keys: tuple[bytes, bytes], change: dict[str, object], needle: str) -> None:
    raw = _config_dict(keys[1]) | change
    with pytest.raises(ConfigError, match=needle):
        ChatDConfig.from_mapping(raw)


@pytest.mark.cluster
def test_process_stops_cleanly_on_sigterm(tmp_path: Path, keys: tuple[bytes, bytes]) -> None:
    import tomli_w

    listen = _dead_address()
    raw = _config_dict(keys[1]) | {"listen": listen}
    config = tmp_path / "chatd.toml"
    config.write_text(tomli_w.dumps(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd_proxy.cli", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        channel = grpc.insecure_channel(listen)
        grpc.channel_ready_future(channel).result(timeout=20)
        channel.close()
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, stderr
        assert "shutting down" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "chatd.toml"
    config.write_text("listen = 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "chatd_proxy.cli", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
