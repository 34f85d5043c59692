"""The Raft transport's frame cipher: authenticated before anything is unpickled (invariant 5)."""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections import OrderedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class TransportCipher:
    """Frame encryptor for pysyncobj's TCP transport: ChaCha20-Poly1305 under the transport secret.

    Implements the three methods pysyncobj calls on its encryptor. Each process
    draws a random 16-byte sender id and encrypts under
    ``HKDF-SHA256(secret, info=label || sender id)`` with a 64-bit counter as
    nonce, so nonces never repeat under one key. The counter also stands in for
    pysyncobj's "timestamp", which each connection requires to never decrease:
    an old frame replayed into a connection is refused. Frame layout:
    ``version(1) | sender id(16) | counter(8) | ciphertext+tag``; the header is
    the associated data.
    """

    _VERSION = b"\x01"
    _LABEL = b"bkv raft transport v1 "
    _HEADER = struct.Struct(">16sQ")
    _OVERHEAD = 1 + 16 + 8 + 16
    _MAX_SENDERS = 64  # receiver key cache: peers restart with fresh ids

    def __init__(self, secret: bytes) -> None:
        self._secret = bytes(secret)
        self._sender_id = os.urandom(16)
        self._send_aead = ChaCha20Poly1305(self._derive(self._sender_id))
        self._counter = itertools.count(1)  # next() is atomic under the GIL
        self._keys: OrderedDict[bytes, ChaCha20Poly1305] = OrderedDict()
        self._keys_lock = threading.Lock()

    def __repr__(self) -> str:
        return "TransportCipher()"

    def _derive(self, sender_id: bytes) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=self._LABEL + sender_id)
        return hkdf.derive(self._secret)

    def _receive_aead(self, sender_id: bytes) -> ChaCha20Poly1305:
        with self._keys_lock:
            aead = self._keys.get(sender_id)
            if aead is not None:
                self._keys.move_to_end(sender_id)
                return aead
        aead = ChaCha20Poly1305(self._derive(sender_id))
        with self._keys_lock:
            self._keys[sender_id] = aead
            while len(self._keys) > self._MAX_SENDERS:
                self._keys.popitem(last=False)
        return aead

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        del current_time  # the counter orders frames instead of wall-clock seconds
        counter = next(self._counter)
        header = self._VERSION + self._HEADER.pack(self._sender_id, counter)
        nonce = bytes(4) + header[-8:]
        return header + self._send_aead.encrypt(nonce, data, header)

    def extract_timestamp(self, token: bytes) -> int:
        """The frame's counter; not yet authenticated (``decrypt`` checks it as associated data)."""
        if len(token) < self._OVERHEAD or token[:1] != self._VERSION:
            raise ValueError("not a transport frame")
        counter: int = self._HEADER.unpack_from(token, 1)[1]
        return counter

    def decrypt(self, token: bytes) -> bytes:
        """The frame's plaintext; raises (so pysyncobj drops the connection) unless authentic."""
        if len(token) < self._OVERHEAD or token[:1] != self._VERSION:
            raise ValueError("not a transport frame")
        sender_id = bytes(token[1:17])
        header = bytes(token[:25])
        return self._receive_aead(sender_id).decrypt(bytes(4) + header[-8:], bytes(token[25:]),
                                                     header)
