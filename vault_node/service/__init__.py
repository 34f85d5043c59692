"""The node's gRPC face: the guess-limited OPAQUE service, login sessions, health, metrics.

May import ``vault_node.state``, ``vault_node.hsm.fleet``, ``vault_node.raft`` and
``vault_node.config``; never ``vault_node.raft.admin_endpoint``.
"""
