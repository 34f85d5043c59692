"""Anti-rollback: a monotonic high-water mark of the replicated state, kept by the HSM.

A vault node's disk holds its Raft journal and snapshots, and with them every
deposit's failed-attempt counter. Someone who can put an *older* copy of that disk
back (a backup, a VM snapshot, an old sealed snapshot file) would give every deposit
back the guesses it spent since. The high-water mark defends against that: the
node's HSM module remembers the furthest :class:`LogPosition` the node has attested,
and :meth:`HighWaterMark.check` refuses any state or snapshot older than that. The
mark only goes up (:meth:`HighWaterMark.attest`); the single way down is an
operator's explicit :meth:`HighWaterMark.accept_rollback`.

Positions order as ``(epoch, index)``: the epoch is the shard's identity generation
(a shard rebuilt from a snapshot gets epoch + 1, so its fresh log, whose indices
start low again, still ranks above everything before it), the index is the Raft log
index the node holds.

Two stores, one semantics (the :class:`HighWaterMark` base class):

* :class:`SoftwareHighWater` -- a 56-byte file next to the software master key file
  (never in the node's data directory), MAC'd under a key derived from the master
  key with HKDF and bound to the node, replaced atomically (write, fsync, rename,
  directory fsync). An edited, truncated or swapped-in file is refused with
  :class:`HighWaterDamaged`. **It cannot protect against a rollback of the disk the
  key lives on**: whoever can copy back the whole old key directory (key and mark
  together) rolls the mark back with it, and deleting the file resets it. Only a
  store outside the node's disks -- a real HSM -- closes that gap.
* :class:`Pkcs11HighWater` -- a private token object (``CKO_DATA``, label
  ``bkv-high-water``, ``CKA_APPLICATION`` naming the node) inside the PKCS#11 token
  that holds the master key. Reading or changing it needs a logged-in session, so a
  disk rollback of the node leaves it where it was. The token has no compare-and-set,
  so the rule "never lower" is enforced by this code under a lock: one writer (the
  node) per mark.

Both also refuse a store that went back while this object was using it (a file
copied back, a token object removed, under a running node).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault_node.hsm.errors import HsmError

POSITION_MAX = 2**63 - 1
MARK_OBJECT_LABEL = "bkv-high-water"
MAC_KEY_INFO = b"bkv high-water mark mac key v1"
MAC_KEY_BYTES = 32
_FILE_MAGIC = b"BKVHWM\x00\x01"
_TOKEN_MAGIC = b"BKVHWT\x00\x01"
_MAC_LABEL = b"bkv high-water mark v1\x00"
_BODY = struct.Struct(">QQ")
_MAC_BYTES = 32
FILE_BYTES = len(_FILE_MAGIC) + _BODY.size + _MAC_BYTES
TOKEN_VALUE_BYTES = len(_TOKEN_MAGIC) + _BODY.size
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True, order=True)
class LogPosition:
    """Where a replicated state stands; later positions compare greater.

    ``epoch``: the shard's identity generation (a shard rebuilt from a snapshot
    gets epoch + 1). ``index``: the Raft log index applied or held. Both in
    0..2**63-1.
    """

    epoch: int
    index: int

    def __post_init__(self) -> None:
        for name in ("epoch", "index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"LogPosition.{name} must be an int")
            if not 0 <= value <= POSITION_MAX:
                raise ValueError(f"LogPosition.{name} must be in 0..2**63-1")

    def __str__(self) -> str:
        return f"epoch {self.epoch}, index {self.index}"

    def to_plain(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def encode(self) -> bytes:
        return _BODY.pack(self.epoch, self.index)

    @classmethod
    def decode(cls, body: bytes) -> LogPosition:
        """Reverse :meth:`encode`; ValueError if the bytes are not a position."""
        if len(body) != _BODY.size:
            raise ValueError("a log position is 16 bytes")
        epoch, index = _BODY.unpack(body)
        return cls(epoch, index)


class RollbackRefused(HsmError):
    """A state or snapshot older than what this node's HSM already attested."""

    def __init__(self, attested: LogPosition, offered: LogPosition) -> None:
        super().__init__(
            f"refusing a state at {offered}: this node's HSM already attested {attested}, "
            "so it is older than what the node has held (a rolled-back disk or an old "
            "snapshot); only an operator's explicit accept-rollback lowers the mark"
        )
        self.attested = attested
        self.offered = offered


class HighWaterDamaged(HsmError):
    """The stored mark does not verify, is malformed, or went back under a running node."""


def node_scope(shard: int, node_id: str) -> str:
    """The name of one node's mark: a node's HSM may hold the marks of several nodes."""
    return f"shard-{shard}.{node_id}"


def file_label(scope: str) -> str:
    """A file-name-safe label for ``scope``: itself when plain, else a hash of it."""
    if _PLAIN_LABEL.fullmatch(scope):
        return scope
    return "h" + hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]


def _check_position(position: object) -> LogPosition:
    if not isinstance(position, LogPosition):
        raise TypeError("a high-water mark takes a LogPosition")
    return position


class HighWaterMark:
    """The semantics every store shares; a backend supplies ``_read``, ``_write``, ``_guard``.

    ``where`` names the store for messages (a file path, a token label): no secret.
    Thread-safe; cross-process exclusion is the backend's ``_guard``.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._seen: LogPosition | None = None

    def current(self) -> LogPosition | None:
        """The furthest position attested so far, or None if nothing was ever attested."""
        with self._lock, self._guard(write=False):
            return self._read_checked()

    def check(self, position: LogPosition) -> None:
        """Raise :class:`RollbackRefused` if ``position`` is older than the mark."""
        offered = _check_position(position)
        attested = self.current()
        if attested is not None and offered < attested:
            raise RollbackRefused(attested, offered)

    def attest(self, position: LogPosition) -> None:
        """Raise the mark to ``position`` if that is further; durable before it returns.

        An older or equal position leaves the mark as it is (never an error: a node
        may attest a position it reached before).
        """
        target = _check_position(position)
        with self._lock, self._guard(write=True):
            attested = self._read_checked()
            if attested is not None and target <= attested:
                return
            self._write(target)
            self._confirm(target)

    def accept_rollback(self, position: LogPosition) -> LogPosition | None:
        """The operator's override: set the mark to ``position``, even if lower.

        Returns the mark it replaced (None if there was none). A damaged store is
        still refused: the operator resets it by hand (see the backend).
        """
        target = _check_position(position)
        with self._lock, self._guard(write=True):
            previous = self._read()
            self._write(target)
            self._confirm(target)
            return previous

    def _read_checked(self) -> LogPosition | None:
        stored = self._read()
        seen = self._seen
        if seen is not None and (stored is None or stored < seen):
            now = "gone" if stored is None else f"at {stored}"
            raise HighWaterDamaged(
                f"high-water mark in {self.where} went back while in use: it was at "
                f"{seen} and is {now}"
            )
        self._seen = stored
        return stored

    def _confirm(self, position: LogPosition) -> None:
        stored = self._read()
        if stored != position:
            raise HsmError(f"high-water mark in {self.where} did not keep {position}")
        self._seen = stored

    # -- provided by a backend --------------------------------------------------

    def _read(self) -> LogPosition | None:
        raise NotImplementedError

    def _write(self, position: LogPosition) -> None:
        raise NotImplementedError

    def _guard(self, *, write: bool) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


class SoftwareHighWater(HighWaterMark):
    """The software HSM's mark: a MAC'd file, replaced atomically, beside the master key.

    The file is ``magic || epoch (u64) || index (u64) || HMAC-SHA-256``, the MAC keyed
    by HKDF-SHA-256(master key, info ``bkv high-water mark mac key v1``) over the
    node's scope and the body: an edited or truncated file, one from another node or
    one under another master key is refused (:class:`HighWaterDamaged`). A write goes
    to a temporary file in the same directory, is fsynced, renamed over the mark and
    the directory fsynced, so after a crash the file is the old mark or the new one.
    Writers of the directory's marks exclude each other with ``flock`` on it.

    It cannot stop a rollback of the disk it lives on: copying back the whole old
    key directory restores the old mark along with the key, and deleting the file
    resets the mark to "none". (That is also the manual reset of a damaged file.)
    Only a real HSM, whose storage is not the node's disk, prevents that.
    """

    def __init__(self, path: Path, mac_key: bytes, scope: str) -> None:
        if len(mac_key) != MAC_KEY_BYTES:
            raise HsmError(f"high-water MAC key must be {MAC_KEY_BYTES} bytes")
        super().__init__(f"file {path}")
        self.path = path
        self._mac_key = mac_key
        self._scope = scope.encode("utf-8")

    def __repr__(self) -> str:
        return f"SoftwareHighWater(path={str(self.path)!r})"

    def _mac(self, body: bytes) -> bytes:
        message = _MAC_LABEL + struct.pack(">H", len(self._scope)) + self._scope + body
        return hmac.new(self._mac_key, _FILE_MAGIC + message, hashlib.sha256).digest()

    def _read(self) -> LogPosition | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise HsmError(f"cannot read high-water file {self.path}: {err.strerror}") from None
        if len(blob) != FILE_BYTES or not blob.startswith(_FILE_MAGIC):
            raise HighWaterDamaged(
                f"high-water file {self.path} is truncated or not a high-water file"
            )
        body = blob[len(_FILE_MAGIC) : len(_FILE_MAGIC) + _BODY.size]
        if not hmac.compare_digest(blob[-_MAC_BYTES:], self._mac(body)):
            raise HighWaterDamaged(
                f"high-water file {self.path} does not verify: edited, or written for "
                "another node or under another master key"
            )
        try:
            return LogPosition.decode(body)
        except ValueError:
            raise HighWaterDamaged(f"high-water file {self.path} is malformed") from None

    def _write(self, position: LogPosition) -> None:
        body = position.encode()
        blob = _FILE_MAGIC + body + self._mac(body)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as err:
            raise HsmError(f"cannot write high-water file {self.path}: {err.strerror}") from None

    @contextlib.contextmanager
    def _guard(self, *, write: bool) -> Iterator[None]:
        folder = self.path.parent
        fd: int | None = None
        try:
            if write:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if write:
                raise HsmError(f"cannot create high-water folder {folder}") from None
        except OSError as err:
            raise HsmError(f"cannot open high-water folder {folder}: {err.strerror}") from None
        if fd is None:
            yield  # nothing was ever written there: the read finds no mark
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _p11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise HsmError(
            "the PKCS#11 backend needs python-pkcs11: pip install 'backup-key-vault[pkcs11]'"
        ) from None
    return pkcs11


class Pkcs11HighWater(HighWaterMark):
    """The mark as a private data object inside the PKCS#11 token of the master key.

    ``open_session`` yields a logged-in read/write session of that token (the master
    key backend provides it, see ``Pkcs11MasterKey.high_water``). The object is
    ``CKO_DATA``, ``CKA_TOKEN`` and ``CKA_PRIVATE`` (invisible and unchangeable
    without the PIN), labelled :data:`MARK_OBJECT_LABEL`, with the node's scope as
    ``CKA_APPLICATION`` and ``magic || epoch (u64) || index (u64)`` as ``CKA_VALUE``.
    Public objects with the same label are ignored, so nobody without the PIN can
    plant a mark. To reset a damaged mark, destroy the object with the token's tools.

    Tokens need not let a data object's value change (SoftHSM2 does not), so a write
    creates the new object and then destroys the old one, and a read takes the
    highest of the objects it finds: a crash between the two steps leaves the old
    mark (a lowering by accept-rollback, to be run again) or the new one (a raise).
    """

    def __init__(
        self,
        open_session: Callable[[], AbstractContextManager[Any]],
        scope: str,
        token_label: str,
    ) -> None:
        super().__init__(f"PKCS#11 token {token_label!r}")
        self._open_session = open_session
        self._scope = scope
        self._session: Any = None

    def __repr__(self) -> str:
        return f"Pkcs11HighWater({self.where}, scope={self._scope!r})"

    @contextlib.contextmanager
    def _guard(self, *, write: bool) -> Iterator[None]:
        with self._open_session() as session:
            self._session = session
            try:
                yield
            finally:
                self._session = None

    def _template(self) -> dict[Any, Any]:
        p11 = _p11()
        return {
            p11.Attribute.CLASS: p11.ObjectClass.DATA,
            p11.Attribute.TOKEN: True,
            p11.Attribute.PRIVATE: True,
            p11.Attribute.LABEL: MARK_OBJECT_LABEL,
            p11.Attribute.APPLICATION: self._scope,
        }

    def _find(self) -> list[Any]:
        p11 = _p11()
        try:
            return list(self._session.get_objects(self._template()))
        except p11.PKCS11Error as err:
            raise HsmError(f"PKCS#11 high-water lookup failed ({type(err).__name__})") from None

    def _value(self, obj: Any) -> LogPosition:
        p11 = _p11()
        try:
            value = bytes(obj[p11.Attribute.VALUE])
        except p11.PKCS11Error as err:
            raise HsmError(f"PKCS#11 high-water read failed ({type(err).__name__})") from None
        if len(value) != TOKEN_VALUE_BYTES or not value.startswith(_TOKEN_MAGIC):
            raise HighWaterDamaged(f"the high-water object in {self.where} is malformed")
        try:
            return LogPosition.decode(value[len(_TOKEN_MAGIC) :])
        except ValueError:
            raise HighWaterDamaged(
                f"the high-water object in {self.where} is malformed"
            ) from None

    def _read(self) -> LogPosition | None:
        # Several objects exist only between a write's two steps (or after a crash
        # there): the highest one is the mark, so a crash leaves the old or the new.
        return max((self._value(obj) for obj in self._find()), default=None)

    def _write(self, position: LogPosition) -> None:
        p11 = _p11()
        old = self._find()
        attrs = self._template()
        attrs[p11.Attribute.VALUE] = _TOKEN_MAGIC + position.encode()
        try:
            self._session.create_object(attrs)
            for obj in old:
                obj.destroy()
        except p11.PKCS11Error as err:
            raise HsmError(f"PKCS#11 high-water update failed ({type(err).__name__})") from None


__all__ = [
    "FILE_BYTES",
    "MAC_KEY_INFO",
    "MARK_OBJECT_LABEL",
    "HighWaterDamaged",
    "HighWaterMark",
    "LogPosition",
    "Pkcs11HighWater",
    "RollbackRefused",
    "SoftwareHighWater",
    "file_label",
    "node_scope",
]
