"""The device side: backup keys, age-format backups, storage, the vault client and `bkv`."""
