"""The one exception type of the protocol layer."""


class ProtocolError(ValueError):
    """Malformed or unauthentic protocol input.

    Raised for wrong lengths, non-canonical or identity ristretto255 points,
    zero scalars, failed MACs or AEAD tags, and sealed messages bound to another
    account, shard or step. The message says what was wrong, never a secret.
    """


class AuthenticationError(ProtocolError):
    """A MAC, AEAD tag or OPAQUE envelope did not verify (e.g. a wrong password)."""
