"""Operator commands of ``bkv-vault-node``: membership changes and sealed snapshots.

Talks to nodes through ``vault_node.raft``'s authenticated admin link; may import
``vault_node.raft``, ``vault_node.hsm.fleet`` and ``vault_node.config``, never the service.
"""
