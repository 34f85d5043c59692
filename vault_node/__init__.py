"""A member of the HSM fleet: Raft-replicated, guess-limited key vault."""
