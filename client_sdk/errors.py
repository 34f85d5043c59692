"""Errors of the vault client and its configuration.

The classes follow what the caller must do differently: ask for another
password (:class:`WrongPassword`), give up on the vault for this account
(:class:`KeyDestroyed`, :class:`NotRegistered`), retry later
(:class:`VaultUnavailable`, :class:`NoQuorum`, :class:`RateLimited`) or fix the setup
(:class:`ConfigError`, :class:`AccountRejected`). Messages never contain a
password, a key or a token.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The client configuration is missing, unreadable or malformed."""


class VaultError(Exception):
    """Base class of every error the vault client raises."""


class WrongPassword(VaultError):
    """The password did not match; the vault has already counted this guess."""

    def __init__(self, attempts_left: int) -> None:
        self.attempts_left = max(0, int(attempts_left))
        if self.attempts_left == 0:
            message = "wrong password: no attempts left, the vault destroys this key"
        elif self.attempts_left == 1:
            message = "wrong password: 1 attempt left"
        else:
            message = f"wrong password: {self.attempts_left} attempts left"
        super().__init__(message)


class KeyDestroyed(VaultError):
    """The vault erased the deposit after too many wrong passwords; it is gone for good."""

    def __init__(
        self, message: str = "the vault destroyed this key after too many wrong passwords"
    ) -> None:
        super().__init__(message)


class NotRegistered(VaultError):
    """The vault holds no deposit for this account."""

    def __init__(self, message: str = "no key is deposited in the vault for this account") -> None:
        super().__init__(message)


class AlreadyRegistered(VaultError):
    """The account has a live deposit; registering again replaces it only when asked to."""

    def __init__(
        self, message: str = "this account already has a key deposited in the vault"
    ) -> None:
        super().__init__(message)


class VaultUnavailable(VaultError):
    """No ChatD / vault leader answered within the deadline: retrying later may work."""


class NoQuorum(VaultUnavailable):
    """The shard has lost its majority: no leader can be elected until nodes come back.

    ChatD says so at once instead of letting the request run into the deadline;
    retrying later (not with another password) is what may work.
    """

    def __init__(self, unreachable: int = 0, total: int = 0) -> None:
        self.unreachable = unreachable
        self.total = total
        counted = f": {unreachable} of {total} nodes unreachable" if total else ""
        super().__init__(f"the vault has no quorum{counted}; try again later")


class ReplyAuthenticationError(VaultUnavailable):
    """A reply did not open under this request's response key: it is dropped, never trusted.

    It is a kind of "unavailable": whoever relayed it (ChatD, the network)
    kept the real vault from answering.
    """

    def __init__(self, message: str = "reply failed authentication") -> None:
        super().__init__(message)


class SessionExpired(VaultUnavailable):
    """The vault forgot the login session twice in a row (e.g. repeated leader changes)."""


class AccountRejected(VaultError):
    """ChatD refused the account token (missing, expired, badly signed or for another account)."""


class RateLimited(VaultError):
    """ChatD throttled this account; retry after a pause."""


class VaultProtocolError(VaultError):
    """The vault and the client disagree on the protocol (malformed request or reply).

    Typical causes: a stale ``fleet_public_key`` or shard count in the client
    configuration, or a vault asking for unacceptable key-stretching parameters.
    """
