"""Consensus plumbing: pysyncobj integration, durable journal, snapshots, membership, link.

Moves and stores committed commands; decides nothing about guesses (that is
``vault_node.state``). May import ``vault_node.state``, ``vault_node.config`` and
``vault_node.hsm.fleet``; never ``vault_node.service.vault`` or ``vault_node.raft.admin_endpoint``.
"""
