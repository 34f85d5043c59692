"""Vault node configuration (TOML written by the launcher), validated up front.

Every problem becomes a one-line :class:`ConfigError` naming the file and key, so
an operator never meets a traceback for a typo.

A node has two kinds of address. ``grpc_address`` and ``raft_address`` are what
peers, ChatDs and leader hints use to reach it; ``grpc_listen`` and ``raft_bind``
(optional, default: the matching advertised address) are the sockets it opens.
They differ behind NAT or in containers, where a node listens on ``0.0.0.0`` but
is reached by its service name.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

TRANSPORT_SECRET_ENV = "BKV_TRANSPORT_SECRET"  # noqa: S105 (a variable name)
LINK_KEY_ENV = "BKV_LINK_KEY"
MIN_TRANSPORT_SECRET_BYTES = 16


LINK_PUBLIC_KEY_BYTES = 32


class ConfigError(ValueError):
    """The node configuration is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class PeerConfig:
    """One voting member of the shard's Raft group."""

    node_id: str
    datacenter: str
    raft_address: str
    grpc_address: str
    link_public_key: str = ""  # hex X25519 key the member's Raft frames are sealed with


@dataclass(frozen=True)
class Pkcs11Settings:
    """Where the PKCS#11 master key lives (``master_key_backend = "pkcs11"``); PIN by file/env."""

    module: Path
    token_label: str
    key_label: str
    pin_file: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    """Everything one vault node needs; secrets are referenced by path, never inlined."""

    node_id: str
    datacenter: str
    shard: int
    grpc_address: str
    raft_address: str
    data_dir: Path
    fleet_file: Path
    master_key_file: Path | None
    transport_secret_file: Path | None
    peers: tuple[PeerConfig, ...]
    link_key_file: Path | None = None  # this node's private link key (0600); or $BKV_LINK_KEY
    attempt_limit: int = 10
    session_ttl_seconds: float = 30.0
    max_sessions: int = 10_000
    commit_timeout_seconds: float = 5.0
    allow_identity_ksf: bool = False  # test clusters only: accept the Identity KSF
    pkcs11: Pkcs11Settings | None = None  # set: the master key is in a PKCS#11 token
    grpc_listen: str = ""  # where the gRPC server listens; "" means grpc_address
    raft_bind: str = ""  # where Raft accepts peers; "" means raft_address
    metrics_address: str = ""  # Prometheus scrape endpoint (host:port); "" disables it
    audit_file: Path | None = None  # the audit trail; None means data_dir / "audit.jsonl"
    # the software HSM's anti-rollback mark; None means next to master_key_file (never
    # in data_dir); the PKCS#11 backend keeps it in the token instead
    high_water_file: Path | None = None
    # a node being added to a running shard: it never campaigns (and so never deposes
    # the leader) until its own log makes it a member; harmless to leave set afterwards
    join: bool = False
    log_format: str = ""  # "json" | "text"; "" picks text on a terminal, json otherwise
    # TLS (all three or none): set, the node serves only mutual TLS and admits a
    # client certificate from this CA with the ChatD or ops role
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None

    def __post_init__(self) -> None:
        # Filled here so every NodeConfig, however built, carries concrete sockets.
        if not self.grpc_listen:
            object.__setattr__(self, "grpc_listen", self.grpc_address)
        if not self.raft_bind:
            object.__setattr__(self, "raft_bind", self.raft_address)

    @property
    def self_peer(self) -> PeerConfig:
        return next(p for p in self.peers if p.node_id == self.node_id)

    @property
    def other_peers(self) -> tuple[PeerConfig, ...]:
        return tuple(p for p in self.peers if p.node_id != self.node_id)

    def peer_by_raft_address(self, raft_address: str | None) -> PeerConfig | None:
        """Map a Raft address (what pysyncobj knows) to the peer (gRPC address, id)."""
        if raft_address is None:
            return None
        return next((p for p in self.peers if p.raft_address == raft_address), None)

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config {path} is not valid TOML: {err}") from None
        return cls.from_mapping(raw, where=str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str = "config") -> NodeConfig:
        r = _Reader(raw, where)
        peers_raw = raw.get("peers")
        if not isinstance(peers_raw, list) or not peers_raw:
            raise ConfigError(f"{where}: [[peers]] must list every member of the shard")
        peers = []
        for i, item in enumerate(peers_raw):
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where}: peers[{i}] must be a table")
            p = _Reader(item, f"{where}: peers[{i}]")
            peers.append(
                PeerConfig(
                    node_id=p.string("node_id"),
                    datacenter=p.string("datacenter"),
                    raft_address=p.address("raft_address"),
                    grpc_address=p.address("grpc_address"),
                    link_public_key=p.link_key("link_public_key") if "link_public_key" in item
                    else "",
                )
            )
        cfg = cls(
            node_id=r.string("node_id"),
            datacenter=r.string("datacenter"),
            shard=r.integer("shard", 0, 2**32 - 1),
            grpc_address=r.address("grpc_address"),
            raft_address=r.address("raft_address"),
            data_dir=r.path("data_dir"),
            fleet_file=r.path("fleet_file"),
            master_key_file=r.optional_path("master_key_file"),
            transport_secret_file=r.optional_path("transport_secret_file"),
            peers=tuple(peers),
            link_key_file=r.optional_path("link_key_file"),
            attempt_limit=r.integer("attempt_limit", 1, 100, default=10),
            session_ttl_seconds=r.number("session_ttl_seconds", 1.0, 600.0, default=30.0),
            max_sessions=r.integer("max_sessions", 1, 1_000_000, default=10_000),
            commit_timeout_seconds=r.number("commit_timeout_seconds", 0.5, 60.0, default=5.0),
            allow_identity_ksf=r.boolean("allow_identity_ksf", default=False),
            pkcs11=_pkcs11_settings(r, raw, where),
            grpc_listen=r.optional_address("grpc_listen"),
            raft_bind=r.optional_address("raft_bind"),
            metrics_address=r.optional_address("metrics_address"),
            audit_file=r.optional_path("audit_file"),
            high_water_file=r.optional_path("high_water_file"),
            join=r.boolean("join", default=False),
            log_format=r.choice("log_format", ("json", "text")),
            tls_cert_file=r.optional_path("tls_cert_file"),
            tls_key_file=r.optional_path("tls_key_file"),
            tls_ca_file=r.optional_path("tls_ca_file"),
        )
        cfg._check_peers(where)
        if cfg.pkcs11 is not None and cfg.high_water_file is not None:
            raise ConfigError(
                f"{where}: 'high_water_file' is for the software master key; the PKCS#11 "
                "backend keeps the high-water mark in its token"
            )
        cfg._check_sockets(where)
        tls = (cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file)
        if any(tls) and not all(tls):
            raise ConfigError(
                f"{where}: 'tls_cert_file', 'tls_key_file' and 'tls_ca_file' go together"
            )
        return cfg

    def _check_sockets(self, where: str) -> None:
        """gRPC and Raft can't share a port on overlapping interfaces (one would fail to bind)."""
        g_host, _, g_port = self.grpc_listen.rpartition(":")
        r_host, _, r_port = self.raft_bind.rpartition(":")
        if g_port == r_port and (g_host == r_host or {g_host, r_host} & _WILDCARD_HOSTS):
            raise ConfigError(
                f"{where}: 'grpc_listen' and 'raft_bind' must not use the same port "
                f"({self.grpc_listen} and {self.raft_bind})"
            )

    def _check_peers(self, where: str) -> None:
        ids = [p.node_id for p in self.peers]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{where}: duplicate node_id in [[peers]]")
        if len({p.raft_address for p in self.peers}) != len(ids):
            raise ConfigError(f"{where}: duplicate raft_address in [[peers]]")
        keys = [p.link_public_key for p in self.peers if p.link_public_key]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{where}: duplicate link_public_key in [[peers]]")
        me = [p for p in self.peers if p.node_id == self.node_id]
        if not me:
            raise ConfigError(f"{where}: [[peers]] must include this node ({self.node_id})")
        if me[0].raft_address != self.raft_address or me[0].grpc_address != self.grpc_address:
            raise ConfigError(f"{where}: this node's [[peers]] entry disagrees with its addresses")


def load_transport_secret(cfg: NodeConfig, env: Mapping[str, str] | None = None) -> bytes:
    """``$BKV_TRANSPORT_SECRET`` if set, else the secret file; ConfigError if neither."""
    environ = os.environ if env is None else env
    value = environ.get(TRANSPORT_SECRET_ENV, "").strip()
    if not value and cfg.transport_secret_file is not None:
        try:
            value = cfg.transport_secret_file.read_text("utf-8").strip()
        except FileNotFoundError:
            value = ""
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                f"cannot read transport secret file {cfg.transport_secret_file}"
            ) from None
    if not value:
        raise ConfigError(
            "no Raft transport secret: set transport_secret_file or "
            f"{TRANSPORT_SECRET_ENV}; the node refuses to run unauthenticated Raft"
        )
    secret = value.encode("utf-8")
    if len(secret) < MIN_TRANSPORT_SECRET_BYTES:
        raise ConfigError(
            f"Raft transport secret is shorter than {MIN_TRANSPORT_SECRET_BYTES} characters"
        )
    return secret


def _pkcs11_settings(r: _Reader, raw: Mapping[str, Any], where: str) -> Pkcs11Settings | None:
    backend = raw.get("master_key_backend", "software")
    if backend == "software":
        return None
    if backend != "pkcs11":
        raise ConfigError(f'{where}: \'master_key_backend\' must be "software" or "pkcs11"')
    return Pkcs11Settings(
        module=r.path("pkcs11_module"),
        token_label=r.string("pkcs11_token_label"),
        key_label=r.string("pkcs11_key_label"),
        pin_file=r.optional_path("pkcs11_pin_file"),
    )


def is_host_port(value: str) -> bool:
    """``host:port`` with a host and a port in 1..65535 (no lookup: that happens at use)."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536)


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})  # noqa: S104 (compared, not bound)


class _Reader:
    """Typed access to one TOML table with errors that name the key."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self._raw = raw
        self._where = where

    def _get(self, key: str) -> Any:
        if key not in self._raw:
            raise ConfigError(f"{self._where}: missing key {key!r}")
        return self._raw[key]

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self._where}: {key!r} must be a non-empty string")
        return value

    def address(self, key: str) -> str:
        value = self.string(key)
        if not is_host_port(value):
            raise ConfigError(f"{self._where}: {key!r} must be host:port, got {value!r}")
        return value

    def link_key(self, key: str) -> str:
        """A link public key (64 hex digits of an X25519 public key), in lower case."""
        try:
            raw = bytes.fromhex(self.string(key).strip())
            if len(raw) != LINK_PUBLIC_KEY_BYTES:
                raise ValueError
            X25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ConfigError(
                f"{self._where}: {key!r}: a link public key must be 64 hex digits"
            ) from None
        return raw.hex()

    def optional_address(self, key: str) -> str:
        """``host:port`` if the key is present, else "" (the caller's default applies)."""
        return self.address(key) if key in self._raw else ""

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        """One of ``allowed`` if the key is present, else ""."""
        value = self._raw.get(key, "")
        if value != "" and value not in allowed:
            raise ConfigError(f"{self._where}: {key!r} must be one of {', '.join(allowed)}")
        return str(value)

    def path(self, key: str) -> Path:
        return Path(self.string(key))

    def optional_path(self, key: str) -> Path | None:
        return self.path(key) if self._raw.get(key) not in (None, "") else None

    def integer(self, key: str, low: int, high: int, *, default: int | None = None) -> int:
        value: object = self._raw.get(key, default) if default is not None else self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self._where}: {key!r} must be an integer in {low}..{high}")
        return value

    def number(self, key: str, low: float, high: float, *, default: float) -> float:
        value = self._raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where}: {key!r} must be a number")
        if not low <= value <= high:
            raise ConfigError(f"{self._where}: {key!r} must be in {low}..{high}")
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where}: {key!r} must be true or false")
        return value
