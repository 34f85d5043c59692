"""The HSM boundary's one error type, shared by the master-key backends and the high-water mark."""

from __future__ import annotations


class HsmError(Exception):
    """A sealed blob did not open, or a key source is unusable. Never carries a secret."""


__all__ = ["HsmError"]
