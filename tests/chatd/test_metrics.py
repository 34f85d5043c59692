"""The Prometheus endpoint of a real ChatD process in front of a real vault shard."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import tomli_w

from bkv_api.v1 import envelope_pb2, services_pb2_grpc
from bkv_protocol import tokens
from bkv_tools.launcher_layout import free_ports
from chatd_proxy.config import ChatDConfig, ConfigError
from tests.vault.conftest import (
    Cluster,
    VaultCallError,
    VaultTestClient,
    clean_env,
    init_fleet,
    scrape,
    write_node_configs,
)

ACCOUNT = "+15550003333-chatd"
FLOODER = "+15550004444-chatd"
BURST = 8


class _ViaChatD:
    """Stands in for a VaultStub: every Handle goes through ChatD.Forward with a token."""

    def __init__(self, stub: services_pb2_grpc.ChatDStub, token: str) -> None:
        self._stub = stub
        self._metadata = (("bkv-account-token", token),)

    def Handle(self, request: envelope_pb2.SealedRequest, timeout: float) -> Any:
        return self._stub.Forward(request, metadata=self._metadata, timeout=timeout)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, str, str, bytes]]:
    """A 3-node shard, and a ChatD whose node list starts with a follower."""
    state = tmp_path_factory.mktemp("chatd-metrics")
    vault = Cluster(state, init_fleet(state), write_node_configs(state, 3))
    vault.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        leader = vault.wait_for_leader()
        nodes = sorted((c["grpc_address"] for c in vault.configs), key=lambda a: a == leader)
        signing, public = tokens.generate_signing_key()
        listen_port, metrics_port = free_ports(2)
        listen, metrics = f"127.0.0.1:{listen_port}", f"127.0.0.1:{metrics_port}"
        config = state / "chatd.toml"
        config.write_text(
            tomli_w.dumps(
                {
                    "listen": listen,
                    "datacenter": "dc1",
                    "token_public_key": public.hex(),
                    "deadline_seconds": 10.0,
                    "rate_limit": {"per_account_per_second": 0.01, "burst": BURST},
                    "shards": [{"id": 0, "nodes": nodes}],
                    "metrics_address": metrics,
                }
            )
        )
        log = open(state / "chatd.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatd_proxy.cli", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        log.close()
        with grpc.insecure_channel(listen) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        yield vault, listen, metrics, signing
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        vault.stop()


@pytest.mark.cluster
def test_chatd_counts_outcomes_retries_and_rate_limits(
    deployment: tuple[Cluster, str, str, bytes],
) -> None:
    vault, listen, metrics, signing = deployment
    client = VaultTestClient(listen, vault.fleet_public_key)
    try:
        stub = services_pb2_grpc.ChatDStub(client.channel)
        client.stub = _ViaChatD(stub, tokens.mint_token(signing, ACCOUNT))
        client.register(ACCOUNT, b"right", b"k" * 32)  # first try hits a follower: a retry
        with pytest.raises(VaultCallError):
            client.recover(ACCOUNT, b"wrong")
        assert client.recover(ACCOUNT, b"right") == b"k" * 32
        client.stub = _ViaChatD(stub, tokens.mint_token(signing, FLOODER))
        for _ in range(BURST):  # relayed: the vault's sealed answer is "not registered"
            with pytest.raises(VaultCallError):
                client.login_start(FLOODER, b"right")
        for _ in range(2):  # the bucket is empty: ChatD refuses itself
            with pytest.raises(grpc.RpcError) as err:
                client.login_start(FLOODER, b"right")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        client.close()

    text, samples = scrape(metrics)
    assert "1555" not in text  # no account, in a label or anywhere else
    ok = samples[("bkv_chatd_requests_total", (("outcome", "OK"),))]
    assert ok == 6 + BURST  # sealed protocol errors still travel as OK
    limited = samples[("bkv_chatd_requests_total", (("outcome", "RESOURCE_EXHAUSTED"),))]
    assert limited == 2
    assert samples[("bkv_chatd_rate_limited_total", ())] == 2
    relayed = {labels: v for (name, labels), v in samples.items()
               if name == "bkv_chatd_vault_outcomes_total" and v}
    # every relayed request ended in the leader's OK; the refusals never reached a node
    assert relayed == {(("code", "OK"), ("source", "vault")): 6 + BURST}
    assert samples[("bkv_chatd_retries_total", ())] >= 1
    assert samples[("bkv_chatd_forward_seconds_count", ())] >= 6


def test_metrics_address_is_validated() -> None:
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "datacenter": "dc1",
        "token_public_key": "00" * 32,
        "shards": [{"id": 0, "nodes": ["127.0.0.1:1"]}],
    }
    assert ChatDConfig.from_mapping(raw).metrics_address == ""
    assert ChatDConfig.from_mapping(raw | {"metrics_address": "127.0.0.1:9465"}).metrics_address
    for bad in ("nowhere", "127.0.0.1:0", 9465):
        with pytest.raises(ConfigError, match="metrics_address"):
            ChatDConfig.from_mapping(raw | {"metrics_address": bad})
