"""ChatD configuration (TOML), validated up front into one-line errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_BYTES = 32
MAX_SHARDS = 4096


class ConfigError(ValueError):
    """The ChatD configuration is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per account and per client address: sustained rate and burst size.

    The address defaults leave room for many users behind one NAT (a carrier or
    an office) while still capping one host's flood well below the vault's capacity.
    """

    per_account_per_second: float = 20.0
    burst: int = 40
    per_address_per_second: float = 500.0
    address_burst: int = 1000


@dataclass(frozen=True)
class ChatDConfig:
    """Where ChatD listens, whose tokens it trusts, and the shard map it routes by."""

    listen: str
    datacenter: str
    token_public_key: bytes
    shards: tuple[tuple[str, ...], ...]  # index = shard id, value = vault gRPC addresses
    deadline_seconds: float = 5.0
    rate_limit: RateLimitConfig = RateLimitConfig()
    metrics_address: str = ""  # Prometheus scrape endpoint (host:port); "" disables it
    status_address: str = ""  # read-only HTTP status page (host:port); "" disables it
    # other ChatDs' status_address: the page shows their request rates too
    peer_status_addresses: tuple[str, ...] = ()
    log_format: str = ""  # "json" | "text"; "" picks text on a terminal, json otherwise
    # TLS (all three or none): this certificate serves devices and is shown to vault
    # nodes (mutual TLS); vault nodes must present a vault-node certificate of tls_ca_file
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None

    @classmethod
    def load(cls, path: Path) -> ChatDConfig:
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config {path} is not valid TOML: {err}") from None
        try:
            return cls.from_mapping(raw)
        except ConfigError as err:
            raise ConfigError(f"config {path}: {err}") from None

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> ChatDConfig:
        known = {"listen", "datacenter", "token_public_key", "deadline_seconds", "rate_limit",
                 "shards", "metrics_address", "status_address", "peer_status_addresses",
                 "log_format",
                 "tls_cert_file", "tls_key_file", "tls_ca_file"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}")
        listen = _address(raw.get("listen"), "listen")
        datacenter = raw.get("datacenter")
        if not isinstance(datacenter, str) or not datacenter:
            raise ConfigError("datacenter must be a non-empty string")
        key_hex = raw.get("token_public_key")
        try:
            key = bytes.fromhex(key_hex) if isinstance(key_hex, str) else b""
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise ConfigError("token_public_key must be 64 hex digits")
        deadline = raw.get("deadline_seconds", 5.0)
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise ConfigError("deadline_seconds must be a number")
        if not 0 < deadline <= 600:
            raise ConfigError("deadline_seconds must be above 0 and at most 600")
        return cls(
            listen=listen,
            datacenter=datacenter,
            token_public_key=key,
            shards=_shards(raw.get("shards")),
            deadline_seconds=float(deadline),
            rate_limit=_rate_limit(raw.get("rate_limit", {})),
            metrics_address=_metrics_address(raw.get("metrics_address")),
            status_address=_optional_address(raw.get("status_address"), "status_address"),
            peer_status_addresses=_peer_addresses(raw.get("peer_status_addresses", [])),
            log_format=_log_format(raw.get("log_format", "")),
            **_tls_files(raw),
        )


def _peer_addresses(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise ConfigError("peer_status_addresses must be a list of host:port (at most 64)")
    return tuple(_address(a, "peer_status_addresses") for a in raw)


def _rate_limit(raw: object) -> RateLimitConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[rate_limit] must be a table")
    defaults = RateLimitConfig()
    unknown = sorted(set(raw) - {"per_account_per_second", "burst", "per_address_per_second",
                                 "address_burst"})
    if unknown:
        raise ConfigError(f"unknown key rate_limit.{unknown[0]}")
    rate = raw.get("per_account_per_second", defaults.per_account_per_second)
    burst = raw.get("burst", defaults.burst)
    address_rate = raw.get("per_address_per_second", defaults.per_address_per_second)
    address_burst = raw.get("address_burst", defaults.address_burst)
    for name, value in (("per_account_per_second", rate),
                        ("per_address_per_second", address_rate)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"rate_limit.{name} must be a positive number")
    for name, value in (("burst", burst), ("address_burst", address_burst)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"rate_limit.{name} must be a positive integer")
    return RateLimitConfig(
        per_account_per_second=float(rate),
        burst=burst,
        per_address_per_second=float(address_rate),
        address_burst=address_burst,
    )


def _shards(raw: object) -> tuple[tuple[str, ...], ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("at least one [[shards]] table is required")
    if len(raw) > MAX_SHARDS:
        raise ConfigError(f"at most {MAX_SHARDS} shards")
    by_id: dict[int, tuple[str, ...]] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            raise ConfigError("each [[shards]] entry must be a table")
        shard_id = entry.get("id")
        if isinstance(shard_id, bool) or not isinstance(shard_id, int):
            raise ConfigError("shards.id must be an integer")
        if shard_id in by_id:
            raise ConfigError(f"shard {shard_id} is listed twice")
        nodes = entry.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise ConfigError(f"shard {shard_id}: nodes must be a non-empty list")
        by_id[shard_id] = tuple(_address(n, f"shard {shard_id} node") for n in nodes)
    if sorted(by_id) != list(range(len(by_id))):
        raise ConfigError("shard ids must be 0, 1, ... without gaps")
    return tuple(by_id[i] for i in range(len(by_id)))


def _metrics_address(value: object) -> str:
    address = _optional_address(value, "metrics_address")
    if address.endswith(":0"):
        raise ConfigError("metrics_address needs a fixed port (scrapers must find it)")
    return address


def _tls_files(raw: dict[str, Any]) -> dict[str, Path | None]:
    keys = ("tls_cert_file", "tls_key_file", "tls_ca_file")
    files: dict[str, Path | None] = {}
    for key in keys:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{key} must be a file path")
        files[key] = Path(value) if value else None
    if any(files.values()) and not all(files.values()):
        raise ConfigError("tls_cert_file, tls_key_file and tls_ca_file go together")
    return files


def _optional_address(value: object, what: str) -> str:
    return "" if value is None else _address(value, what)


def _log_format(value: object) -> str:
    if value not in ("", "json", "text"):
        raise ConfigError('log_format must be "json" or "text"')
    return str(value)


def _address(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'{what} must be a "host:port" string')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f'{what} {value!r} is not "host:port"')
    return value
