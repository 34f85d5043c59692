"""Killed, interrupted and concurrent backups leave a valid repository and nothing half-done.

Real `bkv` processes, real signals: SIGKILL at seeded random moments of a
backup (then check, restore and back up again), Ctrl-C (SIGINT) during a
backup or a restore (exit 130, nothing left behind), two backups at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .conftest import BKV, KeyPair, err_line, listing, run_bkv, tree_snapshot

KILLS = 6
WAIT = 30.0


def _source(root: Path, seed: int, files: int, size: int) -> Path:
    rng = random.Random(seed)
    (root / "media").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / "media" / f"IMG-{seed}-{i}.jpg").write_bytes(rng.randbytes(size))
    for i in range(40):
        (root / f"note-{seed}-{i}.opus").write_bytes(rng.randbytes(rng.randint(1000, 60_000)))
    return root


def _start(*args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [BKV, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for(predicate: object, proc: subprocess.Popen[bytes]) -> bool:
    """Poll until the process is visibly at work (bounded); False if it ended first."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the process never started working")


def _working(store: Path) -> bool:
    return any(name.startswith("lock-") for name in listing(store)) if store.exists() else False


def _check(store: Path, key: KeyPair) -> str:
    result = run_bkv("backup", "check", "--to", store, "--key-file", key.path, "--read-data")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def _ids(store: Path, key: KeyPair) -> list[str]:
    listed = run_bkv("backup", "list", "--to", store, "--key-file", key.path, "--json")
    assert listed.returncode == 0, listed.stderr
    return [row["id"] for row in json.loads(listed.stdout)]


def test_sigkill_at_random_moments(tmp_path: Path, key: KeyPair) -> None:
    src, store = _source(tmp_path / "src", 1, 4, 3_000_000), tmp_path / "store"
    first = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path)
    assert first.returncode == 0, first.stderr
    baseline_id, baseline = first.stdout.decode().strip(), tree_snapshot(src)
    rng = random.Random(20261130)
    for round_ in range(KILLS):
        _source(src, 100 + round_, 4, 3_000_000)  # new data for every attempt
        proc = _start("backup", "create", src, "--to", store, "--key-file", key.path, "-q")
        if _wait_for(lambda: _working(store), proc):
            time.sleep(rng.uniform(0, 0.5))
            proc.kill()
        proc.wait(timeout=WAIT)
        proc.communicate()
        ids = _ids(store, key)  # only complete backups are listed
        assert baseline_id in ids
        _check(store, key)  # no snapshot names a missing chunk or pack
    final = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path, "--json")
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert "packs left by an interrupted backup" not in _check(store, key)
    for snapshot_id, expected in ((baseline_id, baseline), (report["snapshot_id"], None)):
        dest = tmp_path / f"restore-{snapshot_id}"
        restored = run_bkv("backup", "restore", snapshot_id, "--from", store,
                           "--key-file", key.path, dest)  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert tree_snapshot(dest) == (expected or tree_snapshot(src))
    # A forget after the crashes clears the dead processes' locks, unindexed packs and
    # (once an hour old) the part files of uploads cut short.
    parts = [store / n for n in listing(store) if n.endswith(".part")]
    for part in parts:
        os.utime(part, (time.time() - 7200, time.time() - 7200))
    forgot = run_bkv("backup", "forget", "--to", store, "--key-file", key.path, "--keep-last", "1")
    assert forgot.returncode == 0, forgot.stderr
    assert not [n for n in listing(store) if n.startswith("lock-") or n.endswith(".part")]
    assert "packs left by" not in _check(store, key)


def test_ctrl_c_during_backup_leaves_the_storage_as_it_was(tmp_path: Path, key: KeyPair) -> None:
    src, store = _source(tmp_path / "src", 2, 6, 3_000_000), tmp_path / "store"
    done = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path)
    assert done.returncode == 0, done.stderr
    rng = random.Random(7)
    for round_ in range(4):
        _source(src, 200 + round_, 6, 3_000_000)
        before = listing(store)
        proc = _start("backup", "create", src, "--to", store, "--key-file", key.path, "-q")
        if _wait_for(lambda: _working(store), proc):
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
        assert "Traceback" not in err.decode(), err
        if proc.returncode == 130:
            assert err.decode().strip().endswith("bkv: interrupted")
            assert listing(store) == before  # hidden part files included
        else:  # it finished before the signal
            assert proc.returncode == 0, err
            assert out.decode().strip() in _ids(store, key)
    _check(store, key)


def test_ctrl_c_during_restore_leaves_no_destination(tmp_path: Path, key: KeyPair) -> None:
    src, store = _source(tmp_path / "src", 3, 10, 3_000_000), tmp_path / "store"
    made = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path)
    assert made.returncode == 0, made.stderr
    snapshot_id = made.stdout.decode().strip()
    out = tmp_path / "out"
    out.mkdir()
    rng = random.Random(11)
    interrupted = 0
    for _ in range(4):
        dest = out / "dest"
        proc = _start("backup", "restore", snapshot_id, "--from", store,
                      "--key-file", key.path, dest, "-q")  # fmt: skip
        if _wait_for(lambda: bool(listing(out)), proc):
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=WAIT)
        assert "Traceback" not in err.decode(), err
        if proc.returncode == 130:
            interrupted += 1
            assert listing(out) == []  # no destination, no temporary folder
        else:
            assert proc.returncode == 0, err
            assert tree_snapshot(dest) == tree_snapshot(src)
            shutil.rmtree(dest)
    assert interrupted


def test_two_backups_at_once_both_succeed(tmp_path: Path, key: KeyPair) -> None:
    one = _source(tmp_path / "one", 4, 4, 2_000_000)
    two = _source(tmp_path / "two", 5, 4, 2_000_000)
    shutil.copy(one / "media" / "IMG-4-0.jpg", two / "shared.jpg")  # the same data in both
    store = tmp_path / "store"
    run_bkv("backup", "create", one, "--to", store, "--key-file", key.path)  # the repository
    procs = [
        _start("backup", "create", src, "--to", store, "--key-file", key.path, "-q")
        for src in (one, two)
    ]
    results = [(p.communicate(timeout=WAIT), p.returncode) for p in procs]
    assert [code for _out, code in results] == [0, 0], results
    _check(store, key)
    for (out, _err), src in zip((r[0] for r in results), (one, two), strict=True):
        dest = tmp_path / f"restored-{src.name}"
        restored = run_bkv("backup", "restore", out.decode().strip(), "--from", store,
                           "--key-file", key.path, dest)  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert tree_snapshot(dest) == tree_snapshot(src)


def test_forget_waits_for_no_one_but_never_runs_beside_a_backup(
    tmp_path: Path, key: KeyPair
) -> None:
    src, store = _source(tmp_path / "src", 6, 8, 3_000_000), tmp_path / "store"
    assert run_bkv("backup", "create", src, "--to", store, "--key-file", key.path).returncode == 0
    _source(src, 60, 8, 3_000_000)
    backup = _start("backup", "create", src, "--to", store, "--key-file", key.path, "-q")
    assert _wait_for(lambda: _working(store), backup)
    forget = run_bkv("backup", "forget", "--to", store, "--key-file", key.path, "--keep-last", "1")
    _out, err = backup.communicate(timeout=WAIT)
    assert backup.returncode == 0, err
    if forget.returncode != 0:  # it met the backup's lock: refused, changed nothing
        assert forget.returncode == 1
        assert "is in use by a backup" in err_line(forget)
        assert len(_ids(store, key)) == 2
    _check(store, key)


def test_sigkill_during_forget_keeps_the_repository_valid(tmp_path: Path, key: KeyPair) -> None:
    src, store = _source(tmp_path / "src", 7, 2, 3_000_000), tmp_path / "store"
    rng = random.Random(99)
    for round_ in range(2):
        for day in range(2):  # every day drops a file: prune has packs to delete and repack
            victims = sorted((src / "media").iterdir())
            if victims:
                victims[0].unlink()
            _source(src, 700 + 10 * round_ + day, 2, 3_000_000)
            made = run_bkv("backup", "create", src, "--to", store, "--key-file", key.path)
            assert made.returncode == 0, made.stderr
        latest = made.stdout.decode().strip()
        proc = _start("backup", "forget", "--to", store, "--key-file", key.path, "--keep-last", "1")
        if _wait_for(lambda: _working(store), proc):
            time.sleep(rng.uniform(0, 0.3))
            proc.kill()
        proc.communicate(timeout=WAIT)
        _check(store, key)
        dest = tmp_path / f"dest-{round_}"
        restored = run_bkv("backup", "restore", latest, "--from", store,
                           "--key-file", key.path, dest)  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert tree_snapshot(dest) == tree_snapshot(src)
