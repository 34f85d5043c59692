"""Client configuration: which vault fleet to trust and which ChatD front ends to reach.

``client.toml`` (written by ``bkv cluster up`` for local clusters)::

    fleet_public_key = "<64 hex>"   # HPKE X25519 key of the fleet; the client pins it
    shard_count = 1                 # must match the vault's shard map
    chatd = ["127.0.0.1:7001", "127.0.0.1:7002"]
    deadline_seconds = 15           # per vault round trip, across every ChatD tried
    token_signing_key_file = "/abs/secrets/token-signing.key"
    # token = "..."                 # alternative to token_signing_key_file
    ca_file = "/abs/tls/ca.pem"     # set: TLS to ChatD, whose certificate must chain to it
    tls_server_name = "chatd.bkv.internal"  # optional: the name checked instead of the host

Account tokens: local/dev clusters give the client the Ed25519 token signing
key (``token_signing_key_file``), and the SDK mints a short-lived token per
account itself. A real deployment never hands that key out: the device gets a
token for its single account from the messaging service and puts it in
``token``. When both are set the signing key wins.

Loading is strict: unknown keys, wrong types and out-of-range values are
refused with a one-line :class:`~client_sdk.errors.ConfigError` naming the file
and the key, so a typo can't silently send requests to the wrong fleet.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bkv_ops.tls import ClientTls
from client_sdk.errors import ConfigError

FLEET_KEY_BYTES = 32
DEFAULT_SHARD_COUNT = 1
DEFAULT_DEADLINE_SECONDS = 15.0
MAX_DEADLINE_SECONDS = 600.0
MAX_SHARD_COUNT = 4096
_KNOWN_KEYS = frozenset(
    {
        "fleet_public_key",
        "shard_count",
        "chatd",
        "deadline_seconds",
        "token_signing_key_file",
        "token",
        "ca_file",
        "tls_server_name",
    }
)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def default_state_dir() -> Path:
    """``$BKV_STATE_DIR``, else ``$XDG_STATE_HOME/bkv/local-cluster`` (used by ``bkv cluster``).

    ``XDG_STATE_HOME`` defaults to ``~/.local/state``; like the XDG spec says, an
    empty or relative value is ignored.
    """
    env = os.environ.get("BKV_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "bkv" / "local-cluster"


def default_client_config_path() -> Path:
    """The ``client.toml`` of the default local cluster."""
    return default_state_dir() / "client.toml"


@dataclass(frozen=True)
class ClientConfig:
    """Everything the vault client needs; ``token`` is kept out of the repr."""

    fleet_public_key: bytes
    shard_count: int
    chatd: list[str]
    deadline_seconds: float
    token_signing_key_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    tls_server_name: str | None = None

    @property
    def tls(self) -> ClientTls | None:
        """TLS settings for the ChatD channels; None (plaintext) when no ``ca_file`` is set."""
        if self.ca_file is None:
            return None
        return ClientTls(self.ca_file, server_name=self.tls_server_name)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def load(cls, path: Path | str) -> ClientConfig:
        """Read and validate a ``client.toml``; every problem is a one-line ConfigError."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"client config {path}: no such file") from None
        except OSError as err:
            raise ConfigError(f"client config {path}: can't read it ({err.strerror})") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"client config {path}: not valid TOML ({err})") from None
        return cls.from_mapping(data, source=path)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: Path | None = None) -> ClientConfig:
        """Build from parsed TOML; relative file paths are taken relative to ``source``'s folder."""
        where = f"client config {source}" if source is not None else "client config"
        try:
            return cls._from_mapping(data, source)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def _from_mapping(cls, data: dict[str, Any], source: Path | None) -> ClientConfig:
        unknown = sorted(set(data) - _KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}")
        for key in ("fleet_public_key", "chatd"):
            if key not in data:
                raise ConfigError(f"missing {key}")
        fleet_hex = data["fleet_public_key"]
        if not isinstance(fleet_hex, str):
            raise ConfigError("fleet_public_key must be 64 hex digits")
        shard_count = data.get("shard_count", DEFAULT_SHARD_COUNT)
        deadline = data.get("deadline_seconds", DEFAULT_DEADLINE_SECONDS)
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise ConfigError("deadline_seconds must be a number of seconds")
        key_file = _file_path(data, "token_signing_key_file", source)
        ca_file = _file_path(data, "ca_file", source)
        return cls(
            ca_file=ca_file,
            tls_server_name=data.get("tls_server_name"),
            fleet_public_key=_parse_fleet_key(fleet_hex),
            shard_count=shard_count,
            chatd=data["chatd"],
            deadline_seconds=float(deadline),
            token_signing_key_file=key_file,
            token=data.get("token"),
        )

    def to_toml(self) -> str:
        """Serialise in the ``client.toml`` format (round-trips through :meth:`load`)."""
        data: dict[str, Any] = {
            "fleet_public_key": self.fleet_public_key.hex(),
            "shard_count": self.shard_count,
            "chatd": list(self.chatd),
            "deadline_seconds": self.deadline_seconds,
        }
        if self.token_signing_key_file is not None:
            data["token_signing_key_file"] = str(self.token_signing_key_file)
        if self.token is not None:
            data["token"] = self.token
        if self.ca_file is not None:
            data["ca_file"] = str(self.ca_file)
        if self.tls_server_name is not None:
            data["tls_server_name"] = self.tls_server_name
        return tomli_w.dumps(data)

    def save(self, path: Path | str) -> None:
        """Write atomically, owner-only (a ``token`` is a bearer credential)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.to_toml())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _parse_fleet_key(text: str) -> bytes:
    if len(text) != 2 * FLEET_KEY_BYTES or not set(text) <= _HEX_DIGITS:
        raise ConfigError("fleet_public_key must be 64 hex digits")
    return bytes.fromhex(text)


def _file_path(data: dict[str, Any], key: str, source: Path | None) -> Path | None:
    """The file named by ``key`` (None if absent); relative to ``source``'s folder if given."""
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a file path")
    path = Path(value).expanduser()
    return source.parent / path if not path.is_absolute() and source is not None else path


def _validate(cfg: ClientConfig) -> None:
    """Checks shared by TOML loading and direct construction (messages name the key)."""
    if not isinstance(cfg.fleet_public_key, bytes) or len(cfg.fleet_public_key) != FLEET_KEY_BYTES:
        raise ConfigError("fleet_public_key must be 32 bytes (64 hex digits)")
    shards = cfg.shard_count
    if (
        isinstance(shards, bool)
        or not isinstance(shards, int)
        or not 1 <= shards <= MAX_SHARD_COUNT
    ):
        raise ConfigError(f"shard_count must be an integer from 1 to {MAX_SHARD_COUNT}")
    if not isinstance(cfg.chatd, list) or not cfg.chatd:
        raise ConfigError('chatd must be a non-empty list of "host:port" addresses')
    for address in cfg.chatd:
        _check_address(address)
    deadline = cfg.deadline_seconds
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise ConfigError("deadline_seconds must be a number of seconds")
    if not 0 < deadline <= MAX_DEADLINE_SECONDS:
        raise ConfigError(f"deadline_seconds must be above 0 and at most {MAX_DEADLINE_SECONDS:g}")
    token = cfg.token
    if token is not None and (
        not isinstance(token, str) or not token or not token.isascii() or not token.isprintable()
    ):
        raise ConfigError("token must be a non-empty printable ASCII string")
    name = cfg.tls_server_name
    if name is not None and (
        not isinstance(name, str) or not name or not name.isascii() or not name.isprintable()
        or any(ch.isspace() or ch in "/:" for ch in name)
    ):
        raise ConfigError("tls_server_name must be a host name")
    if name is not None and cfg.ca_file is None:
        raise ConfigError("tls_server_name needs ca_file")


def _check_address(address: object) -> None:
    if not isinstance(address, str):
        raise ConfigError('chatd addresses must be "host:port" strings')
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'chatd address {address!r} is not "host:port"')
    if any(ch.isspace() for ch in address):
        raise ConfigError(f"chatd address {address!r} contains whitespace")
