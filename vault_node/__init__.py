"""A member of the HSM fleet: the Raft-replicated, guess-limited key vault.

Rooms: ``state`` (the pure state machine that counts and destroys), ``hsm/`` (the secret
boundary), ``raft/`` (consensus plumbing), ``service/`` (the gRPC service that answers a
guess), ``admin/`` (operator commands); ``server``/``cli`` wire them into a process.
Imports ``bkv_protocol``, ``bkv_ops`` and ``bkv_api``; never ``client_sdk``, ``chatd_proxy``
or ``bkv_tools``.
"""
