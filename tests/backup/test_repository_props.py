"""Property tests: the chunker's boundaries, and repository round trips through real folders."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import repository
from client_sdk.keys import BackupKey
from client_sdk.repository.buffers import new_buffer
from client_sdk.repository.chunker import Chunker
from client_sdk.repository.keys import RepoKeys

from .conftest import tree_snapshot

SMALL = {"min_size": 1024, "avg_size": 4096, "max_size": 16384}
PROPS = settings(max_examples=40, deadline=None, derandomize=True)


def _cuts(chunker: Chunker, data: bytes) -> list[bytes]:
    return [bytes(c) for c in chunker.buffer(data)]


@PROPS
@given(size=st.integers(0, 300_000), seed=st.integers(0, 2**32), key=st.integers(1, 2**62))
def test_every_byte_is_covered_once_within_bounds(size: int, seed: int, key: int) -> None:
    data = random.Random(seed).randbytes(size)
    chunker = Chunker(key, **SMALL)
    chunks = _cuts(chunker, data)
    assert b"".join(chunks) == data
    assert all(len(c) <= SMALL["max_size"] for c in chunks)
    assert all(len(c) >= SMALL["min_size"] for c in chunks[:-1])
    # Reading through a small reused window cuts exactly the same chunks.
    window = new_buffer(3 * SMALL["max_size"])
    assert [bytes(c) for c in chunker.file(io.BytesIO(data), window)] == chunks


@PROPS
@given(
    size=st.integers(60_000, 400_000),
    seed=st.integers(0, 2**32),
    where=st.floats(0, 1),
    inserted=st.binary(min_size=1, max_size=3000),
)
def test_an_insertion_moves_only_nearby_boundaries(
    size: int, seed: int, where: float, inserted: bytes
) -> None:
    data = random.Random(seed).randbytes(size)
    at = int(where * size)
    chunker = Chunker(7, **SMALL)
    before = _cuts(chunker, data)
    after = _cuts(chunker, data[:at] + inserted + data[at:])
    ends, pos = [], 0
    for chunk in before:
        pos += len(chunk)
        ends.append(pos)
    # Every chunk cut (not ended by the end of data) before the insertion is untouched...
    kept_prefix = [c for c, end in zip(before, ends, strict=True) if end <= at and end < size]
    assert after[: len(kept_prefix)] == kept_prefix
    # ...and after a few chunks the boundaries fall back into step.
    lost = set(before) - set(after)
    assert len(lost) <= 4, (len(before), len(lost))


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


_names = st.sampled_from(["a", "b", "c", "d/e", "d/f", "g/h/i", "photo.jpg", "db.sqlite"])
_content = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda n, s: random.Random(s).randbytes(n), st.integers(0, 600_000), st.integers()),
)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    first=st.dictionaries(_names, _content, max_size=6),
    second=st.dictionaries(_names, _content, max_size=6),
    removed=st.sets(_names, max_size=3),
)
def test_repository_round_trips(
    tmp_path_factory: object, first: dict[str, bytes], second: dict[str, bytes], removed: set[str]
) -> None:
    base = tmp_path_factory.mktemp("rt")  # type: ignore[attr-defined]
    key = BackupKey.generate()
    src, store = base / "src", str(base / "store")
    src.mkdir()
    _write_tree(src, {k: v for k, v in first.items() if not _clash(k, first)})
    one = tree_snapshot(src)
    first_id = repository.create(src, store, key).snapshot_id
    for rel in removed:
        path = src / rel
        if path.is_file():
            path.unlink()
    _write_tree(src, {k: v for k, v in second.items() if _fits(src, k)})
    two = tree_snapshot(src)
    second_id = repository.create(src, store, key).snapshot_id
    for snapshot_id, expected, name in ((first_id, one, "r1"), (second_id, two, "r2")):
        repository.restore(snapshot_id, store, key, base / name)
        assert tree_snapshot(base / name) == expected
    assert not repository.check(store, key, read_data=True).errors
    repository.forget(store, key, ids=[first_id])
    repository.restore(second_id, store, key, base / "r3")
    assert tree_snapshot(base / "r3") == two
    assert not repository.check(store, key, read_data=True).errors


def _clash(rel: str, files: dict[str, bytes]) -> bool:
    """A name that is also another file's folder ("d" and "d/e") can't be a file."""
    return any(other.startswith(rel + "/") for other in files)


def _fits(root: Path, rel: str) -> bool:
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        if (root / "/".join(parts[:depth])).is_file():
            return False
    return not (root / rel).is_dir()


def test_chunk_ids_are_keyed_and_boundaries_depend_on_the_key() -> None:
    data = random.Random(3).randbytes(400_000)
    one, two = BackupKey.generate(), BackupKey.generate()
    a, b = RepoKeys.from_backup_key(one), RepoKeys.from_backup_key(two)
    assert a.chunk_id(data) != b.chunk_id(data)
    assert a.chunk_id(data) != hashlib.sha256(data).digest()
    assert RepoKeys.from_backup_key(one).chunk_id(data) == a.chunk_id(data)
    cuts_a = [len(c) for c in Chunker(a.chunker_seed, **SMALL).buffer(data)]
    cuts_b = [len(c) for c in Chunker(b.chunker_seed, **SMALL).buffer(data)]
    assert cuts_a != cuts_b


def test_prune_repacks_partly_used_packs(tmp_path: Path) -> None:
    key = BackupKey.generate()
    src, store = tmp_path / "src", str(tmp_path / "store")
    src.mkdir()
    rng = random.Random(5)
    (src / "kept.bin").write_bytes(rng.randbytes(2_000_000))
    (src / "dropped.bin").write_bytes(rng.randbytes(2_000_000))  # same pack as kept.bin
    first = repository.create(src, store, key).snapshot_id
    (src / "dropped.bin").unlink()
    second = repository.create(src, store, key).snapshot_id
    result = repository.forget(store, key, ids=[first])
    assert result.repacked_packs == 1 and result.removed == [first]
    packs = [p for p in Path(store).iterdir() if p.name.startswith("pack-")]
    assert sum(p.stat().st_size for p in packs) < 2_100_000  # the dropped file is gone
    assert not repository.check(store, key, read_data=True).errors
    repository.restore(second, store, key, tmp_path / "dest")
    assert tree_snapshot(tmp_path / "dest") == tree_snapshot(src)


def test_a_held_lock_is_refreshed_and_removed(tmp_path: Path) -> None:
    import time

    from client_sdk.repository.lock import is_lock_name, locked, read_locks

    repo = repository.Repository.open(str(tmp_path / "store"), BackupKey.generate(), create=True)
    with locked(repo, exclusive=False, refresh=0.05):
        (first,) = read_locks(repo, repo.storage.names())
        time.sleep(0.4)
        (later,) = read_locks(repo, repo.storage.names())
        assert later.name == first.name and later.time > first.time
        assert not first.stale(time.time()) and later.pid == os.getpid()
    assert not [n for n in repo.storage.names() if is_lock_name(n)]
