"""Test driver: one Raft replica per process, controlled over stdin/stdout JSON lines."""

import sys

from vault_node.raft.harness import main

if __name__ == "__main__":
    sys.exit(main())
