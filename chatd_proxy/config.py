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
    """Token bucket per account: sustained rate and burst size."""

    per_account_per_second: float = 20.0
    burst: int = 40


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
                 "shards", "metrics_address"}
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
        )


def _rate_limit(raw: object) -> RateLimitConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[rate_limit] must be a table")
    rate = raw.get("per_account_per_second", 20.0)
    burst = raw.get("burst", 40)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise ConfigError("rate_limit.per_account_per_second must be a positive number")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError("rate_limit.burst must be a positive integer")
    return RateLimitConfig(per_account_per_second=float(rate), burst=burst)


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
    if value is None:
        return ""
    address = _address(value, "metrics_address")
    if address.endswith(":0"):
        raise ConfigError("metrics_address needs a fixed port (scrapers must find it)")
    return address


def _address(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'{what} must be a "host:port" string')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f'{what} {value!r} is not "host:port"')
    return value
