"""The Raft link's cryptography: per-member keys, a handshake per connection, sealed frames.

Invariant 5 asks that each member has its own credentials and that removing a
member revokes them. A shared secret alone cannot do that (the removed member
still knows it), so every member also holds its own X25519 *link key*; its
public half is part of the member's description (``[[peers]]`` and the
membership entries), so the group's log says which keys may speak.

A connection starts with a handshake, then carries sealed frames:

* ``HELLO`` (initiator): its public key and 32 random bytes, with an HMAC under
  a key derived from the shared transport secret. The secret stays an outer
  layer: a stranger is dropped before any key agreement is computed.
* The responder refuses a key that is not a current member's, then answers with
  its own public key, 32 random bytes and a confirmation tag.
* Both derive two direction keys from the static-static X25519 result, the
  transport secret, and both random values (``HKDF-SHA256``). Fresh random
  values on both sides make every connection's keys new, so frame counters can
  start at 1 without a nonce ever repeating, however many processes use one
  link key (a node and an operator's admin command, say).
* Data frames: ``kind | counter(8) | ChaCha20-Poly1305(ciphertext)``, the header
  as associated data. One AEAD call per frame; the counter must be exactly
  one more than the last (explicit check, not an ``assert``), so a replayed,
  dropped or reordered frame ends the connection.

The module is pure (no sockets): ``vault_node.raft.pysyncobj_edge`` drives it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault_node.config import LINK_KEY_ENV, ConfigError, NodeConfig

KEY_BYTES = 32
RANDOM_BYTES = 32
TAG_BYTES = 32
HELLO = 0x01
ANSWER = 0x02
DATA = 0x03
HANDSHAKE_FRAME_BYTES = 1 + KEY_BYTES + RANDOM_BYTES + TAG_BYTES
_COUNTER = struct.Struct(">Q")
DATA_OVERHEAD = 1 + _COUNTER.size + 16
_HELLO_INFO = b"bkv raft link v2 hello"
_KEYS_INFO = b"bkv raft link v2 keys"
_CONFIRM = b"bkv raft link v2 responder"


class LinkError(ValueError):
    """A frame or handshake refused: the connection must be dropped. Carries no secret."""


def parse_public_key(text: str) -> bytes:
    """A link public key from its 64 hex digits; LinkError if malformed."""
    try:
        raw = bytes.fromhex(text.strip())
    except (ValueError, AttributeError):
        raise LinkError("a link public key must be 64 hex digits") from None
    if len(raw) != KEY_BYTES:
        raise LinkError("a link public key must be 64 hex digits")
    X25519PublicKey.from_public_bytes(raw)
    return raw


class LinkKey:
    """One member's X25519 link key; only its public half ever leaves the process."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> LinkKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_hex(cls, text: str) -> LinkKey:
        """From the 64 hex digits of a key file; LinkError (no detail) if malformed."""
        try:
            raw = bytes.fromhex(text.strip())
            if len(raw) != KEY_BYTES:
                raise ValueError
            return cls(X25519PrivateKey.from_private_bytes(raw))
        except ValueError:
            raise LinkError("a link key must be 64 hex digits") from None

    def private_hex(self) -> str:
        """For writing the key file (0600) only."""
        return self._private.private_bytes_raw().hex()

    @property
    def public_hex(self) -> str:
        return self.public.hex()

    def agree(self, peer_public: bytes) -> bytes:
        """Static-static X25519; LinkError for a low-order peer key (all-zero result)."""
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise LinkError("unusable peer link key") from None

    def __repr__(self) -> str:
        return f"LinkKey(public={self.public_hex[:16]}...)"


@dataclass(frozen=True)
class LinkSecrets:
    """What a process needs to speak on the Raft link: the shared secret and its own link key."""

    transport_secret: bytes
    key: LinkKey

    def __repr__(self) -> str:
        return f"LinkSecrets(key={self.key!r})"

    def hello_tag(self, body: bytes) -> bytes:
        hello_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                         info=_HELLO_INFO).derive(self.transport_secret)
        return hmac.new(hello_key, body, hashlib.sha256).digest()


class LinkSession:
    """The sealed frames of one established connection (one key and one counter per direction)."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._receive = ChaCha20Poly1305(receive_key)
        self._sent = 0
        self._received = 0

    def __repr__(self) -> str:
        return "LinkSession()"

    def seal(self, plaintext: bytes) -> bytes:
        self._sent += 1
        header = bytes([DATA]) + _COUNTER.pack(self._sent)
        return header + self._send.encrypt(bytes(4) + header[1:], plaintext, header)

    def open(self, frame: bytes) -> bytes:
        """The plaintext of the next frame; LinkError if forged, replayed, reordered or cut."""
        if len(frame) < DATA_OVERHEAD or frame[0] != DATA:
            raise LinkError("not a data frame")
        counter: int = _COUNTER.unpack_from(frame, 1)[0]
        if counter != self._received + 1:
            raise LinkError("frame out of sequence (replayed or reordered)")
        header = bytes(frame[: 1 + _COUNTER.size])
        try:
            plaintext = self._receive.decrypt(bytes(4) + header[1:], bytes(frame[len(header):]),
                                              header)
        except InvalidTag:
            raise LinkError("frame failed authentication") from None
        self._received = counter
        return plaintext


def _derive(secrets: LinkSecrets, shared: bytes, transcript: bytes) -> tuple[bytes, bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=hashlib.sha256(transcript).digest(),
               info=_KEYS_INFO).derive(shared + secrets.transport_secret)
    return okm[:32], okm[32:64], okm[64:]


@dataclass
class Initiator:
    """The dialling side's handshake state between its HELLO and the answer."""

    secrets: LinkSecrets
    expected_peer: bytes
    hello: bytes

    @classmethod
    def start(cls, secrets: LinkSecrets, expected_peer: bytes) -> Initiator:
        body = bytes([HELLO]) + secrets.key.public + os.urandom(RANDOM_BYTES)
        return cls(secrets, expected_peer, body + secrets.hello_tag(body))

    def finish(self, answer: bytes) -> LinkSession:
        """Check the responder is the member we dialled and holds its key; the session."""
        if len(answer) != HANDSHAKE_FRAME_BYTES or answer[0] != ANSWER:
            raise LinkError("not a handshake answer")
        peer = bytes(answer[1 : 1 + KEY_BYTES])
        if not hmac.compare_digest(peer, self.expected_peer):
            raise LinkError("the node answered with another link key")
        shared = self.secrets.key.agree(peer)
        to_peer, from_peer, confirm = _derive(self.secrets, shared,
                                              self.hello + answer[: -TAG_BYTES])
        tag = hmac.new(confirm, _CONFIRM, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, bytes(answer[-TAG_BYTES:])):
            raise LinkError("handshake answer failed authentication")
        return LinkSession(to_peer, from_peer)


def respond(
    secrets: LinkSecrets, hello: bytes, is_member: Callable[[bytes], bool]
) -> tuple[bytes, bytes, LinkSession]:
    """Answer a HELLO: (answer frame, the peer's public key, session); LinkError if refused.

    ``is_member(public_key) -> bool`` says whether the key belongs to a current member;
    it runs before the key agreement, so a revoked key costs one set lookup.
    """
    if len(hello) != HANDSHAKE_FRAME_BYTES or hello[0] != HELLO:
        raise LinkError("not a handshake hello")
    body, tag = bytes(hello[:-TAG_BYTES]), bytes(hello[-TAG_BYTES:])
    if not hmac.compare_digest(secrets.hello_tag(body), tag):
        raise LinkError("hello failed the transport secret check")
    peer = body[1 : 1 + KEY_BYTES]
    if not is_member(peer):
        raise LinkError("link key is not a current member's")
    shared = secrets.key.agree(peer)
    answer_body = bytes([ANSWER]) + secrets.key.public + os.urandom(RANDOM_BYTES)
    from_peer, to_peer, confirm = _derive(secrets, shared, bytes(hello) + answer_body)
    answer = answer_body + hmac.new(confirm, _CONFIRM, hashlib.sha256).digest()
    return answer, peer, LinkSession(to_peer, from_peer)


def load_link_key(cfg: NodeConfig, env: Mapping[str, str] | None = None) -> LinkKey:
    """``$BKV_LINK_KEY`` if set, else ``link_key_file``; ConfigError if neither or malformed.

    The file must not be readable by group or others (like every key file).
    """
    environ = os.environ if env is None else env
    value = environ.get(LINK_KEY_ENV, "").strip()
    if not value and cfg.link_key_file is not None:
        try:
            if cfg.link_key_file.stat().st_mode & 0o077:
                raise ConfigError(f"link key file {cfg.link_key_file} must be 0600")
            value = cfg.link_key_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"cannot read link key file {cfg.link_key_file}") from None
    if not value:
        raise ConfigError(
            f"no Raft link key: set link_key_file or {LINK_KEY_ENV} "
            "(make one with `bkv-vault-node link-key new`)"
        )
    try:
        return LinkKey.from_hex(value)
    except LinkError as err:
        raise ConfigError(str(err)) from None
