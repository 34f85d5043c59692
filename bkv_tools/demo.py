"""`bkv demo`: the whole story end to end, on a throw-away local cluster.

Back up a folder with a fresh key, deposit the key in the vault under a
password, lose the device, guess wrong once, recover with the right password,
restore, and check every byte. The password and the key are never printed.
"""

from __future__ import annotations

import filecmp
import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bkv_tools.launcher import LocalCluster

Printer = Callable[[str], None]
TOTAL_STEPS = 9


class DemoFailed(Exception):
    """A demo step did not give the expected result (one-line reason)."""


def make_sample_folder(root: Path) -> None:
    """A small "phone": a messages database and a few photos of random bytes."""
    root.mkdir(parents=True)
    with sqlite3.connect(root / "messages.db") as db:
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT, body TEXT)")
        db.executemany(
            "INSERT INTO messages (sender, body) VALUES (?, ?)",
            [("alice", f"message {i}: see you at {i % 24:02d}:00") for i in range(500)],
        )
    db.close()
    photos = root / "photos"
    photos.mkdir()
    for i, size in enumerate((180_000, 75_000, 300_000), start=1):
        (photos / f"IMG_{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(size))


def same_tree(a: Path, b: Path) -> bool:
    """True when both trees hold the same relative paths with byte-identical contents."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel in files_a)


def run_demo(state_dir: Path | None = None, *, say: Printer = print) -> None:
    """Run every step; raises DemoFailed (or a library error) on the first failure."""
    with tempfile.TemporaryDirectory(prefix="bkv-demo-") as tmp:
        work = Path(tmp)
        cluster = LocalCluster(state_dir if state_dir is not None else work / "cluster",
                               tls=True)
        try:
            _story(cluster, work, say)
        finally:
            say("Stopping the cluster ...")
            stopped = cluster.down()
            say(f"  stopped {len(stopped)} process(es)")


def _step(say: Printer, n: int, text: str) -> None:
    say(f"[{n}/{TOTAL_STEPS}] {text}")


def _story(cluster: LocalCluster, work: Path, say: Printer) -> None:
    from client_sdk import repository
    from client_sdk.errors import WrongPassword
    from client_sdk.keys import BackupKey
    from client_sdk.vault_client import VaultClient

    _step(say, 1, "Starting a local vault cluster: 5 vault nodes over 3 data centers, "
                  "one ChatD per data center")
    started = time.monotonic()
    config = cluster.up()
    leader = cluster.leader(0)
    say(f"  healthy in {time.monotonic() - started:.1f}s; Raft leader is {leader}")

    _step(say, 2, "Creating a sample phone: a messages database and three photos")
    phone = work / "phone"
    make_sample_folder(phone)
    size = sum(p.stat().st_size for p in phone.rglob("*") if p.is_file())
    say(f"  {phone} ({size / 1e6:.1f} MB)")

    _step(say, 3, "Backing up with a new 256-bit backup key (age files, encrypted on device)")
    key = BackupKey.generate()
    storage = work / "cloud-storage"
    storage.mkdir()
    backup_id = repository.create(phone, str(storage), key).snapshot_id
    say(f"  backup {backup_id} stored in {storage}")
    say(f"  backup key: {key.digits().split(' ')[0]} … (never shown in full)")

    account = f"demo-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)  # stands in for what the user types; never printed
    wrong = password + "x"
    _step(say, 4, f"Depositing the key in the vault for account {account}, under a password")
    with VaultClient(config) as client:
        client.register(account, key.raw, password)
    say("  the vault holds an OPAQUE record and the key sealed under the export key; "
        "it never saw either secret")

    _step(say, 5, "Losing the device: the key is forgotten (the original folder is kept "
                  "aside only for the final comparison)")
    del key
    new_phone = work / "new-phone"

    _step(say, 6, "Recovering on a new device with a mistyped password")
    with VaultClient(config) as client:
        try:
            client.recover(account, wrong)
        except WrongPassword as err:
            say(f"  vault says: {err}")
            if err.attempts_left != cluster.attempt_limit - 1:
                raise DemoFailed(f"expected {cluster.attempt_limit - 1} attempts left") from None
        else:
            raise DemoFailed("a wrong password was accepted")

        _step(say, 7, "Recovering with the right password")
        recovered = BackupKey(client.recover(account, password))
    say(f"  got the backup key back: {recovered.digits().split(' ')[0]} …")

    _step(say, 8, "Restoring the backup onto the new device")
    repository.restore(backup_id, str(storage), recovered, new_phone)

    _step(say, 9, "Checking the restored files byte for byte")
    if not same_tree(phone, new_phone):
        raise DemoFailed("the restored files differ from the originals")
    count = sum(1 for p in new_phone.rglob("*") if p.is_file())
    say(f"  {count} files identical. Demo complete.")

