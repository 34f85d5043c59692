"""Incremental backup benchmark: bkv against restic on a WhatsApp-like folder.

Builds a folder like a phone's chat backup (a message database, 2 MB photos,
videos, voice notes; ``--size-mb`` scales it), then times, side by side in one
run, for both tools: the first backup, the backup after a small day's change
(database +1 % and a few pages rewritten, 5 photos, 20 voice notes), and a
full restore from cold storage (both repositories are dropped from the page
cache first). Prints seconds, CPU seconds, stored bytes and peak RSS.
Figures are printed, never asserted; the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bkv_ops.console import quiet_on_closed_pipe
from client_sdk.keys import BackupKey, write_key_file

MB = 1000 * 1000
MIB = 1024 * 1024
BASE_MB = 640
PHOTO = 2 * MB
VIDEO = 20 * MB


@dataclass
class Figures:
    seconds: dict[str, float] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def _write(path: Path, rng: random.Random, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            step = min(left, 8 * MIB)
            out.write(rng.randbytes(step))
            left -= step
    return size


def build_folder(root: Path, size_mb: int, rng: random.Random) -> int:
    """Message DB, photos, videos and voice notes in WhatsApp's layout; returns bytes."""
    scale = size_mb / BASE_MB
    media = root / "Media"
    total = _write(root / "Databases" / "msgstore.db.crypt15", rng, int(48 * MB * scale))
    for i in range(max(1, round(150 * scale))):
        total += _write(media / "WhatsApp Images" / f"IMG-2026{i:04d}-WA0000.jpg", rng, PHOTO)
    for i in range(max(1, round(10 * scale))):
        total += _write(media / "WhatsApp Video" / f"VID-2026{i:04d}-WA0000.mp4", rng, VIDEO)
    for i in range(max(1, round(2000 * scale))):
        notes = media / "WhatsApp Voice Notes" / f"2026{i // 100:02d}"
        total += _write(notes / f"PTT-2026{i:05d}-WA0000.opus", rng, rng.randint(30_000, 62_000))
    return total


def change_folder(root: Path, rng: random.Random) -> int:
    """One day: the message DB grows by 1 %, 5 photos and 20 voice notes arrive."""
    db = root / "Databases" / "msgstore.db.crypt15"
    size = db.stat().st_size
    with db.open("ab") as handle:
        handle.write(rng.randbytes(size // 100))
    changed = size // 100
    media = root / "Media"
    for i in range(5):
        changed += _write(media / "WhatsApp Images" / f"IMG-2027{i:04d}-WA0001.jpg", rng, PHOTO)
    for i in range(20):
        notes = media / "WhatsApp Voice Notes" / "new"
        changed += _write(notes / f"PTT-2027{i:05d}-WA0001.opus", rng, rng.randint(30_000, 62_000))
    return changed


def _run_rss(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[float, int, str, float]:
    """Run one command; return (seconds, peak RSS bytes, stdout, CPU seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.posix_spawn(argv[0], argv, env if env is not None else dict(os.environ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                                           (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])  # fmt: skip
        _pid, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{argv[0]} failed: {err.read().decode(errors='replace').strip()}")
        cpu = usage.ru_utime + usage.ru_stime
        return elapsed, usage.ru_maxrss * 1024, out.read().decode(), cpu


def _stored(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def _bkv(work: Path, src: Path, figures: Figures, step: str) -> None:
    bkv = str(Path(sys.executable).with_name("bkv"))
    repo, key = work / "bkv-repo", work / "bkv.key"
    if step == "restore":
        listed = _run_rss([bkv, "backup", "list", "--to", str(repo), "--key-file", str(key),
                           "--json"])[2]  # fmt: skip
        latest = listed.split('"id": "')[-1].split('"')[0]
        dest = work / "bkv-restore"
        argv = [bkv, "backup", "restore", latest, "--from", str(repo), "--key-file", str(key),
                str(dest), "-q"]  # fmt: skip
    else:
        argv = [bkv, "backup", "create", str(src), "--to", str(repo), "--key-file", str(key), "-q"]
    before = _stored(repo) if repo.exists() else 0
    seconds, rss, _out, cpu = _run_rss(argv)
    figures.seconds[step], figures.rss[step], figures.cpu[step] = seconds, rss, cpu
    figures.stored[step] = _stored(repo) - before


def _restic(work: Path, src: Path, figures: Figures, step: str, exe: str) -> None:
    repo = work / "restic-repo"
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(work / "restic.pw"),
           "RESTIC_CACHE_DIR": str(work / "restic-cache")}  # fmt: skip
    if not repo.exists():
        _run_rss([exe, "init", "-q", "-r", str(repo)], env)
    if step == "restore":
        argv = [exe, "restore", "latest", "-q", "-r", str(repo), "--target",
                str(work / "restic-restore")]  # fmt: skip
    else:
        argv = [exe, "backup", "-q", "-r", str(repo), str(src)]
    before = _stored(repo)
    seconds, rss, _out, cpu = _run_rss(argv, env)
    figures.seconds[step], figures.rss[step], figures.cpu[step] = seconds, rss, cpu
    figures.stored[step] = _stored(repo) - before


def _evict(folder: Path) -> None:
    """Drop a repository's files from the page cache: both tools restore from cold data."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _restic_version(exe: str) -> str:
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30).stdout
    return out.split()[1] if len(out.split()) > 1 else "?"


def run(size_mb: int, workdir: Path | None, seed: int, keep: bool = False) -> int:
    restic = shutil.which("restic")
    work = Path(tempfile.mkdtemp(prefix="bkv-bench-", dir=workdir))
    try:
        rng = random.Random(seed)
        src = work / "WhatsApp"
        print(f"building a {size_mb} MB WhatsApp-like folder in {work} ...", file=sys.stderr)
        total = build_folder(src, size_mb, rng)
        write_key_file(work / "bkv.key", BackupKey.generate())
        (work / "restic.pw").write_text(os.urandom(16).hex())
        (work / "restic.pw").chmod(0o600)
        bkv, other = Figures(), Figures()
        for step in ("first", "second", "restore"):
            if step == "second":
                changed = change_folder(src, rng)
            if step == "restore":
                for repo in work.glob("*-repo"):
                    _evict(repo)
            os.sync()
            _bkv(work, src, bkv, step)
            if restic:
                os.sync()
                _restic(work, src, other, step, restic)
        version = _restic_version(restic) if restic else "not installed"
        _print(total, changed, bkv, other if restic else None, version)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _print(total: int, changed: int, bkv: Figures, restic: Figures | None, version: str) -> None:
    print(f"\nbkv vs restic {version}: {total / MB:.0f} MB WhatsApp-like folder, "
          f"then a {changed / MB:.1f} MB change; {os.cpu_count()} cores")  # fmt: skip
    print(f"{'step':<16}{'bkv s':>8}{'restic s':>10}{'speed-up':>10}{'bkv cpu':>9}"
          f"{'restic cpu':>12}{'bkv stored':>12}{'restic stored':>15}{'bkv RSS':>9}"
          f"{'restic RSS':>12}")  # fmt: skip
    names = {"first": "first backup", "second": "second backup", "restore": "full restore"}
    for step, label in names.items():
        ours = bkv.seconds[step]
        theirs = restic.seconds[step] if restic else float("nan")
        cpu_r = f"{restic.cpu[step]:.2f}" if restic else "-"
        stored_r = f"{restic.stored[step] / MB:.1f} MB" if restic and step != "restore" else "-"
        stored_b = f"{bkv.stored[step] / MB:.1f} MB" if step != "restore" else "-"
        rss_r = f"{restic.rss[step] / MIB:.0f} MiB" if restic else "-"
        rss_b = f"{bkv.rss[step] / MIB:.0f} MiB"
        print(f"{label:<16}{ours:>8.2f}{theirs:>10.2f}{theirs / ours:>9.1f}x{bkv.cpu[step]:>9.2f}"
              f"{cpu_r:>12}{stored_b:>12}{stored_r:>15}{rss_b:>9}{rss_r:>12}")  # fmt: skip
    print("\ntargets (printed, not asserted):")
    ratio = bkv.stored["second"] / changed
    print(f"  second backup stores <= 1.5x the change: {ratio:.2f}x  {_mark(ratio <= 1.5)}")
    if restic:
        for step, label in names.items():
            speed = restic.seconds[step] / bkv.seconds[step]
            print(f"  {label} >= 2x faster than restic: {speed:.1f}x  {_mark(speed >= 2)}")
    peak = max(bkv.rss.values()) / MIB
    print(f"  peak RSS <= 256 MiB: {peak:.0f} MiB  {_mark(peak <= 256)}")


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bkv bench backup", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=BASE_MB, help="folder size (default 640)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default /tmp)")
    parser.add_argument("--seed", type=int, default=1, help="content seed")
    args = parser.parse_args(argv)
    if not 8 <= args.size_mb <= 1_000_000:
        parser.error("--size-mb must be between 8 and 1000000")
    return run(args.size_mb, args.workdir, args.seed)


if __name__ == "__main__":
    sys.exit(main())
