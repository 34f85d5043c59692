"""Real vault-node processes on free loopback ports, and a test client built from bkv_protocol."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bkv_api.v1 import envelope_pb2 as pb
from bkv_api.v1 import services_pb2, services_pb2_grpc
from bkv_ops.tls import ClientTls, open_channel
from bkv_protocol import deposit, opaque, sealing
from bkv_protocol.errors import AuthenticationError
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher_layout import free_ports
from vault_node.raft.transport_cipher import LinkKey

NODE_CMD = [sys.executable, "-m", "vault_node.cli"]
TEST_ATTEMPT_LIMIT = 3
START_DEADLINE = 30.0
RPC_TIMEOUT = 10.0
ACCOUNT_CONTEXT = opaque.PRODUCT_CONTEXT


def init_fleet(state: Path) -> dict[str, str]:
    """Run the real `init-fleet` and return the printed public keys."""
    out = subprocess.run(
        [
            *NODE_CMD,
            "init-fleet",
            "--master-key-file",
            str(state / "secrets" / "master.key"),
            "--fleet-file",
            str(state / "fleet" / "fleet.sealed"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys: dict[str, str] = json.loads(out.stdout)
    return keys


def new_link_key_file(path: Path) -> str:
    """Write a node's private link key (0600) as the tooling does; its public key in hex."""
    key = LinkKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.private_hex() + "\n")
    path.chmod(0o600)
    return key.public_hex


def write_node_configs(state: Path, size: int, **extra: Any) -> list[dict[str, Any]]:
    """Config dicts (and files) for a `size`-node shard spread over dc1..dc3."""
    ports = free_ports(2 * size)
    peers = [
        {
            "node_id": f"dc{i % 3 + 1}-n{i + 1}",
            "datacenter": f"dc{i % 3 + 1}",
            "raft_address": f"127.0.0.1:{ports[2 * i]}",
            "grpc_address": f"127.0.0.1:{ports[2 * i + 1]}",
            "link_public_key": new_link_key_file(
                state / "secrets" / f"dc{i % 3 + 1}-n{i + 1}.link.key"
            ),
        }
        for i in range(size)
    ]
    secret_file = state / "secrets" / "transport.secret"
    if not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    configs = []
    for peer in peers:
        cfg: dict[str, Any] = {
            **peer,
            "shard": 0,
            "data_dir": str(state / "nodes" / peer["node_id"]),
            "fleet_file": str(state / "fleet" / "fleet.sealed"),
            "master_key_file": str(state / "secrets" / "master.key"),
            "transport_secret_file": str(secret_file),
            "link_key_file": str(state / "secrets" / f"{peer['node_id']}.link.key"),
            "attempt_limit": TEST_ATTEMPT_LIMIT,
            "allow_identity_ksf": True,
            "peers": peers,
            **extra,
        }
        path = state / f"{peer['node_id']}.toml"
        path.write_text(tomli_w.dumps(cfg))
        cfg["config_path"] = str(path)
        configs.append(cfg)
    return configs


def health_check(address: str, service: str) -> int | grpc.StatusCode:
    """The status ``grpc.health.v1.Health/Check`` reports, or the gRPC error code of the call."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2.0
            )
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return int(reply.status)


def wait_health(address: str, services: tuple[str, ...], want: int, deadline: float) -> float:
    """Seconds until every one of ``services`` reports ``want``; fails after ``deadline``."""
    start = time.monotonic()
    seen: list[int | grpc.StatusCode] = []
    while time.monotonic() - start < deadline:
        seen = [health_check(address, s) for s in services]
        if all(s == want for s in seen):
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"{address} still reports {seen} after {deadline}s")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> tuple[str, Samples]:
    """The raw exposition text and every sample keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5.0) as response:
        text: str = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples

def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKV_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Cluster:
    """A running shard; `stop()` SIGTERMs every process and waits for it."""

    state: Path
    keys: dict[str, str]
    configs: list[dict[str, Any]]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def fleet_public_key(self) -> bytes:
        return bytes.fromhex(self.keys["fleet_public_key"])

    def start(self) -> None:
        self.procs = []
        for cfg in self.configs:
            log = open(self.state / f"{cfg['node_id']}.log", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [*NODE_CMD, "run", "--config", cfg["config_path"]],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_env(),
                )
            )
            log.close()

    def status(self, grpc_address: str) -> services_pb2.NodeStatus | None:
        with grpc.insecure_channel(grpc_address) as channel:
            try:
                reply: services_pb2.NodeStatus = services_pb2_grpc.VaultStub(channel).Status(
                    services_pb2.StatusRequest(), timeout=2.0
                )
                return reply
            except grpc.RpcError:
                return None

    def live_configs(self) -> list[dict[str, Any]]:
        return [c for c, p in zip(self.configs, self.procs, strict=True) if p.poll() is None]

    def wait_for_leader(self, deadline: float = START_DEADLINE) -> str:
        """The leader's gRPC address once every live node agrees on it (bounded wait)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for proc in self.procs:
                if proc.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"node exited early ({proc.returncode}): {self.logs()}")
            live = self.live_configs()
            statuses = [self.status(c["grpc_address"]) for c in live]
            leaders = {s.leader_address for s in statuses if s is not None}
            addresses = {c["grpc_address"] for c in live}
            if None not in statuses and len(leaders) == 1 and leaders <= addresses:
                return leaders.pop()
            time.sleep(0.3)
        raise RuntimeError(f"no leader within {deadline}s: {self.logs()}")

    def kill(self, grpc_address: str) -> None:
        """SIGKILL the node serving ``grpc_address`` (a crash, not a clean stop)."""
        for cfg, proc in zip(self.configs, self.procs, strict=True):
            if cfg["grpc_address"] == grpc_address:
                proc.kill()
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-2000:] for p in sorted(self.state.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextlib.contextmanager
def started_cluster(state: Path, size: int, **extra: Any) -> Iterator[Cluster]:
    """A fresh fleet and ``size`` node processes with a leader elected; stopped on exit."""
    c = Cluster(state, init_fleet(state), write_node_configs(state, size, **extra))
    c.start()
    try:
        c.wait_for_leader()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("vault-cluster"), 3) as c:
        yield c


class VaultCallError(Exception):
    """A VaultReply.error, surfaced to the test."""

    def __init__(self, error: pb.VaultError) -> None:
        super().__init__(f"{pb.VaultError.Code.Name(error.code)}: {error.message}")
        self.code = error.code
        self.attempts_left = error.attempts_left


@dataclass
class LoginInProgress:
    state: Any
    reply: pb.LoginStartReply


class VaultTestClient:
    """Talks `Vault.Handle` directly, using only bkv_protocol (sealing + OPAQUE + deposit)."""

    def __init__(
        self, address: str, fleet_public_key: bytes, shard: int = 0, tls: ClientTls | None = None
    ) -> None:
        """``tls``: speak mutual TLS with these credentials (e.g. a ChatD's certificate)."""
        self.channel = open_channel(address, tls)
        self.stub = services_pb2_grpc.VaultStub(self.channel)
        self.fleet_public_key = fleet_public_key
        self.shard = shard

    def close(self) -> None:
        self.channel.close()

    def seal(
        self, account: str, mtype: pb.MessageType, request: pb.ClientRequest
    ) -> pb.SealedRequest:
        sealed = sealing.seal_request(
            self.fleet_public_key, account, self.shard, mtype, request.SerializeToString()
        )
        return pb.SealedRequest(account=account, shard=self.shard, type=mtype, sealed=sealed)

    def call(self, account: str, mtype: pb.MessageType, **body: Any) -> pb.VaultReply:
        key = sealing.new_response_key()
        envelope = self.seal(account, mtype, pb.ClientRequest(response_key=key, **body))
        response = self.stub.Handle(envelope, timeout=RPC_TIMEOUT)
        reply = pb.VaultReply.FromString(
            sealing.open_reply(key, account, self.shard, mtype, response.sealed)
        )
        if reply.WhichOneof("body") == "error":
            raise VaultCallError(reply.error)
        return reply

    def register(
        self, account: str, password: bytes, backup_key: bytes, *, replace: bool = True
    ) -> int:
        """REGISTER_START + REGISTER_FINISH; ``replace`` as the raw protocol field."""
        state, request = opaque.client_start_registration(password)
        r1 = self.call(
            account,
            pb.REGISTER_START,
            register_start=pb.RegisterStart(registration_request=request),
        )
        record, export_key = opaque.client_finish_registration(
            state,
            r1.register_start.registration_response,
            ksf=IDENTITY_KSF,
            client_identity=account.encode(),
        )
        r2 = self.call(
            account,
            pb.REGISTER_FINISH,
            register_finish=pb.RegisterFinish(
                registration_record=record,
                key_deposit=deposit.seal_deposit(export_key, account, backup_key),
                ksf=IDENTITY_KSF.descriptor,
                registration_ticket=r1.register_start.registration_ticket,
                replace=replace,
            ),
        )
        return r2.register_finish.attempt_limit

    def login_start(self, account: str, password: bytes) -> LoginInProgress:
        state, ke1 = opaque.client_start_login(password)
        reply = self.call(account, pb.LOGIN_START, login_start=pb.LoginStart(ke1=ke1))
        return LoginInProgress(state, reply.login_start)

    def login_finish(self, account: str, login: LoginInProgress) -> bytes:
        """Finish a login and return the backup key (VaultCallError if the vault refuses)."""
        try:
            ke3, session_key, export_key = opaque.client_finish_login(
                login.state,
                login.reply.ke2,
                ksf=IDENTITY_KSF,
                context=ACCOUNT_CONTEXT,
                client_identity=account.encode(),
            )
        except AuthenticationError:  # wrong password: send a KE3 that can't verify
            ke3, session_key, export_key = secrets.token_bytes(64), b"", b""
        reply = self.call(
            account,
            pb.LOGIN_FINISH,
            login_finish=pb.LoginFinish(session_id=login.reply.session_id, ke3=ke3),
        )
        released = deposit.open_from_session(
            session_key, account, reply.login_finish.sealed_deposit
        )
        return deposit.open_deposit(export_key, account, released)

    def recover(self, account: str, password: bytes) -> bytes:
        return self.login_finish(account, self.login_start(account, password))
