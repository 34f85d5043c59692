"""A guessing attack through the real SDK and ChatD shows in the metrics.

A client with a wrong password stops after KE2 (the envelope does not open), so
``login_finish/wrong_password`` never moves for it. The vault nodes must show each
counted guess's fate instead -- ``lapsed`` when its session runs out, ``destroyed``
for the last one -- and ChatD its relayed requests by the status that ended them
and by who gave it (a vault node, or ChatD itself when no node could answer).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w

from bkv_api.v1 import envelope_pb2 as pb
from bkv_api.v1 import services_pb2_grpc
from bkv_protocol import tokens
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher_layout import free_ports
from client_sdk import ClientConfig, KeyDestroyed, VaultClient, WrongPassword
from tests.vault.conftest import (
    TEST_ATTEMPT_LIMIT,
    Cluster,
    Samples,
    VaultCallError,
    VaultTestClient,
    clean_env,
    init_fleet,
    scrape,
    write_node_configs,
)
from vault_node.service.metrics import FATES

pytestmark = pytest.mark.cluster
VICTIM = "+15550007777-attack"
BYSTANDER = "+15550008888-attack"
SESSION_TTL = 2.0  # short, so that the attacker's sessions lapse within the test
WAIT_SECONDS = 30.0


class _ViaChatD:
    """Stands in for a VaultStub: every Handle goes through ChatD.Forward with a token."""

    def __init__(self, stub: services_pb2_grpc.ChatDStub, token: str) -> None:
        self._stub = stub
        self._metadata = (("bkv-account-token", token),)

    def Handle(self, request: pb.SealedRequest, timeout: float) -> Any:
        return self._stub.Forward(request, metadata=self._metadata, timeout=timeout)


@dataclass
class Deployment:
    vault: Cluster
    chatd: str
    chatd_metrics: str
    signing: bytes

    def client_config(self, account: str) -> ClientConfig:
        return ClientConfig(fleet_public_key=self.vault.fleet_public_key, shard_count=1,
                            chatd=[self.chatd], deadline_seconds=10.0,
                            token=tokens.mint_token(self.signing, account))

    def raw_client(self, account: str) -> VaultTestClient:
        """Single protocol steps, through ChatD with ``account``'s token."""
        client = VaultTestClient(self.chatd, self.vault.fleet_public_key)
        client.stub = _ViaChatD(services_pb2_grpc.ChatDStub(client.channel),
                                tokens.mint_token(self.signing, account))
        return client


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("attack-metrics")
    configs = write_node_configs(state, 3, session_ttl_seconds=SESSION_TTL)
    for cfg, port in zip(configs, free_ports(len(configs)), strict=True):
        cfg["metrics_address"] = f"127.0.0.1:{port}"
        Path(cfg["config_path"]).write_text(
            tomli_w.dumps({k: v for k, v in cfg.items() if k != "config_path"}))
    vault = Cluster(state, init_fleet(state), configs)
    vault.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        vault.wait_for_leader()
        signing, public = tokens.generate_signing_key()
        listen_port, metrics_port = free_ports(2)
        listen, metrics = f"127.0.0.1:{listen_port}", f"127.0.0.1:{metrics_port}"
        config = state / "chatd.toml"
        config.write_text(tomli_w.dumps({
            "listen": listen,
            "datacenter": "dc1",
            "token_public_key": public.hex(),
            "deadline_seconds": 5.0,
            "rate_limit": {"per_account_per_second": 100.0, "burst": 100},
            "shards": [{"id": 0, "nodes": [c["grpc_address"] for c in configs]}],
            "metrics_address": metrics,
        }))
        with open(state / "chatd.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chatd_proxy.cli", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        with grpc.insecure_channel(listen) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        yield Deployment(vault, listen, metrics, signing)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        vault.stop()


def _total(scraped: list[Samples], name: str, **labels: str) -> float:
    """One series summed over every node (a leader change moves the counting node)."""
    key = (name, tuple(sorted(labels.items())))
    return sum(samples.get(key, 0.0) for samples in scraped)


def _vault_samples(deployment: Deployment) -> list[Samples]:
    return [scrape(c["metrics_address"])[1] for c in deployment.vault.configs]


def _fates(scraped: list[Samples]) -> dict[str, float]:
    found = {f: _total(scraped, "bkv_vault_attempts_total", fate=f) for f in FATES}
    return {f: n for f, n in found.items() if n}


def test_a_guessing_attack_shows_in_the_fates_and_chatd_codes(deployment: Deployment) -> None:
    right, key = "correct horse", b"k" * 32
    with VaultClient(deployment.client_config(VICTIM), ksf=IDENTITY_KSF) as owner:
        owner.register(VICTIM, key, right)
    raw = deployment.raw_client(VICTIM)
    try:
        # a hand-made client that does send a (wrong) KE3: the one case the old metric saw
        with pytest.raises(VaultCallError) as err:
            raw.recover(VICTIM, b"not it")
        assert err.value.code == pb.VaultError.LOGIN_FAILED
        # the attacker with the real SDK: KE1, KE2 that does not open, nothing more
        with VaultClient(deployment.client_config(VICTIM), ksf=IDENTITY_KSF) as attacker:
            with pytest.raises(WrongPassword):
                attacker.recover(VICTIM, "guess 1")
            assert attacker.recover(VICTIM, right) == key  # the owner, on the last attempt
            for n in range(TEST_ATTEMPT_LIMIT):  # a full round of guesses after the reset
                with pytest.raises(WrongPassword) as wrong:
                    attacker.recover(VICTIM, f"guess {n + 2}")
            assert wrong.value.attempts_left == 0

            deadline = time.monotonic() + WAIT_SECONDS
            want = {"wrong_password": 1, "success": 1, "lapsed": TEST_ATTEMPT_LIMIT,
                    "destroyed": 1}
            while (fates := _fates(_vault_samples(deployment))) != want:
                assert time.monotonic() < deadline, f"fates {fates}, want {want}"
                time.sleep(0.3)
            with pytest.raises(KeyDestroyed):  # the lapsed last guess destroyed the deposit
                attacker.recover(VICTIM, right)
        # an envelope the vault can't open (ChatD relays it: only a node can tell)
        with pytest.raises(grpc.RpcError) as refused:
            raw.stub.Handle(pb.SealedRequest(account=VICTIM, shard=0, type=pb.LOGIN_START,
                                             sealed=b"not a sealed request"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # another account's token: ChatD refuses it itself, nothing is relayed
        with pytest.raises(grpc.RpcError) as denied:
            deployment.raw_client(BYSTANDER).stub.Handle(
                raw.seal(VICTIM, pb.LOGIN_START, pb.ClientRequest()), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        scraped = _vault_samples(deployment)
        counted = _total(scraped, "bkv_vault_attempts_counted_total")
        assert counted == 2 + 1 + TEST_ATTEMPT_LIMIT  # each guess counted once ...
        assert sum(_fates(scraped).values()) == counted  # ... and ended in exactly one fate
        assert _total(scraped, "bkv_vault_attempts_open") == 0
        assert _total(scraped, "bkv_vault_requests_total", step="login_finish",
                      outcome="wrong_password") == 1  # blind to the SDK attacker's guesses
        assert _total(scraped, "bkv_vault_deposits_destroyed_total") == 1

        # the shard loses its majority: ChatD answers UNAVAILABLE itself
        leader = deployment.vault.wait_for_leader()
        for cfg in [c for c in deployment.vault.configs if c["grpc_address"] != leader]:
            deployment.vault.kill(cfg["grpc_address"])
        with pytest.raises(grpc.RpcError) as down:
            raw.login_start(VICTIM, right.encode())
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        raw.close()

    text, chatd = scrape(deployment.chatd_metrics)
    assert "1555" not in text  # no account anywhere
    relayed = {labels: n for (name, labels), n in chatd.items()
               if name == "bkv_chatd_vault_outcomes_total" and n}
    ok = relayed.pop((("code", "OK"), ("source", "vault")))
    # register 2, the hand-made login 2, SDK logins 1 + 2 + 3, the destroyed answer 1
    assert ok >= 11
    assert relayed == {(("code", "INVALID_ARGUMENT"), ("source", "vault")): 1,
                       (("code", "UNAVAILABLE"), ("source", "chatd")): 1}
    assert chatd[("bkv_chatd_requests_total", (("outcome", "PERMISSION_DENIED"),))] == 1
