"""The device side, as a library: backup keys, age-format backups, storage, the vault client.

What an app embeds. Imports ``bkv_protocol``, ``bkv_ops.tls`` and ``bkv_api`` only; never
``vault_node``, ``chatd_proxy`` or ``bkv_tools`` (the CLI and cluster tooling).
"""
