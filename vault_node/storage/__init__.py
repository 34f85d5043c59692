"""Where a node keeps the vault state: an embedded, crash-safe engine (SQLite)."""
