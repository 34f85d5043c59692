"""Process wiring for one vault node: keys, Raft, the gRPC server, the session sweeper.

All start-up checks happen before anything listens, so a misconfigured node fails
with a one-line :class:`StartupError` rather than half-joining the cluster.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc

from bkv_api.v1 import services_pb2_grpc
from bkv_ops.tls import ROLE_CHATD, ROLE_OPS, RoleGuard, ServerTls, TlsError
from vault_node.config import ConfigError, NodeConfig, load_transport_secret
from vault_node.hsm.fleet import FleetHsm, HsmError
from vault_node.hsm.high_water import HighWaterMark
from vault_node.hsm.pkcs11 import load_master_key, node_high_water
from vault_node.raft.membership import bootstrap_members
from vault_node.raft.replication import RaftConfig, RaftStartupError, ReplicatedVault
from vault_node.raft.transport_cipher import LinkKey, load_link_key
from vault_node.service.health import can_answer, vault_health
from vault_node.service.metrics import VaultMetrics
from vault_node.service.sessions import SessionTable
from vault_node.service.vault import VaultService

log = logging.getLogger("bkv.vault.server")

MAX_MESSAGE_BYTES = 64 * 1024
GRPC_WORKERS = 16
SWEEP_INTERVAL_SECONDS = 1.0


class StartupError(Exception):
    """The node can't start; the message is a one-line, secret-free explanation."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Prepared:
    hsm: FleetHsm
    transport_secret: bytes
    link_key: LinkKey
    high_water: HighWaterMark


def prepare(cfg: NodeConfig) -> _Prepared:
    """Every refusal the node makes before it touches the network."""
    try:
        secret = load_transport_secret(cfg)
    except ConfigError as err:
        raise StartupError(str(err)) from None
    try:
        master = load_master_key(cfg)
    except HsmError as err:
        raise StartupError(str(err)) from None
    try:
        blob = cfg.fleet_file.read_bytes()
    except OSError as err:
        raise StartupError(f"cannot read fleet file {cfg.fleet_file}: {err.strerror}") from None
    try:
        hsm = FleetHsm.open_fleet(master, blob)
    except HsmError:
        raise StartupError("master key does not open the fleet file") from None
    try:
        link_key = load_link_key(cfg)
    except ConfigError as err:
        raise StartupError(str(err)) from None
    try:
        high_water = node_high_water(cfg, master)
    except HsmError as err:
        raise StartupError(str(err)) from None
    return _Prepared(hsm, secret, link_key, high_water)


class VaultNode:
    """A running node: owns the Raft replica, the gRPC server and the sweeper thread."""

    def __init__(self, cfg: NodeConfig) -> None:
        prepared = prepare(cfg)
        self.config = cfg
        self._tls = _server_credentials(cfg)
        try:
            self._replica = ReplicatedVault(
                RaftConfig(
                    node_id=cfg.node_id,
                    self_address=cfg.raft_address,
                    peer_addresses=[p.raft_address for p in cfg.other_peers],
                    data_dir=cfg.data_dir,
                    transport_secret=prepared.transport_secret,
                    link_key=prepared.link_key,
                    commit_timeout=cfg.commit_timeout_seconds,
                    bind_address=cfg.raft_bind,
                    audit_file=cfg.audit_file,
                    members=bootstrap_members(cfg.peers),
                    join=cfg.join,
                    high_water=prepared.high_water,
                )
            )
        except RaftStartupError as err:
            raise StartupError(str(err)) from None
        self._sessions = SessionTable(
            max_sessions=cfg.max_sessions, ttl_seconds=cfg.session_ttl_seconds
        )
        self.metrics = VaultMetrics()
        self.metrics.watch_raft(self._replica.status)
        self.service = VaultService(cfg, prepared.hsm, self._replica, self._sessions, self.metrics)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="vault-grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            # with TLS, each method admits only the roles that need it (the handshake
            # already demands a client certificate from the cluster CA)
            interceptors=[RoleGuard(METHOD_ROLES)] if self._tls is not None else None,
        )
        services_pb2_grpc.add_VaultServicer_to_server(self.service, self._server)
        self.health = vault_health(self._can_answer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="vault-sweeper", daemon=True)

    def start(self) -> None:
        listen = self.config.grpc_listen
        bound = (self._server.add_insecure_port(listen) if self._tls is None
                 else self._server.add_secure_port(listen, self._tls))
        if bound == 0:
            raise StartupError(f"cannot listen on {self.config.grpc_listen}", exit_code=4)
        if self.config.metrics_address:
            try:
                self.metrics.serve(self.config.metrics_address)
            except OSError as err:
                msg = f"cannot serve metrics on {self.config.metrics_address}: {err.strerror}"
                raise StartupError(msg, exit_code=4) from None
        self._server.start()
        self._sweeper.start()
        self.health.start()
        log.info(
            "node %s (%s) serving shard %d on %s as %s",
            self.config.node_id,
            self.config.datacenter,
            self.config.shard,
            self.config.grpc_listen,
            self.config.grpc_address,
        )

    def stop(self) -> None:
        """Clean shutdown: stop accepting, finish in-flight calls, close Raft."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.health.stop()  # before the grace period, so probes see it
        self._server.stop(grace=2.0).wait(5.0)
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=5.0)
        self.service.drop_sessions()
        self._replica.close()
        self.metrics.close()
        log.info("node %s stopped", self.config.node_id)

    def _can_answer(self) -> bool:
        """Health: state loaded (at replica start), leader known, majority reachable."""
        return can_answer(self.config, self._replica)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_SECONDS):
            try:
                if not self._replica.is_leader():
                    self.service.drop_sessions()  # a deposed leader's sessions can't finish
                    continue
                self.service.sweep_expired()
                self.service.sweep_exhausted()
            except Exception:  # keep sweeping; never log payloads
                log.exception("session sweep failed")


# Who may call what on a vault node. Only ChatD relays sealed requests (``Handle``:
# the one method that can cost a guess); an ops probe reads status and health and
# nothing else. Any method not listed here is refused to every role.
METHOD_ROLES: dict[str, tuple[str, ...]] = {
    "/bkv.v1.Vault/Handle": (ROLE_CHATD,),
    "/bkv.v1.Vault/Status": (ROLE_CHATD, ROLE_OPS),
    "/grpc.health.v1.Health/Check": (ROLE_CHATD, ROLE_OPS),
    "/grpc.health.v1.Health/Watch": (ROLE_CHATD, ROLE_OPS),
}


def _server_credentials(cfg: NodeConfig) -> grpc.ServerCredentials | None:
    """Mutual-TLS credentials when the config names certificates; None means plaintext."""
    if cfg.tls_cert_file is None or cfg.tls_key_file is None or cfg.tls_ca_file is None:
        return None
    try:
        return ServerTls(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file).credentials(
            require_client_auth=True
        )
    except TlsError as err:
        raise StartupError(str(err)) from None
