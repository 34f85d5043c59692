"""ChatD's per-client-address rate limit: one host can't flood through many accounts.

Guard: ``ChatDService._forward`` calls ``client_address(context.peer())`` and the
address bucket before verifying any token (``chatd_proxy/server.py``). Without
it, the flood below -- every request from a different account with a valid
token, so the per-account limit never fires -- would all be relayed (and end in
UNAVAILABLE, since the shard map points where nothing listens).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from bkv_api.v1 import envelope_pb2, services_pb2, services_pb2_grpc
from bkv_protocol import tokens
from bkv_protocol.sharding import shard_for
from chatd_proxy.config import ChatDConfig, ConfigError
from chatd_proxy.ratelimit import RateLimiter, client_address
from chatd_proxy.server import ChatDServer

ADDRESS_BURST = 6
ADDRESS_RATE = 1.0  # tokens per second


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:1.2.3.4:5678", "1.2.3.4"),
        ("ipv4:1.2.3.4:1", "1.2.3.4"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("ipv6:%5B2001:DB8::1%5D:443", "2001:db8::1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:9", "fe80::1"),
        ("unix:/run/bkv.sock", "unix"),
        ("unix-abstract:bkv", "unix-abstract"),
        ("nonsense", "unknown"),
    ],
)
def test_client_address_ignores_the_port(peer: str, host: str) -> None:
    assert client_address(peer) == host


def test_ports_of_one_host_share_a_bucket() -> None:
    clock = _Clock()
    limiter = RateLimiter(1.0, 3, clock=clock)
    peers = [f"ipv4:10.0.0.7:{port}" for port in range(40000, 40004)]
    assert [limiter.allow(client_address(p)) for p in peers] == [True, True, True, False]
    assert limiter.allow(client_address("ipv4:10.0.0.8:40000"))  # another host
    clock.now += 1.0
    assert limiter.allow(client_address(peers[0]))


def test_address_limits_are_validated() -> None:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "datacenter": "dc1",
        "token_public_key": "00" * 32,
        "shards": [{"id": 0, "nodes": ["127.0.0.1:1"]}],
    }
    config = ChatDConfig.from_mapping(base)
    assert config.rate_limit.address_burst >= 10 * config.rate_limit.burst  # NAT headroom
    for bad, word in (
        ({"per_address_per_second": 0}, "per_address_per_second"),
        ({"address_burst": 0}, "address_burst"),
        ({"address_burst": True}, "address_burst"),
        ({"per_host": 1}, "per_host"),
    ):
        with pytest.raises(ConfigError, match=word):
            ChatDConfig.from_mapping({**base, "rate_limit": bad})


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture()
def chatd() -> Iterator[tuple[ChatDServer, bytes]]:
    signing, public = tokens.generate_signing_key()
    server = ChatDServer(ChatDConfig.from_mapping({
        # "localhost" binds both loopbacks, so 127.0.0.1 and ::1 are two client hosts.
        "listen": "localhost:0" if _ipv6_loopback() else "127.0.0.1:0",
        "datacenter": "dc1",
        "token_public_key": public.hex(),
        "deadline_seconds": 0.2,
        "rate_limit": {"per_account_per_second": 0.01, "burst": 1,
                       "per_address_per_second": ADDRESS_RATE, "address_burst": ADDRESS_BURST},
        "shards": [{"id": 0, "nodes": [_dead_address()]}],
    }))
    server.start()
    try:
        yield server, signing
    finally:
        server.stop(0)


def _forward(channel: grpc.Channel, signing: bytes, account: str) -> tuple[str, str]:
    stub = services_pb2_grpc.ChatDStub(channel)
    request = envelope_pb2.SealedRequest(
        account=account, shard=shard_for(account, 1), type=envelope_pb2.LOGIN_START,
        sealed=b"\x00" * 64,
    )
    token = tokens.mint_token(signing, account)
    try:
        stub.Forward(request, metadata=[("bkv-account-token", token)], timeout=5)
    except grpc.RpcError as err:
        return err.code().name, str(err.details())
    return "OK", ""


def _refusals(server: ChatDServer, limit: str) -> float:
    value = server.service.metrics.rate_limited_by.labels(limit=limit)._value.get()
    return float(value)


def test_flood_of_many_accounts_from_one_address(chatd: tuple[ChatDServer, bytes]) -> None:
    server, signing = chatd
    flood = 3 * ADDRESS_BURST
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # Each request is a fresh account with a valid token: the per-account limit passes it.
        started = time.monotonic()
        results = [_forward(channel, signing, f"flood-{i}") for i in range(flood)]
        refills = int((time.monotonic() - started) * ADDRESS_RATE) + 1
        codes = [code for code, _ in results]
        assert codes[:ADDRESS_BURST] == ["UNAVAILABLE"] * ADDRESS_BURST  # relayed, no vault
        refused = [details for code, details in results if code == "RESOURCE_EXHAUSTED"]
        assert len(refused) >= flood - ADDRESS_BURST - refills
        assert all("client address" in details for details in refused)
        assert set(codes) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
        # Unauthenticated requests are refused by the address limit too, before the token check.
        assert _forward_without_token(channel) == "RESOURCE_EXHAUSTED"
        # So is ClusterStatus, which fans out to every vault node.
        with pytest.raises(grpc.RpcError) as status_err:
            services_pb2_grpc.ChatDStub(channel).ClusterStatus(
                services_pb2.ClusterStatusRequest(), timeout=5)
        assert status_err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _refusals(server, "address") >= len(refused) + 2
        assert _refusals(server, "account") == 0

        if _ipv6_loopback():  # another client host is served meanwhile
            with grpc.insecure_channel(f"[::1]:{server.port}") as other:
                assert _forward(other, signing, "bystander")[0] == "UNAVAILABLE"

        # The bucket refills at its rate: after a window, this host is served again.
        time.sleep(1.5 / ADDRESS_RATE)
        assert _forward(channel, signing, "after-window")[0] == "UNAVAILABLE"


def _forward_without_token(channel: grpc.Channel) -> str:
    stub = services_pb2_grpc.ChatDStub(channel)
    try:
        stub.Forward(envelope_pb2.SealedRequest(account="x", shard=0), timeout=5)
    except grpc.RpcError as err:
        return str(err.code().name)
    return "OK"
