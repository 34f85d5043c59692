"""Sealing the device's requests and judging the vault's replies (pure functions).

Every request carries a fresh response key and is HPKE-sealed to the pinned
fleet key, bound to (account, shard, step). A reply is believed only if it
opens under that response key with the same binding; anything else is dropped
as :class:`ReplyAuthenticationError` before a single field is read. Protocol
outcomes (not registered, destroyed, login failed, session expired) travel
inside the authenticated reply and become :mod:`client_sdk.errors` classes.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf.message import DecodeError

from bkv_api.v1 import envelope_pb2
from bkv_protocol import sealing
from bkv_protocol.errors import ProtocolError
from client_sdk.errors import (
    AlreadyRegistered,
    KeyDestroyed,
    NotRegistered,
    ReplyAuthenticationError,
    SessionExpired,
    VaultError,
    VaultProtocolError,
    WrongPassword,
)

REGISTER_START: int = envelope_pb2.REGISTER_START
REGISTER_FINISH: int = envelope_pb2.REGISTER_FINISH
LOGIN_START: int = envelope_pb2.LOGIN_START
LOGIN_FINISH: int = envelope_pb2.LOGIN_FINISH

# The reply body each step expects (VaultReply oneof field names).
EXPECTED_REPLY: dict[int, str] = {
    REGISTER_START: "register_start",
    REGISTER_FINISH: "register_finish",
    LOGIN_START: "login_start",
    LOGIN_FINISH: "login_finish",
}
# The request body each step carries (ClientRequest oneof field names).
REQUEST_FIELD: dict[int, str] = {
    REGISTER_START: "register_start",
    REGISTER_FINISH: "register_finish",
    LOGIN_START: "login_start",
    LOGIN_FINISH: "login_finish",
}


def seal_client_request(
    fleet_public_key: bytes, account: str, shard: int, message_type: int, body: Any
) -> tuple[Any, bytes]:
    """Return (SealedRequest, response_key) for one protocol step.

    ``body`` is the step's message (e.g. ``LoginStart``); the response key is
    fresh for every request, so a reply can't be replayed into another one.
    """
    response_key = sealing.new_response_key()
    inner = envelope_pb2.ClientRequest(response_key=response_key)
    getattr(inner, REQUEST_FIELD[message_type]).CopyFrom(body)
    sealed = sealing.seal_request(
        fleet_public_key, account, shard, message_type, inner.SerializeToString()
    )
    request = envelope_pb2.SealedRequest(
        account=account, shard=shard, type=cast(Any, message_type), sealed=sealed
    )
    return request, response_key


def open_vault_reply(
    response_key: bytes, account: str, shard: int, message_type: int, sealed: bytes
) -> Any:
    """Authenticate and parse a reply, then return the step's expected body.

    Raises ReplyAuthenticationError if the reply does not open (never trusted),
    VaultProtocolError if it opens but is malformed or answers another step,
    and the mapped error class if the vault reports a protocol outcome.
    """
    try:
        plaintext = sealing.open_reply(response_key, account, shard, message_type, sealed)
    except ProtocolError:
        raise ReplyAuthenticationError() from None
    reply = envelope_pb2.VaultReply()
    try:
        reply.ParseFromString(plaintext)
    except DecodeError:
        raise VaultProtocolError("the vault's reply is malformed") from None
    kind = reply.WhichOneof("body")
    if kind == "error":
        raise error_from_reply(reply.error)
    if kind != EXPECTED_REPLY[message_type]:
        raise VaultProtocolError("the vault answered with a reply for another step")
    return getattr(reply, kind)


def error_from_reply(error: Any) -> VaultError:
    """Map a ``VaultError`` message from an authenticated reply to an exception."""
    code = error.code
    codes = envelope_pb2.VaultError
    if code == codes.NOT_REGISTERED:
        return NotRegistered()
    if code == codes.KEY_DESTROYED:
        return KeyDestroyed()
    if code == codes.LOGIN_FAILED:
        return WrongPassword(error.attempts_left)
    if code == codes.ALREADY_REGISTERED:
        return AlreadyRegistered()
    if code == codes.SESSION_EXPIRED:
        return SessionExpired("the vault no longer knows this login session")
    detail = _clean(error.message)
    suffix = f": {detail}" if detail else ""
    if code == codes.BAD_REQUEST:
        return VaultProtocolError(f"the vault refused the request{suffix}")
    return VaultError(f"the vault reported an unknown error{suffix}")


def _clean(text: str, limit: int = 200) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
