"""A PKCS#11 master-key backend: the master key never leaves the token.

:class:`Pkcs11MasterKey` implements :class:`vault_node.hsm.fleet.MasterKeyBackend` with an
AES-256 key generated *inside* a PKCS#11 token (CKA_TOKEN, CKA_PRIVATE,
CKA_SENSITIVE, CKA_EXTRACTABLE=false, usable only to encrypt/decrypt). Sealing and
unsealing are token calls (CKM_AES_GCM, random 96-bit IV, the caller's AAD, 128-bit
tag), so the node process only ever holds a session handle, not key bytes.

Sealed blobs are ``0x02 || iv || ciphertext || tag``; the version byte differs from
the software backend's so a blob sealed by one backend is refused by the other with
a clear error instead of a failed tag. Random IVs are safe for far more seals than a
vault makes (the 2^32 bound per key is never approached by fleet + record seals).

Every node of a shard must reach the *same* key: records are sealed by the leader
and opened by whichever node leads next. With a hardware HSM that means the vendor's
cluster or key-cloning feature (the key moves only wrapped between HSMs); with
SoftHSM2 on one machine, the nodes share one token directory.

The token PIN comes from ``$BKV_PKCS11_PIN`` or a 0600 file: never argv, never logs.
The ``pkcs11`` import is deferred so the software backend works without the extra.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from vault_node.config import NodeConfig, Pkcs11Settings
from vault_node.hsm.fleet import HsmError, MasterKeyBackend, SoftwareMasterKey
from vault_node.hsm.high_water import HighWaterMark, Pkcs11HighWater, node_scope

if TYPE_CHECKING:
    import pkcs11

PIN_ENV = "BKV_PKCS11_PIN"
KEY_BITS = 256
_VERSION = b"\x02"
_IV_BYTES = 12
_TAG_BITS = 128
_TAG_BYTES = _TAG_BITS // 8


class _TokenKey(Protocol):
    """The two calls this backend makes on the token's key object."""

    def encrypt(self, data: bytes, *, mechanism: Any, mechanism_param: Any) -> bytes: ...

    def decrypt(self, data: bytes, *, mechanism: Any, mechanism_param: Any) -> bytes: ...


def _pkcs11() -> Any:
    """Import python-pkcs11 on first use, with an actionable error if it is missing."""
    try:
        import pkcs11
    except ImportError:
        raise HsmError(
            "the PKCS#11 backend needs python-pkcs11: pip install 'backup-key-vault[pkcs11]'"
        ) from None
    return pkcs11


def load_pin(pin_file: Path | None, env: Mapping[str, str] | None = None) -> str:
    """``$BKV_PKCS11_PIN`` if set, else the PIN file (which must not be group/other readable)."""
    environ = os.environ if env is None else env
    value = environ.get(PIN_ENV, "").strip()
    if value:
        return value
    if pin_file is None:
        raise HsmError(f"no PKCS#11 PIN: set {PIN_ENV} or pkcs11_pin_file")
    try:
        mode = stat.S_IMODE(pin_file.stat().st_mode)
    except OSError as err:
        raise HsmError(f"cannot read PKCS#11 PIN file {pin_file}: {err.strerror}") from None
    if mode & 0o077:
        raise HsmError(
            f"PKCS#11 PIN file {pin_file} is more open than 0600 (mode {mode:04o}); "
            f"run: chmod 600 {pin_file}"
        )
    try:
        value = pin_file.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise HsmError(f"cannot read PKCS#11 PIN file {pin_file}") from None
    if not value:
        raise HsmError(f"PKCS#11 PIN file {pin_file} is empty")
    return value


def _open_session(settings: Pkcs11Settings, pin: str, *, rw: bool) -> pkcs11.Session:
    """Load the module, find the token by label and log in; errors name what, never the PIN."""
    p11 = _pkcs11()
    try:
        library = p11.lib(str(settings.module))
    except p11.PKCS11Error:
        raise HsmError(f"cannot load PKCS#11 module {settings.module}") from None
    try:
        token = library.get_token(token_label=settings.token_label)
    except p11.exceptions.NoSuchToken:
        raise HsmError(f"no PKCS#11 token labelled {settings.token_label!r}") from None
    except p11.exceptions.MultipleTokensReturned:
        raise HsmError(f"several PKCS#11 tokens labelled {settings.token_label!r}") from None
    except p11.PKCS11Error as err:
        raise HsmError(f"PKCS#11 token lookup failed ({type(err).__name__})") from None
    try:
        session: pkcs11.Session = token.open(user_pin=pin, rw=rw)
    except p11.exceptions.UserAlreadyLoggedIn:
        # PKCS#11 login is per process: another live session of ours already logged in,
        # and a new session shares that state (the refused handle is reclaimed at exit).
        session = token.open(rw=rw)
    except (p11.exceptions.PinIncorrect, p11.exceptions.PinInvalid, p11.exceptions.PinLenRange):
        raise HsmError(f"PKCS#11 token {settings.token_label!r} rejected the PIN") from None
    except p11.exceptions.PinLocked:
        raise HsmError(f"PKCS#11 token {settings.token_label!r} has locked its PIN") from None
    except p11.PKCS11Error as err:
        raise HsmError(f"cannot log in to PKCS#11 token ({type(err).__name__})") from None
    return session


def _find_key(session: pkcs11.Session, key_label: str) -> _TokenKey | None:
    p11 = _pkcs11()
    found = list(
        session.get_objects(
            {
                p11.Attribute.CLASS: p11.ObjectClass.SECRET_KEY,
                p11.Attribute.LABEL: key_label,
            }
        )
    )
    if len(found) > 1:
        raise HsmError(f"several PKCS#11 keys labelled {key_label!r}")
    if not found:
        return None
    key = found[0]
    if key[p11.Attribute.KEY_TYPE] != p11.KeyType.AES or key[p11.Attribute.VALUE_LEN] != 32:
        raise HsmError(f"PKCS#11 key {key_label!r} is not an AES-256 key")
    if key[p11.Attribute.EXTRACTABLE] or not key[p11.Attribute.SENSITIVE]:
        raise HsmError(f"PKCS#11 key {key_label!r} is extractable; refusing to use it")
    return cast(_TokenKey, key)


class Pkcs11MasterKey:
    """The master key as a handle into a PKCS#11 token; one session, serialised calls.

    Its high-water mark (:meth:`high_water`) is a private data object in the same
    token, read and changed through short read/write sessions that share this
    session's login.
    """

    __slots__ = ("_key", "_key_label", "_lock", "_session", "token_label")

    def __init__(
        self, session: pkcs11.Session, key: _TokenKey, token_label: str, key_label: str
    ) -> None:
        self._session = session
        self._key = key
        self._key_label = key_label
        self._lock = threading.Lock()  # a PKCS#11 session runs one operation at a time
        self.token_label = token_label

    def __repr__(self) -> str:
        return f"Pkcs11MasterKey(token={self.token_label!r})"

    @classmethod
    def open_token(
        cls, settings: Pkcs11Settings, env: Mapping[str, str] | None = None
    ) -> Pkcs11MasterKey:
        """Log in to the configured token and bind to its master key (HsmError if absent)."""
        session = _open_session(settings, load_pin(settings.pin_file, env), rw=False)
        try:
            key = _find_key(session, settings.key_label)
        except BaseException:
            session.close()
            raise
        if key is None:
            session.close()
            raise HsmError(
                f"PKCS#11 token {settings.token_label!r} has no key labelled "
                f"{settings.key_label!r}; create it with `bkv-vault-node init-fleet --config`"
            )
        return cls(session, key, settings.token_label, settings.key_label)

    def close(self) -> None:
        """Log out by closing the session; the key stays in the token."""
        with self._lock:
            self._session.close()

    def high_water(self, scope: str) -> HighWaterMark:
        """This token's anti-rollback mark named ``scope`` (a private CKO_DATA object)."""
        return Pkcs11HighWater(self._mark_session, scope, self.token_label)

    @contextlib.contextmanager
    def _mark_session(self) -> Iterator[pkcs11.Session]:
        """A read/write session for the mark, logged in through this backend's session.

        PKCS#11 login is per application and token, so the new session is logged in
        while ours is. It must be: a session that is not would see no private object
        and report "no mark" instead of the real one, so it is checked first.
        """
        p11 = _pkcs11()
        try:
            session: pkcs11.Session = self._session.token.open(rw=True)
        except p11.PKCS11Error as err:
            raise HsmError(
                f"cannot open a read/write session on PKCS#11 token {self.token_label!r} "
                f"({type(err).__name__})"
            ) from None
        try:
            try:
                logged_in = _find_key(session, self._key_label) is not None
            except p11.PKCS11Error as err:
                raise HsmError(f"PKCS#11 key lookup failed ({type(err).__name__})") from None
            if not logged_in:
                raise HsmError(
                    f"PKCS#11 token {self.token_label!r}: the high-water session is not "
                    "logged in (was the master key backend closed?)"
                )
            yield session
        finally:
            session.close()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        p11 = _pkcs11()
        iv = secrets.token_bytes(_IV_BYTES)
        params = p11.GCMParams(iv, aad, _TAG_BITS)
        try:
            with self._lock:
                body = self._key.encrypt(
                    plaintext, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params
                )
        except p11.PKCS11Error as err:
            raise HsmError(f"PKCS#11 seal failed ({type(err).__name__})") from None
        return _VERSION + iv + body

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        p11 = _pkcs11()
        if len(sealed) < 1 + _IV_BYTES + _TAG_BYTES or sealed[:1] != _VERSION:
            raise HsmError("sealed blob is truncated or not sealed by a PKCS#11 master key")
        params = p11.GCMParams(sealed[1 : 1 + _IV_BYTES], aad, _TAG_BITS)
        try:
            with self._lock:
                plain = self._key.decrypt(
                    sealed[1 + _IV_BYTES :], mechanism=p11.Mechanism.AES_GCM, mechanism_param=params
                )
        except p11.PKCS11Error:
            # Tokens report a bad tag variously (SoftHSM2: CKR_GENERAL_ERROR); all mean "no".
            raise HsmError("sealed blob does not open with this master key") from None
        return plain


def create_token_key(settings: Pkcs11Settings, env: Mapping[str, str] | None = None) -> bool:
    """Generate the AES-256 master key inside the token; False if one with the label exists."""
    p11 = _pkcs11()
    with _open_session(settings, load_pin(settings.pin_file, env), rw=True) as session:
        if _find_key(session, settings.key_label) is not None:
            return False
        try:
            session.generate_key(
                p11.KeyType.AES,
                KEY_BITS,
                label=settings.key_label,
                store=True,
                capabilities=p11.MechanismFlag.ENCRYPT | p11.MechanismFlag.DECRYPT,
                template={
                    p11.Attribute.TOKEN: True,
                    p11.Attribute.PRIVATE: True,
                    p11.Attribute.SENSITIVE: True,
                    p11.Attribute.EXTRACTABLE: False,
                    p11.Attribute.WRAP: False,
                    p11.Attribute.UNWRAP: False,
                    p11.Attribute.DERIVE: False,
                    p11.Attribute.SIGN: False,
                    p11.Attribute.VERIFY: False,
                },
            )
        except p11.PKCS11Error as err:
            raise HsmError(f"PKCS#11 key generation failed ({type(err).__name__})") from None
    return True


def load_master_key(cfg: NodeConfig, env: Mapping[str, str] | None = None) -> MasterKeyBackend:
    """The backend the node config selects: ``software`` (default) or ``pkcs11``."""
    if cfg.pkcs11 is not None:
        return Pkcs11MasterKey.open_token(cfg.pkcs11, env)
    return SoftwareMasterKey.load(cfg.master_key_file, env, high_water_file=cfg.high_water_file)


def node_high_water(cfg: NodeConfig, backend: MasterKeyBackend) -> HighWaterMark:
    """This node's anti-rollback mark in ``backend`` (as :func:`load_master_key` built it).

    The software mark must not live in the node's data directory: a copy of that
    directory would then carry its own mark along.
    """
    scope = node_scope(cfg.shard, cfg.node_id)
    if isinstance(backend, SoftwareMasterKey):
        path = backend.high_water_path(scope)
        if _inside(path, cfg.data_dir):
            raise HsmError(
                f"high-water file {path} is inside the data directory {cfg.data_dir}; "
                "keep it next to the master key (or set high_water_file elsewhere)"
            )
    return backend.high_water(scope)


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop: judge the paths as written
        return path.absolute().is_relative_to(folder.absolute())


__all__ = [
    "PIN_ENV",
    "Pkcs11MasterKey",
    "create_token_key",
    "load_master_key",
    "load_pin",
    "node_high_water",
]
