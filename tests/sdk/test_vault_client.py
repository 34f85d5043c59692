"""VaultClient against the in-process vault (real service, HSM and a one-member Raft group)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from bkv_protocol.ksf import IDENTITY_KSF, PRODUCTION_KSF
from client_sdk.errors import (
    KeyDestroyed,
    NotRegistered,
    ReplyAuthenticationError,
    SessionExpired,
    VaultProtocolError,
    WrongPassword,
)
from client_sdk.vault_client import VaultClient
from client_sdk.vault_flows import ksf_acceptor
from client_sdk.vault_replies import LOGIN_FINISH, LOGIN_START, REGISTER_FINISH, REGISTER_START

from .conftest import ATTEMPT_LIMIT, DirectVaultTransport, InProcessVault

PASSWORD = "correct horse battery staple"


@pytest.fixture
def transport(vault: InProcessVault) -> DirectVaultTransport:
    return DirectVaultTransport(vault.address)


@pytest.fixture
def client(vault: InProcessVault, transport: DirectVaultTransport) -> Iterator[VaultClient]:
    with VaultClient(vault.client_config(), ksf=IDENTITY_KSF, transport=transport) as c:
        yield c


def new_account() -> str:
    return f"acct-{secrets.token_hex(6)}"


def test_register_then_recover(client: VaultClient, transport: DirectVaultTransport) -> None:
    account, key = new_account(), secrets.token_bytes(32)
    client.register(account, key, PASSWORD)
    assert client.recover(account, PASSWORD) == key
    assert transport.sent == [REGISTER_START, REGISTER_FINISH, LOGIN_START, LOGIN_FINISH]


def test_password_is_unicode_normalised(client: VaultClient) -> None:
    account, key = new_account(), secrets.token_bytes(32)
    client.register(account, key, "caf\u00e9 au lait")  # composed é
    assert client.recover(account, "cafe\u0301 au lait") == key  # decomposed é


def test_wrong_password_counts_and_never_sends_ke3(
    client: VaultClient, transport: DirectVaultTransport
) -> None:
    account, key = new_account(), secrets.token_bytes(32)
    client.register(account, key, PASSWORD)
    transport.sent.clear()
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "not the password")
    assert info.value.attempts_left == ATTEMPT_LIMIT - 1
    assert str(info.value) == f"wrong password: {ATTEMPT_LIMIT - 1} attempts left"
    assert transport.sent == [LOGIN_START]
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "still not it")
    assert info.value.attempts_left == ATTEMPT_LIMIT - 2
    # The right password resets the count.
    assert client.recover(account, PASSWORD) == key
    with pytest.raises(WrongPassword) as info:
        client.recover(account, "wrong again")
    assert info.value.attempts_left == ATTEMPT_LIMIT - 1


def test_key_destroyed_after_the_limit(client: VaultClient) -> None:
    account = new_account()
    client.register(account, secrets.token_bytes(32), PASSWORD)
    left = []
    for guess in range(ATTEMPT_LIMIT):
        with pytest.raises(WrongPassword) as info:
            client.recover(account, f"guess {guess}")
        left.append(info.value.attempts_left)
    assert left == list(range(ATTEMPT_LIMIT - 1, -1, -1))
    with pytest.raises(KeyDestroyed) as destroyed:
        client.recover(account, PASSWORD)
    assert str(destroyed.value) == "the vault destroyed this key after too many wrong passwords"


def test_not_registered(client: VaultClient) -> None:
    with pytest.raises(NotRegistered):
        client.recover(new_account(), PASSWORD)


def test_lost_session_restarts_the_login_once(
    vault: InProcessVault, client: VaultClient, transport: DirectVaultTransport
) -> None:
    account, key = new_account(), secrets.token_bytes(32)
    client.register(account, key, PASSWORD)
    lost: list[object] = []

    def leader_change(request: object) -> None:
        if getattr(request, "type", None) == LOGIN_FINISH and not lost:
            lost.append(vault.sessions.drain())  # what a deposed leader does

    transport.before_send = leader_change
    transport.sent.clear()
    assert client.recover(account, PASSWORD) == key
    assert transport.sent == [LOGIN_START, LOGIN_FINISH, LOGIN_START, LOGIN_FINISH]


def test_session_lost_twice_gives_up(
    vault: InProcessVault, client: VaultClient, transport: DirectVaultTransport
) -> None:
    account = new_account()
    client.register(account, secrets.token_bytes(32), PASSWORD)

    def always_lose(request: object) -> None:
        if getattr(request, "type", None) == LOGIN_FINISH:
            vault.sessions.drain()

    transport.before_send = always_lose
    with pytest.raises(SessionExpired, match="lost the login session twice"):
        client.recover(account, PASSWORD)
    assert transport.sent.count(LOGIN_START) == 2


def test_tampered_reply_is_never_trusted(
    client: VaultClient, transport: DirectVaultTransport
) -> None:
    account = new_account()
    transport.tamper_reply = True
    with pytest.raises(ReplyAuthenticationError, match="reply failed authentication"):
        client.register(account, secrets.token_bytes(32), PASSWORD)


def test_stale_fleet_key_is_reported(vault: InProcessVault) -> None:
    cfg = vault.client_config()
    stale = type(cfg)(
        fleet_public_key=bytes.fromhex("09" + "00" * 31),
        shard_count=1,
        chatd=cfg.chatd,
        deadline_seconds=5.0,
        token="t",
    )
    with (
        VaultClient(stale, ksf=IDENTITY_KSF, transport=DirectVaultTransport(vault.address)) as c,
        pytest.raises(VaultProtocolError, match="check fleet_public_key"),
    ):
        c.register(new_account(), secrets.token_bytes(32), PASSWORD)


def test_production_client_refuses_a_downgraded_ksf(
    vault: InProcessVault, client: VaultClient
) -> None:
    # Registered with the Identity KSF (test vault allows it): a production client
    # must not accept "identity" from the vault at login.
    account = new_account()
    client.register(account, secrets.token_bytes(32), PASSWORD)
    transport = DirectVaultTransport(vault.address)
    with (
        VaultClient(vault.client_config(), transport=transport) as strict,
        pytest.raises(VaultProtocolError, match="unacceptable key-stretching"),
    ):
        strict.recover(account, PASSWORD)
    assert transport.sent == [LOGIN_START]


@pytest.mark.parametrize(
    "descriptor",
    ["identity", "argon2id;v=19;m=4194304;t=3;p=1", "argon2id;v=19;m=65536;t=99;p=1", "scrypt"],
)
def test_hostile_ksf_parameters_are_refused(vault: InProcessVault, descriptor: str) -> None:
    with VaultClient(vault.client_config(), transport=DirectVaultTransport(vault.address)) as c:
        accept = ksf_acceptor(c.ksf)
        with pytest.raises(VaultProtocolError, match="unacceptable key-stretching"):
            accept(descriptor)
        assert accept(PRODUCTION_KSF.descriptor).descriptor == PRODUCTION_KSF.descriptor


@pytest.mark.parametrize(
    ("account", "key", "password", "error"),
    [
        ("", b"k" * 32, PASSWORD, ValueError),
        ("a" * 257, b"k" * 32, PASSWORD, ValueError),
        ("alice", b"k" * 31, PASSWORD, ValueError),
        ("alice", b"k" * 32, "", ValueError),
        ("alice", b"k" * 32, 12345, TypeError),
    ],
)
def test_bad_arguments_fail_before_any_request(
    client: VaultClient,
    transport: DirectVaultTransport,
    account: str,
    key: bytes,
    password: object,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        client.register(account, key, password)  # type: ignore[arg-type]
    assert transport.sent == []


def test_repr_shows_no_secret(client: VaultClient) -> None:
    text = repr(client)
    assert "unused-by-the-direct-transport" not in text
    assert "chatd=" in text
