"""Every change the vault makes to pysyncobj's module state, and the check that makes them safe.

pysyncobj (pinned to 0.3.17 in ``pyproject.toml``) pickles whatever it sends and
unpickles whatever it receives or reads back from disk. Importing this module
(``vault_node.raft.core`` does, before anything else of pysyncobj runs) does
four things, in this order:

1. **Checks the shape** of every pysyncobj name the vault hooks or overrides:
   the version, that each function and method exists with the parameters the
   hook expects, and that the private attributes it touches are still used by
   the methods that own them. A mismatch raises :class:`PysyncobjEdgeError`
   listing every problem, so an upgrade fails at start-up instead of silently
   skipping a hook (a missing hook could mean unpickling network bytes).
2. **The durable journal**: ``syncobj.createJournal`` returns the vault's
   ``DurableJournal`` when given one (see ``vault_node.raft.core``).
3. **Restricted codec everywhere.** ``pysyncobj.pickle.loads``/``load`` (which
   fall back to the stock pure-Python unpickler on error), the names bound from
   it in ``pysyncobj.journal``, and the ``pickle`` module seen by
   ``syncobj``, ``serializer`` and ``tcp_connection`` become
   ``vault_node.raft.safe_pickle``, which refuses any pickle naming a global.
4. **Our own connection class.** ``pysyncobj.transport`` and
   ``pysyncobj.tcp_server`` build :class:`LinkConnection` instead of
   ``TcpConnection`` for outgoing and incoming connections; the stock class's
   frame parser is replaced by one that refuses every frame, so no stock
   connection in this process can unpickle anything.

:class:`LinkConnection` runs the per-member handshake of
``vault_node.raft.transport_cipher`` and then, for every frame: the 4-byte length is
checked against :data:`MAX_FRAME_BYTES` before the body is buffered (and the
read buffer stops growing past one frame), the frame is opened under the
connection's key with an exact counter check, the sender's link key is checked
to still belong to a current member, the payload is decompressed with a hard
output limit (:data:`MAX_MESSAGE_BYTES`), unpickled with the restricted codec,
and pysyncobj's per-connection random key is compared with
``hmac.compare_digest``. A chunked entry (pysyncobj's "transmission", which it
reassembles without limit) may not grow past :data:`MAX_ENTRY_TRANSMISSION_BYTES`.
Every check is an ``if``/``raise``: ``python -O`` strips pysyncobj's ``assert``
checks, not these.

Limits: the largest frame a node legitimately receives is an AppendEntries batch
(pysyncobj's ``appendEntriesBatchSizeBytes``, 64 KiB, plus at most one entry
below that size: under 128 KiB raw), a snapshot chunk (``logCompactionBatchSize``,
64 KiB) or a small admin request. 4 MiB per frame and 8 MiB once decompressed
leave a wide margin. Admin *replies* (a snapshot of the whole state) travel the
other way, to the operator's client, which allows :data:`ADMIN_MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import pickle
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj.journal as _journal_module
import pysyncobj.pickle as _pickle_module
import pysyncobj.serializer as _serializer_module
import pysyncobj.syncobj as _syncobj_module
import pysyncobj.tcp_connection as _tcp_connection_module
import pysyncobj.tcp_server as _tcp_server_module
import pysyncobj.transport as _transport_module
import pysyncobj.version as _version_module
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.node import TCPNode
from pysyncobj.pipe_notifier import PipeNotifier
from pysyncobj.poller import createPoller
from pysyncobj.transport import TCPTransport

from vault_node.raft import safe_pickle
from vault_node.raft.journal import NO_OP_COMMAND_TYPE, DurableJournal
from vault_node.raft.transport_cipher import (
    HANDSHAKE_FRAME_BYTES,
    Initiator,
    LinkError,
    LinkSecrets,
    LinkSession,
    respond,
)

log = logging.getLogger("vault_node.raft.link")

PYSYNCOBJ_VERSION = "0.3.17"
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
ADMIN_MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # a whole-state snapshot reply, to the operator
# A log entry is one vault command (its gRPC request is at most 64 KiB) or a JSON
# membership change; only entries over pysyncobj's 64 KiB batch size travel as a
# chunked "transmission", which pysyncobj reassembles without limit.
MAX_ENTRY_TRANSMISSION_BYTES = 16 * 1024 * 1024
MAX_PENDING_MESSAGES = 64  # queued before the handshake ends; pysyncobj sends one or two
_LENGTH = struct.Struct("<I")
_COMPRESS_LEVEL = 3  # pysyncobj's choice


# What the rest of the vault uses from pysyncobj: every name comes through here.
COMMAND_TYPE = _syncobj_module._COMMAND_TYPE
SERIALIZER_STATE = _serializer_module.SERIALIZER_STATE
__all__ = [
    "COMMAND_TYPE",
    "FAIL_REASON",
    "SERIALIZER_STATE",
    "PipeNotifier",
    "SyncObj",
    "SyncObjConf",
    "TCPNode",
    "TCPTransport",
    "createPoller",
    "replicated",
]


class PysyncobjEdgeError(RuntimeError):
    """The installed pysyncobj does not have the shape the vault's hooks were written against."""


# ---- 1. shape check -------------------------------------------------------------------

_C = "pysyncobj.tcp_connection:TcpConnection."
_T = "pysyncobj.transport:TCPTransport."
_S = "pysyncobj.syncobj:SyncObj."
# "module:qualified name" -> the parameter names the hook relies on
HOOKED_FUNCTIONS: dict[str, tuple[str, ...]] = {
    _C + "__init__": ("self", "poller", "onMessageReceived", "onConnected", "onDisconnected",
                      "socket", "timeout", "sendBufferSize", "recvBufferSize", "keepalive"),
    _C + "send": ("self", "message"),
    _C + "getSendBufferSize": ("self",),  # snapshot transfers wait for a slow member
    _C + "connect": ("self", "host", "port"),
    _C + "disconnect": ("self",),
    _C + "setOnConnectedCallback": ("self", "onConnected"),
    _C + "setOnMessageReceivedCallback": ("self", "onMessageReceived"),
    _C + "_TcpConnection__processConnection": ("self", "descr", "eventType"),
    _C + "_TcpConnection__processParseMessage": ("self",),
    _C + "_TcpConnection__tryReadBuffer": ("self",),
    _C + "_TcpConnection__processRead": ("self",),
    _C + "_TcpConnection__trySendBuffer": ("self",),
    _T + "__init__": ("self", "syncObj", "selfNode", "otherNodes"),
    _T + "_onIncomingMessageReceived": ("self", "conn", "message"),
    _T + "addNode": ("self", "node"),
    _T + "send": ("self", "node", "message"),
    _T + "_shouldConnect": ("self", "node"),
    _T + "setOnMessageReceivedCallback": ("self", "callback"),
    _T + "setOnUtilityMessageCallback": ("self", "message", "callback"),
    "pysyncobj.pickle:loads": ("data",),
    "pysyncobj.pickle:load": ("file",),
    "pysyncobj.pickle:dumps": ("obj", "protocol"),
    "pysyncobj.pickle:dump": ("obj", "file", "protocol"),
    "pysyncobj.pickle:to_bytes": ("data",),
    "pysyncobj.journal:loads": ("data",),
    "pysyncobj.syncobj:createJournal": ("journalFile",),
    _S + "__init__": ("self", "selfNode", "otherNodes", "conf", "consumers", "nodeClass",
                      "transport", "transportClass"),
    _S + "_onTick": ("self", "timeToWait"),
    _S + "_checkCommandsToApply": ("self",),
    _S + "_applyCommand": ("self", "command", "callback", "commandType"),
    _S + "_isLeader": ("self",),
    _S + "_getLeader": ("self",),
    _S + "addNodeToCluster": ("self", "node", "callback"),
    _S + "removeNodeFromCluster": ("self", "node", "callback"),
    _S + "transferLeadership": ("self", "node", "callback"),
    _S + "forceLogCompaction": ("self",),
    _S + "isNodeConnected": ("self", "node"),
    _S + "_SyncObj__sendAppendEntries": ("self",),
    _S + "_SyncObj__parseChangeClusterRequest": ("self", "command"),
    _S + "_SyncObj__doChangeCluster": ("self", "request", "reverse"),
    _S + "_SyncObj__doApplyCommand": ("self", "command"),
    _S + "_SyncObj__updateClusterConfiguration": ("self", "newNodes"),
    _S + "_SyncObj__loadDumpFile": ("self", "clearJournal"),
    _S + "_SyncObj__getEntries": ("self", "fromIDx", "count", "maxSizeBytes"),
}
# private attributes the hooks read or write, and a method that must still use each
HOOKED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    _C + "__init__": ("_TcpConnection__readBuffer", "_TcpConnection__writeBuffer",
                      "_TcpConnection__lastReadTime", "_TcpConnection__onConnected",
                      "sendRandKey", "recvRandKey", "encryptor", "_TcpConnection__socket"),
    _C + "_TcpConnection__processConnection": ("_TcpConnection__tryReadBuffer",
                                               "_TcpConnection__processParseMessage",
                                               "_TcpConnection__onConnected",
                                               "_TcpConnection__onMessageReceived"),
    _C + "setOnMessageReceivedCallback": ("_TcpConnection__onMessageReceived",),
    _C + "_TcpConnection__processRead": ("_TcpConnection__readBuffer",),
    _T + "__init__": ("_syncObj", "_connections", "_nodeAddrToNode"),
    _T + "addNode": ("TcpConnection",),
    # an incoming connection replaces the one the transport dials with (core.py refuses)
    _T + "_onIncomingMessageReceived": ("_connections", "_nodeAddrToNode"),
    "pysyncobj.tcp_server:TcpServer._TcpServer__onNewConnection": ("TcpConnection",),
    _S + "__init__": ("_SyncObj__otherNodes", "_SyncObj__selfNode", "_SyncObj__transport",
                      "_SyncObj__needLoadDumpFile", "_SyncObj__raftState", "_poller",
                      "_SyncObj__lastResponseTime", "_SyncObj__serializer",
                      "_SyncObj__raftElectionDeadline"),
    # the leader lease (replication.holds_leadership) reads when each follower answered
    _S + "_SyncObj__onMessageReceived": ("_SyncObj__lastResponseTime",),
    # every committed entry, membership changes too, is applied through __doApplyCommand
    # (core.VaultSyncObj audits membership there)
    _S + "_SyncObj__applyLogEntries": ("_SyncObj__doApplyCommand",),
    # a snapshot's base entry is kept as a no-op (journal.base_entry)
    _S + "_SyncObj__onBecomeLeader": ("NO_OP",),
    # snapshots go through vault_node.raft.snapshotter.Snapshotter
    _S + "_SyncObj__tryLogCompaction": ("checkSerializing", "serialize",
                                        "_SyncObj__deleteEntriesTo"),
    _S + "_SyncObj__sendAppendEntries": ("getTransmissionData", "cancelTransmisstion"),
}
_MODULES = {
    "pysyncobj.tcp_connection": _tcp_connection_module,
    "pysyncobj.transport": _transport_module,
    "pysyncobj.tcp_server": _tcp_server_module,
    "pysyncobj.pickle": _pickle_module,
    "pysyncobj.journal": _journal_module,
    "pysyncobj.syncobj": _syncobj_module,
}


def _lookup(spec: str) -> Any:
    module_name, _, qualname = spec.partition(":")
    obj: Any = _MODULES[module_name]
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part)
    return obj


def shape_problems() -> list[str]:
    """Every way the installed pysyncobj differs from what the hooks expect (empty: none)."""
    problems: list[str] = []
    version = getattr(_version_module, "VERSION", None)
    if version != PYSYNCOBJ_VERSION:
        problems.append(f"pysyncobj {version} installed, hooks written for {PYSYNCOBJ_VERSION}")
    for spec, params in HOOKED_FUNCTIONS.items():
        try:
            func = _lookup(spec)
            names = tuple(inspect.signature(func).parameters)
        except (AttributeError, TypeError, ValueError):
            problems.append(f"{spec} is missing or not a function")
            continue
        if names != params:
            problems.append(f"{spec} takes {names}, expected {params}")
    for spec, attributes in HOOKED_ATTRIBUTES.items():
        try:
            used = set(_lookup(spec).__code__.co_names)
        except AttributeError:
            problems.append(f"{spec} is missing or not a function")
            continue
        problems.extend(f"{spec} no longer uses {name}" for name in attributes if name not in used)
    for kind in ("MEMBERSHIP", "NO_OP", "REGULAR"):
        value = getattr(getattr(_syncobj_module, "_COMMAND_TYPE", None), kind, None)
        if not isinstance(value, int):
            problems.append(f"pysyncobj.syncobj:_COMMAND_TYPE.{kind} is missing")
    if getattr(getattr(_syncobj_module, "_COMMAND_TYPE", None), "NO_OP", None) \
            != NO_OP_COMMAND_TYPE:
        problems.append("pysyncobj.syncobj:_COMMAND_TYPE.NO_OP is not the journal's no-op")
    for module in (_transport_module, _tcp_server_module):
        current = getattr(module, "TcpConnection", None)
        if not (isinstance(current, type)
                and issubclass(current, _tcp_connection_module.TcpConnection)):
            problems.append(f"{module.__name__}.TcpConnection is missing")
    return problems


def check_shape() -> None:
    """Raise :class:`PysyncobjEdgeError` naming every mismatch; called at import."""
    problems = shape_problems()
    if problems:
        raise PysyncobjEdgeError(
            "pysyncobj does not match the vault's Raft layer (refusing to start): "
            + "; ".join(problems)
        )


# ---- message codec ------------------------------------------------------------------------


# Messages this large are snapshot chunks of sealed records, which zlib can't shrink:
# they are stored (level 0) rather than compressed, sparing the leader's Raft thread.
STORE_ABOVE_BYTES = 256 * 1024


def encode_message(message: Any) -> bytes:
    """pysyncobj's message encoding (a pickle of plain data, zlib), which peers expect.

    Protocol 4 carries bytes natively (protocol 2 turns them into latin-1 text and a
    ``_codecs.encode`` call); any peer's restricted unpickler reads both.
    """
    data = pickle.dumps(message, protocol=4)
    return zlib.compress(data, 0 if len(data) > STORE_ABOVE_BYTES else _COMPRESS_LEVEL)


def decode_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decompress at most ``max_bytes`` and unpickle plain data only; LinkError otherwise."""
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(data, max_bytes)
    except zlib.error:
        raise LinkError("message is not valid zlib data") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise LinkError(f"message larger than {max_bytes} bytes once decompressed, or cut")
    if inflater.unused_data:
        raise LinkError("trailing bytes after the message")
    try:
        return safe_pickle.loads(plain)
    except Exception as err:  # any malformed pickle: refused, never partly used
        raise LinkError(f"message is not plain data ({err})") from None


# ---- the connection class -----------------------------------------------------------------


class LinkPolicy:
    """What a connection needs from its owner (given to pysyncobj as its ``encryptor``).

    ``is_member(public_key)`` says whether a link key belongs to a current member;
    it is asked at the handshake and again for every frame, so removing a member
    cuts its open connections too. The three encryptor methods pysyncobj's stock
    connection would call all refuse: only :class:`LinkConnection` can use this.
    """

    def __init__(self, secrets: LinkSecrets, is_member: Callable[[bytes], bool]) -> None:
        self.secrets = secrets
        self.is_member = is_member

    def __repr__(self) -> str:
        return "LinkPolicy()"

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        raise LinkError("the stock pysyncobj connection is not allowed on the Raft link")

    def extract_timestamp(self, token: bytes) -> int:
        raise LinkError("the stock pysyncobj connection is not allowed on the Raft link")

    def decrypt(self, token: bytes) -> bytes:
        raise LinkError("the stock pysyncobj connection is not allowed on the Raft link")


_StockConnection: Any = _tcp_connection_module.TcpConnection


class LinkConnection(_StockConnection):  # type: ignore[misc]
    """pysyncobj's TCP connection with the vault's handshake, bounded frames and codec.

    ``encryptor`` must be a :class:`LinkPolicy` (pysyncobj sets it before the
    first byte is read). A dialling connection also needs ``bkv_expected_peer``,
    the link key of the member it dials; without one it refuses to speak.
    """

    bkv_max_frame = MAX_FRAME_BYTES
    bkv_max_message = MAX_MESSAGE_BYTES
    _TcpConnection__readBuffer: bytes  # the stock class's buffers, set by its __init__
    _TcpConnection__writeBuffer: bytes

    def __init__(self, poller: Any, onMessageReceived: Any = None, onConnected: Any = None,
                 onDisconnected: Any = None, socket: Any = None, timeout: float = 10.0,
                 sendBufferSize: int = 2**13, recvBufferSize: int = 2**13,
                 keepalive: Any = None) -> None:
        self.bkv_expected_peer: bytes | None = None
        self.bkv_peer_key: bytes | None = None
        self._bkv_user_connected = onConnected
        self._bkv_dialling = socket is None
        self._bkv_recv_size = recvBufferSize
        self._bkv_reset()
        super().__init__(poller, self._bkv_guarded(onMessageReceived),
                         self._bkv_socket_connected, onDisconnected, socket, timeout,
                         sendBufferSize, recvBufferSize, keepalive)

    def _bkv_reset(self) -> None:
        self._bkv_session: LinkSession | None = None
        self._bkv_initiator: Initiator | None = None
        self._bkv_pending: list[bytes] = []
        self._bkv_transmitted = 0  # bytes of the chunked entry this peer is sending
        self.bkv_peer_key = None

    # ---- pysyncobj's interface -------------------------------------------------------------

    def setOnConnectedCallback(self, onConnected: Any) -> None:
        """pysyncobj's "connected" fires once the handshake has authenticated the peer."""
        self._bkv_user_connected = onConnected

    def setOnMessageReceivedCallback(self, onMessageReceived: Any) -> None:
        super().setOnMessageReceivedCallback(self._bkv_guarded(onMessageReceived))

    def _bkv_guarded(self, callback: Any) -> Any:
        """Deliver to pysyncobj; a message it chokes on drops this connection, not the tick.

        pysyncobj indexes messages without checking them (``message['term']``), so a
        member's malformed message would otherwise raise out of the Raft thread's tick.
        Only the errors of a malformed message are caught; disk or internal errors
        (``OSError``, ``RuntimeError``) still propagate.
        """
        if callback is None:
            return None

        def deliver(message: Any) -> None:
            try:
                callback(message)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
                self._bkv_refuse(f"a message pysyncobj could not handle ({type(err).__name__})")

        return deliver

    def connect(self, host: Any, port: Any) -> bool:
        self._bkv_reset()
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._bkv_reset()
        super().disconnect()

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = encode_message(message)
        if self._bkv_session is None:
            if len(self._bkv_pending) >= MAX_PENDING_MESSAGES:
                self._bkv_refuse("too many messages before the handshake")
                return
            self._bkv_pending.append(data)
            return
        self._bkv_write(self._bkv_session.seal(data))

    # ---- the handshake ------------------------------------------------------------------

    def _bkv_policy(self) -> LinkPolicy:
        policy = self.encryptor
        if not isinstance(policy, LinkPolicy):
            raise LinkError("connection has no link policy")
        return policy

    def _bkv_socket_connected(self) -> None:
        """The socket is up (dialling side): send our HELLO; pysyncobj hears of it later."""
        try:
            policy = self._bkv_policy()
            if self.bkv_expected_peer is None:
                raise LinkError("no link key known for the node dialled")
            self._bkv_initiator = Initiator.start(policy.secrets, self.bkv_expected_peer)
        except LinkError as err:
            self._bkv_refuse(str(err))
            return
        self._bkv_write(self._bkv_initiator.hello)

    def _bkv_established(self, session: LinkSession, peer: bytes) -> None:
        self._bkv_session, self.bkv_peer_key = session, peer
        pending, self._bkv_pending = self._bkv_pending, []
        for data in pending:
            self._bkv_write(session.seal(data))

    def _bkv_handshake(self, frame: bytes) -> None:
        policy = self._bkv_policy()
        if self._bkv_dialling:
            if self._bkv_initiator is None:
                raise LinkError("frame before the handshake")
            session = self._bkv_initiator.finish(frame)
            peer, self._bkv_initiator = self._bkv_initiator.expected_peer, None
            self._bkv_established(session, peer)
            if self._bkv_user_connected is not None:
                self._bkv_user_connected()
            return
        answer, peer, session = respond(policy.secrets, frame, policy.is_member)
        self._bkv_write(answer)
        self._bkv_established(session, peer)

    # ---- reading ------------------------------------------------------------------------

    def _TcpConnection__tryReadBuffer(self) -> None:
        """Read what is available, but never buffer more than one maximal frame."""
        limit = _LENGTH.size + self.bkv_max_frame + self._bkv_recv_size
        while len(self._TcpConnection__readBuffer) < limit:
            if not self._TcpConnection__processRead():
                break
            if not self._bkv_header_ok():
                break
        self._TcpConnection__lastReadTime = _monotonic()

    def _bkv_header_ok(self) -> bool:
        buffer = self._TcpConnection__readBuffer
        if len(buffer) < _LENGTH.size:
            return True
        length = _LENGTH.unpack_from(buffer)[0]
        if self._bkv_session is None and length != HANDSHAKE_FRAME_BYTES:
            self._bkv_refuse("handshake frame of the wrong size")
            return False
        if length > self.bkv_max_frame:
            self._bkv_refuse(f"frame of {length} bytes announced (limit {self.bkv_max_frame})")
            return False
        return True

    def _TcpConnection__processParseMessage(self) -> Any:
        """The next message for pysyncobj, or None; any refusal drops the connection."""
        while self._bkv_header_ok():
            buffer = self._TcpConnection__readBuffer
            if len(buffer) < _LENGTH.size:
                return None
            end = _LENGTH.size + _LENGTH.unpack_from(buffer)[0]
            if len(buffer) < end:
                return None
            frame = bytes(buffer[_LENGTH.size:end])
            self._TcpConnection__readBuffer = buffer[end:]
            try:
                if self._bkv_session is None:
                    self._bkv_handshake(frame)
                    if self.state == _tcp_connection_module.CONNECTION_STATE.DISCONNECTED:
                        return None
                    continue
                return self._bkv_open(frame)
            except LinkError as err:
                self._bkv_refuse(str(err))
                return None
        return None

    def _bkv_open(self, frame: bytes) -> Any:
        policy = self._bkv_policy()
        session, peer = self._bkv_session, self.bkv_peer_key
        if session is None or peer is None:
            raise LinkError("frame before the handshake")
        if not policy.is_member(peer):
            raise LinkError("the peer's link key is no longer a member's")
        message = decode_message(session.open(frame), self.bkv_max_message)
        if self.recvRandKey:
            if not (isinstance(message, tuple) and len(message) == 2
                    and isinstance(message[0], bytes)
                    and hmac.compare_digest(message[0], self.recvRandKey)):
                raise LinkError("frame without this connection's random key")
            message = message[1]
        self._bkv_count_transmission(message)
        return message

    def _bkv_count_transmission(self, message: Any) -> None:
        """A peer may not stream one chunked entry past MAX_ENTRY_TRANSMISSION_BYTES."""
        if not (isinstance(message, dict) and "transmission" in message):
            return
        data = message.get("data")
        size = len(data) if isinstance(data, bytes) else 0
        start = message.get("transmission") == "start"
        self._bkv_transmitted = size + (0 if start else self._bkv_transmitted)
        if self._bkv_transmitted > MAX_ENTRY_TRANSMISSION_BYTES:
            raise LinkError("chunked entry larger than "
                            f"{MAX_ENTRY_TRANSMISSION_BYTES} bytes")

    # ---- writing ------------------------------------------------------------------------

    def _bkv_write(self, frame: bytes) -> None:
        self._TcpConnection__writeBuffer += _LENGTH.pack(len(frame)) + frame
        self._TcpConnection__trySendBuffer()

    def _bkv_refuse(self, reason: str) -> None:
        if self.state != _tcp_connection_module.CONNECTION_STATE.DISCONNECTED:
            log.warning("raft link: dropping a connection: %s", reason)
        self.disconnect()


_stock_create_journal = _syncobj_module.createJournal


def _create_journal(journalFile: Any) -> Any:  # pysyncobj's parameter name
    """pysyncobj calls ``createJournal(conf.journalFile)``: passing our journal plugs it in."""
    if isinstance(journalFile, DurableJournal):
        return journalFile
    return _stock_create_journal(journalFile)


def _refuse_stock_frames(self: Any) -> None:
    """Replaces the stock parser: a plain TcpConnection in this process never unpickles."""
    log.error("raft link: a stock pysyncobj connection received a frame; dropping it")
    self.disconnect()


# ---- install (import time, once) -----------------------------------------------------------

check_shape()
for _module in (_pickle_module, _journal_module):
    _module.loads = safe_pickle.loads
_pickle_module.load = safe_pickle.load
for _module in (_syncobj_module, _serializer_module, _tcp_connection_module):
    _module.pickle = safe_pickle
_syncobj_module.createJournal = _create_journal
_transport_module.TcpConnection = LinkConnection
_tcp_server_module.TcpConnection = LinkConnection
_tcp_connection_module.TcpConnection._TcpConnection__processParseMessage = _refuse_stock_frames
