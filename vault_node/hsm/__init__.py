"""The HSM boundary: fleet secrets and the master key, software or PKCS#11, never exported.

May import ``bkv_protocol`` and ``vault_node.config``; nothing else of the vault.
"""
