"""Request sealing and reply judgement, on real envelopes sealed with bkv_protocol.

The tests play the vault's side with the same pure functions the vault uses
(``open_request`` / ``seal_reply``), so no component is mocked.
"""

from __future__ import annotations

from typing import Any

import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import sealing
from bkv_protocol.errors import AuthenticationError
from client_sdk.errors import (
    KeyDestroyed,
    NotRegistered,
    ReplyAuthenticationError,
    SessionExpired,
    VaultError,
    VaultProtocolError,
    VaultUnavailable,
    WrongPassword,
)
from client_sdk.vault_replies import (
    LOGIN_FINISH,
    LOGIN_START,
    REGISTER_START,
    open_vault_reply,
    seal_client_request,
)

FLEET_PRIVATE, FLEET_PUBLIC = sealing.generate_fleet_keypair()
ACCOUNT, SHARD = "alice", 0


def vault_side(request: pb.SealedRequest) -> pb.ClientRequest:
    """What the vault does first: open the envelope with the fleet key, parse it."""
    plain = sealing.open_request(
        FLEET_PRIVATE, request.account, request.shard, request.type, request.sealed
    )
    return pb.ClientRequest.FromString(plain)


def sealed_reply(response_key: bytes, reply: pb.VaultReply, mtype: int = LOGIN_START) -> bytes:
    return sealing.seal_reply(response_key, ACCOUNT, SHARD, mtype, reply.SerializeToString())


def error_reply(code: Any, attempts_left: int = 0, message: str = "") -> pb.VaultReply:
    return pb.VaultReply(
        error=pb.VaultError(code=code, attempts_left=attempts_left, message=message)
    )


def test_request_opens_for_the_fleet_with_its_routing_data() -> None:
    request, response_key = seal_client_request(
        FLEET_PUBLIC, ACCOUNT, SHARD, LOGIN_START, pb.LoginStart(ke1=b"k" * 96)
    )
    assert (request.account, request.shard, request.type) == (ACCOUNT, SHARD, LOGIN_START)
    inner = vault_side(request)
    assert inner.response_key == response_key and len(response_key) == 32
    assert inner.WhichOneof("body") == "login_start"
    assert inner.login_start.ke1 == b"k" * 96


def test_every_request_has_a_fresh_response_key() -> None:
    keys = {
        seal_client_request(FLEET_PUBLIC, ACCOUNT, SHARD, LOGIN_START, pb.LoginStart())[1]
        for _ in range(20)
    }
    assert len(keys) == 20


def test_relay_cannot_reroute_a_request_to_another_account() -> None:
    request, _ = seal_client_request(FLEET_PUBLIC, ACCOUNT, SHARD, LOGIN_START, pb.LoginStart())
    request.account = "mallory"
    with pytest.raises(AuthenticationError):
        vault_side(request)


def test_expected_reply_body_is_returned() -> None:
    _, key = seal_client_request(FLEET_PUBLIC, ACCOUNT, SHARD, LOGIN_START, pb.LoginStart())
    reply = pb.VaultReply(
        login_start=pb.LoginStartReply(session_id=b"s" * 16, ke2=b"2", attempts_left=7, ksf="x")
    )
    body = open_vault_reply(key, ACCOUNT, SHARD, LOGIN_START, sealed_reply(key, reply))
    assert (body.session_id, body.attempts_left, body.ksf) == (b"s" * 16, 7, "x")


@pytest.mark.parametrize(
    ("code", "error_type", "message"),
    [
        (pb.VaultError.NOT_REGISTERED, NotRegistered, "no key is deposited"),
        (
            pb.VaultError.KEY_DESTROYED,
            KeyDestroyed,
            "the vault destroyed this key after too many wrong passwords",
        ),
        (pb.VaultError.LOGIN_FAILED, WrongPassword, "wrong password: 4 attempts left"),
        (pb.VaultError.SESSION_EXPIRED, SessionExpired, "no longer knows this login session"),
        (pb.VaultError.BAD_REQUEST, VaultProtocolError, "refused the request: malformed KE1"),
        (pb.VaultError.CODE_UNSPECIFIED, VaultError, "unknown error: malformed KE1"),
    ],
)
def test_vault_errors_map_to_sdk_errors(code: int, error_type: type, message: str) -> None:
    key = sealing.new_response_key()
    sealed = sealed_reply(key, error_reply(code, attempts_left=4, message="malformed KE1"))
    with pytest.raises(error_type) as info:
        open_vault_reply(key, ACCOUNT, SHARD, LOGIN_START, sealed)
    assert message in str(info.value)


def test_wrong_password_counts_down_to_destruction() -> None:
    assert str(WrongPassword(9)) == "wrong password: 9 attempts left"
    assert str(WrongPassword(1)) == "wrong password: 1 attempt left"
    assert WrongPassword(0).attempts_left == 0
    assert "destroys this key" in str(WrongPassword(0))


def test_vault_text_is_flattened_to_one_line() -> None:
    key = sealing.new_response_key()
    reply = error_reply(pb.VaultError.BAD_REQUEST, message="bad\nthing\x1b[31m" + "x" * 500)
    with pytest.raises(VaultProtocolError) as info:
        open_vault_reply(key, ACCOUNT, SHARD, LOGIN_START, sealed_reply(key, reply))
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text and len(text) < 300


@pytest.mark.parametrize("what", ["other key", "other step", "other account", "flipped", "short"])
def test_unauthentic_replies_are_never_trusted(what: str) -> None:
    key = sealing.new_response_key()
    # A forged "destroyed" reply must not make the client give up on its key.
    forged = error_reply(pb.VaultError.KEY_DESTROYED)
    sealed = sealed_reply(key, forged)
    account, mtype = ACCOUNT, LOGIN_START
    if what == "other key":
        sealed = sealed_reply(sealing.new_response_key(), forged)
    elif what == "other step":
        mtype = LOGIN_FINISH
    elif what == "other account":
        account = "bob"
    elif what == "flipped":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    else:
        sealed = sealed[:10]
    with pytest.raises(ReplyAuthenticationError) as info:
        open_vault_reply(key, account, SHARD, mtype, sealed)
    assert str(info.value) == "reply failed authentication"
    assert isinstance(info.value, VaultUnavailable)


def test_authentic_but_malformed_reply() -> None:
    key = sealing.new_response_key()
    sealed = sealing.seal_reply(key, ACCOUNT, SHARD, LOGIN_START, b"\xff\xff\xff")
    with pytest.raises(VaultProtocolError, match="malformed"):
        open_vault_reply(key, ACCOUNT, SHARD, LOGIN_START, sealed)


def test_reply_body_for_another_step_is_refused() -> None:
    key = sealing.new_response_key()
    reply = pb.VaultReply(register_start=pb.RegisterStartReply(registration_response=b"r"))
    with pytest.raises(VaultProtocolError, match="another step"):
        open_vault_reply(key, ACCOUNT, SHARD, LOGIN_START, sealed_reply(key, reply))
    assert (
        open_vault_reply(
            key, ACCOUNT, SHARD, REGISTER_START, sealed_reply(key, reply, REGISTER_START)
        ).registration_response
        == b"r"
    )
