"""The anti-rollback high-water mark: its semantics on both stores, and each store's defences.

The semantic tests run against the software file and against a real SoftHSM2 token
(skipped only when softhsm2 is not installed, like ``test_hsm_pkcs11.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vault.softhsm import SoftHsm, softhsm_fixture
from vault_node import cli as node_cli
from vault_node.config import ConfigError, NodeConfig
from vault_node.hsm.fleet import MASTER_KEY_ENV, HsmError, SoftwareMasterKey
from vault_node.hsm.high_water import (
    FILE_BYTES,
    MARK_OBJECT_LABEL,
    HighWaterDamaged,
    HighWaterMark,
    LogPosition,
    RollbackRefused,
    SoftwareHighWater,
    node_scope,
)
from vault_node.hsm.pkcs11 import Pkcs11MasterKey, create_token_key, node_high_water

P = LogPosition
positions = st.builds(LogPosition, st.integers(0, 4), st.integers(0, 2**63 - 1))
small_positions = st.builds(LogPosition, st.integers(0, 3), st.integers(0, 50))

MarkFactory = Callable[[], HighWaterMark]


# -- LogPosition -----------------------------------------------------------------


@given(positions, positions)
def test_positions_order_by_epoch_then_index(a: LogPosition, b: LogPosition) -> None:
    assert (a < b) == ((a.epoch, a.index) < (b.epoch, b.index))
    assert (a == b) == ((a.epoch, a.index) == (b.epoch, b.index))
    assert LogPosition.decode(a.encode()) == a


def test_a_rebuilt_shard_ranks_above_any_index_of_the_old_one() -> None:
    assert P(1, 0) > P(0, 2**63 - 1)
    assert str(P(2, 17)) == "epoch 2, index 17"
    assert P(2, 17).to_plain() == {"epoch": 2, "index": 17}


@pytest.mark.parametrize("epoch, index", [(-1, 0), (0, -1), (0, 2**63), (2**64, 0)])
def test_positions_out_of_range_are_refused(epoch: int, index: int) -> None:
    with pytest.raises(ValueError):
        LogPosition(epoch, index)


@pytest.mark.parametrize("epoch, index", [(True, 0), (0, 1.0), ("1", 2)])
def test_positions_are_ints(epoch: object, index: object) -> None:
    with pytest.raises(TypeError):
        LogPosition(epoch, index)  # type: ignore[arg-type]


# -- the two stores ---------------------------------------------------------------


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed")
    for hsm in softhsm_fixture(tmp_path_factory):
        for label in ("bkv-hw", "bkv-hw-b", "bkv-hw-cli"):
            assert create_token_key(hsm.settings(label)) is True
        yield hsm


@pytest.fixture(scope="module")
def token_master(softhsm: SoftHsm) -> Iterator[Pkcs11MasterKey]:
    master = Pkcs11MasterKey.open_token(softhsm.settings("bkv-hw"))
    yield master
    master.close()


def _software_factory(root: Path) -> MarkFactory:
    master = SoftwareMasterKey(secrets.token_bytes(32), key_file=root / "master.key")
    counter = itertools.count()
    return lambda: master.high_water(f"shard-0.n{next(counter)}")


def _token_factory(master: Pkcs11MasterKey) -> MarkFactory:
    run = secrets.token_hex(4)  # the token outlives a test: fresh names every time
    counter = itertools.count()
    return lambda: master.high_water(f"shard-0.{run}-n{next(counter)}")


@pytest.fixture(params=["software", "pkcs11"])
def new_mark(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> MarkFactory:
    """Makes a fresh mark (a new node's) in the store under test, as often as asked."""
    if request.param == "software":
        return _software_factory(tmp_path_factory.mktemp("keys"))
    return _token_factory(request.getfixturevalue("token_master"))


def test_a_fresh_mark_is_empty_and_refuses_nothing(new_mark: MarkFactory) -> None:
    mark = new_mark()
    assert mark.current() is None
    mark.check(P(0, 0))
    mark.check(P(5, 9))


def test_attest_raises_the_mark_and_check_refuses_older(new_mark: MarkFactory) -> None:
    mark = new_mark()
    mark.attest(P(0, 10))
    assert mark.current() == P(0, 10)
    mark.check(P(0, 10))  # the attested position itself is fine
    mark.check(P(0, 11))
    mark.check(P(1, 0))
    with pytest.raises(RollbackRefused) as info:
        mark.check(P(0, 9))
    assert info.value.attested == P(0, 10) and info.value.offered == P(0, 9)
    assert "epoch 0, index 10" in str(info.value) and "epoch 0, index 9" in str(info.value)
    assert isinstance(info.value, HsmError)


def test_attest_never_moves_the_mark_back(new_mark: MarkFactory) -> None:
    mark = new_mark()
    mark.attest(P(1, 5))
    mark.attest(P(0, 1000))  # an older epoch, whatever its index
    mark.attest(P(1, 4))
    mark.attest(P(1, 5))
    assert mark.current() == P(1, 5)
    mark.attest(P(2, 0))
    assert mark.current() == P(2, 0)
    with pytest.raises(RollbackRefused):
        mark.check(P(1, 999_999))


def test_accept_rollback_lowers_the_mark_and_returns_the_old_one(new_mark: MarkFactory) -> None:
    mark = new_mark()
    assert mark.accept_rollback(P(0, 3)) is None  # also sets a first mark
    mark.attest(P(0, 50))
    assert mark.accept_rollback(P(0, 20)) == P(0, 50)
    assert mark.current() == P(0, 20)
    mark.check(P(0, 20))
    with pytest.raises(RollbackRefused):
        mark.check(P(0, 19))
    mark.attest(P(0, 21))  # and it climbs again from there
    assert mark.current() == P(0, 21)
    assert mark.accept_rollback(P(3, 0)) == P(0, 21)  # "accept" may also set it higher
    assert mark.current() == P(3, 0)


def test_the_mark_is_durable_and_per_node(new_mark: MarkFactory) -> None:
    mark, other = new_mark(), new_mark()
    mark.attest(P(0, 7))
    assert other.current() is None  # another node's mark is its own
    other.attest(P(0, 2))
    assert mark.current() == P(0, 7)


def test_a_store_rolled_back_under_a_running_node_is_refused(
    new_mark: MarkFactory, request: pytest.FixtureRequest
) -> None:
    mark = new_mark()
    mark.attest(P(0, 5))
    if isinstance(mark, SoftwareHighWater):
        old = mark.path.read_bytes()
        mark.attest(P(0, 9))
        mark.path.write_bytes(old)  # the old file copied back
        with pytest.raises(HighWaterDamaged, match="went back while in use"):
            mark.current()
        with pytest.raises(HighWaterDamaged):
            mark.attest(P(0, 10))
    else:
        _destroy_token_mark(request.getfixturevalue("softhsm"), "bkv-hw", mark)
        with pytest.raises(HighWaterDamaged, match="it was at epoch 0, index 5 and is gone"):
            mark.current()


def test_wrong_types_are_refused(new_mark: MarkFactory) -> None:
    mark = new_mark()
    for call in (mark.check, mark.attest, mark.accept_rollback):
        with pytest.raises(TypeError):
            call((0, 1))  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_mark_is_the_maximum_of_everything_attested_since_the_last_accept(
    data: st.DataObject, new_mark_module: MarkFactory
) -> None:
    mark = new_mark_module()
    model: LogPosition | None = None
    ops = data.draw(
        st.lists(st.tuples(st.sampled_from(["attest", "accept", "check"]), small_positions),
                 max_size=12)
    )
    for op, position in ops:
        if op == "attest":
            mark.attest(position)
            model = position if model is None else max(model, position)
        elif op == "accept":
            assert mark.accept_rollback(position) == model
            model = position
        elif model is not None and position < model:
            with pytest.raises(RollbackRefused):
                mark.check(position)
        else:
            mark.check(position)
        assert mark.current() == model


@pytest.fixture(scope="module", params=["software", "pkcs11"])
def new_mark_module(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> MarkFactory:
    """As ``new_mark``, module-scoped so that hypothesis can call one factory many times."""
    if request.param == "software":
        return _software_factory(tmp_path_factory.mktemp("keys"))
    return _token_factory(request.getfixturevalue("token_master"))


# -- the software file ------------------------------------------------------------


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    key = folder / "master.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    return folder


def _soft_mark(key_dir: Path, scope: str = "shard-0.n1") -> SoftwareHighWater:
    mark = SoftwareMasterKey.from_file(key_dir / "master.key").high_water(scope)
    assert isinstance(mark, SoftwareHighWater)
    return mark


def test_the_file_sits_next_to_the_key_0600_and_alone(key_dir: Path) -> None:
    mark = _soft_mark(key_dir)
    assert mark.path == key_dir / "master.key.high-water.shard-0.n1"
    assert not mark.path.exists()
    mark.attest(P(0, 1))
    mark.attest(P(0, 2))
    assert mark.path.stat().st_mode & 0o777 == 0o600
    assert len(mark.path.read_bytes()) == FILE_BYTES
    assert sorted(p.name for p in key_dir.iterdir()) == [
        "master.key", "master.key.high-water.shard-0.n1"
    ]  # no temporary file left behind
    odd = _soft_mark(key_dir, "shard-0.../../x")  # never a path out of the folder
    assert odd.path.parent == key_dir and odd.path.name.startswith("master.key.high-water.h")


def test_every_edit_or_truncation_of_the_file_is_refused(key_dir: Path) -> None:
    mark = _soft_mark(key_dir)
    mark.attest(P(3, 1_000_000))
    good = mark.path.read_bytes()
    for index in range(len(good)):
        for flip in (0x01, 0x80):
            edited = bytearray(good)
            edited[index] ^= flip
            mark.path.write_bytes(bytes(edited))
            with pytest.raises(HighWaterDamaged):
                _soft_mark(key_dir).current()
    for cut in range(len(good)):
        mark.path.write_bytes(good[:cut])
        with pytest.raises(HighWaterDamaged, match="truncated"):
            _soft_mark(key_dir).current()
    mark.path.write_bytes(good + b"\x00")
    with pytest.raises(HighWaterDamaged):
        _soft_mark(key_dir).check(P(9, 9))
    mark.path.write_bytes(good)
    assert _soft_mark(key_dir).current() == P(3, 1_000_000)


def test_a_damaged_file_is_refused_by_every_operation(key_dir: Path) -> None:
    mark = _soft_mark(key_dir)
    mark.attest(P(0, 40))
    mark.path.write_bytes(mark.path.read_bytes()[:-1] + b"\x00")
    fresh = _soft_mark(key_dir)
    for call in (fresh.check, fresh.attest, fresh.accept_rollback):
        with pytest.raises(HighWaterDamaged):
            call(P(0, 50))
    mark.path.unlink()  # the manual reset: and exactly why a disk rollback defeats it
    assert _soft_mark(key_dir).current() is None


def test_a_file_of_another_node_or_another_key_is_refused(key_dir: Path, tmp_path: Path) -> None:
    mine, theirs = _soft_mark(key_dir, "shard-0.n1"), _soft_mark(key_dir, "shard-0.n2")
    mine.attest(P(0, 5))
    theirs.attest(P(0, 900))
    mine.path.write_bytes(theirs.path.read_bytes())  # a higher mark, but not this node's
    with pytest.raises(HighWaterDamaged, match="does not verify"):
        _soft_mark(key_dir, "shard-0.n1").current()
    other_key = SoftwareMasterKey(secrets.token_bytes(32), high_water_file=theirs.path)
    with pytest.raises(HighWaterDamaged, match="does not verify"):
        other_key.high_water("shard-0.n2").current()


def test_the_file_format_and_its_mac_under_a_derived_key(key_dir: Path) -> None:
    key = bytes.fromhex((key_dir / "master.key").read_text().strip())
    mark = _soft_mark(key_dir)
    mark.attest(P(1, 2))
    blob = mark.path.read_bytes()
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"bkv high-water mark mac key v1").derive(key)
    scope = b"shard-0.n1"
    body = (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    magic = b"BKVHWM\x00\x01"
    message = magic + b"bkv high-water mark v1\x00" + len(scope).to_bytes(2, "big") + scope + body
    assert blob == magic + body + hmac.new(mac_key, message, hashlib.sha256).digest()
    assert key.hex() not in blob.hex() and mac_key != key


def test_a_crash_before_the_rename_leaves_the_old_mark(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = _soft_mark(key_dir)
    mark.attest(P(0, 1))
    before = mark.path.read_bytes()

    def crash(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", crash)
        with pytest.raises(HsmError, match="cannot write high-water file"):
            mark.attest(P(0, 2))
    assert mark.path.read_bytes() == before
    assert _soft_mark(key_dir).current() == P(0, 1)
    mark.attest(P(0, 3))  # the leftover temporary file is simply replaced
    assert _soft_mark(key_dir).current() == P(0, 3)


def test_the_new_file_is_synced_before_it_replaces_the_old(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = _soft_mark(key_dir)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    mark.attest(P(0, 1))
    assert events == ["fsync-file", "rename", "fsync-dir"]


_CRASH_CHILD = """
import itertools, sys
from pathlib import Path
from vault_node.hsm.fleet import SoftwareMasterKey
from vault_node.hsm.high_water import LogPosition
mark = SoftwareMasterKey.from_file(Path(sys.argv[1])).high_water("shard-0.n1")
start = mark.current()
print("ready", flush=True)
for i in itertools.count((start.index + 1) if start else 1):
    mark.attest(LogPosition(i // 7, i))
"""


def test_a_killed_writer_leaves_the_old_or_the_new_file(key_dir: Path) -> None:
    """SIGKILL the process at random moments while it attests: the file always verifies."""
    last: LogPosition | None = None
    env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    for delay in [0.0, 0.001, 0.003, 0.01, 0.02, 0.05, *[secrets.randbelow(80) / 1000
                                                        for _ in range(6)]]:
        child = subprocess.Popen(
            [sys.executable, "-c", _CRASH_CHILD, str(key_dir / "master.key")],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        now = _soft_mark(key_dir).current()  # never HighWaterDamaged
        if now is None:  # killed before its first write
            assert last is None
            continue
        assert last is None or now >= last
        assert now.epoch == now.index // 7
        last = now
    assert last is not None and last.index > 1


def test_env_key_needs_an_explicit_file(tmp_path: Path, key_dir: Path) -> None:
    env = {MASTER_KEY_ENV: secrets.token_hex(32)}
    with pytest.raises(HsmError, match="set high_water_file"):
        SoftwareMasterKey.load(None, env).high_water("shard-0.n1")
    target = tmp_path / "hw" / "node.mark"
    mark = SoftwareMasterKey.load(None, env, high_water_file=target).high_water("shard-0.n1")
    mark.attest(P(0, 4))  # its folder is created on first write
    assert target.exists() and target.parent.stat().st_mode & 0o777 == 0o700


# -- the node config, the loader and the CLI -------------------------------------


def _config(tmp_path: Path, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node_id": "n1",
        "datacenter": "dc1",
        "shard": 3,
        "grpc_address": "127.0.0.1:1",
        "raft_address": "127.0.0.1:2",
        "data_dir": str(tmp_path / "data"),
        "fleet_file": str(tmp_path / "fleet"),
        "master_key_file": str(tmp_path / "secrets" / "master.key"),
        "peers": [
            {"node_id": "n1", "datacenter": "dc1"}
            | {"raft_address": "127.0.0.1:2", "grpc_address": "127.0.0.1:1"}
        ],
    }
    return base | overrides


def _write_config(tmp_path: Path, raw: dict[str, object]) -> Path:
    import tomli_w

    path = tmp_path / f"node-{secrets.token_hex(3)}.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def test_the_loader_names_the_node_and_keeps_the_file_out_of_the_data_dir(
    tmp_path: Path, key_dir: Path
) -> None:
    cfg = NodeConfig.from_mapping(_config(tmp_path))
    master = SoftwareMasterKey.from_file(key_dir / "master.key")
    mark = node_high_water(cfg, master)
    assert isinstance(mark, SoftwareHighWater)
    assert node_scope(3, "n1") == "shard-3.n1"
    assert mark.path == key_dir / "master.key.high-water.shard-3.n1"
    inside = tmp_path / "data" / "hw"
    cfg = NodeConfig.from_mapping(_config(tmp_path, high_water_file=str(inside)))
    with pytest.raises(HsmError, match="inside the data directory"):
        node_high_water(cfg, SoftwareMasterKey.from_file(key_dir / "master.key",
                                                         high_water_file=inside))
    with pytest.raises(ConfigError, match="high_water_file"):
        NodeConfig.from_mapping(_config(
            tmp_path, high_water_file=str(tmp_path / "hw"), master_key_backend="pkcs11",
            pkcs11_module="/x.so", pkcs11_token_label="t", pkcs11_key_label="k",
        ))


def test_cli_shows_the_software_mark(
    tmp_path: Path, key_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    config = _write_config(tmp_path, _config(tmp_path))
    show = ["hsm", "high-water", "show", "--config", str(config)]
    assert node_cli.main(show) == 0
    out = capsys.readouterr().out
    assert "n1 (shard 3) high-water mark: nothing attested yet" in out
    assert str(key_dir / "master.key.high-water.shard-3.n1") in out
    assert node_cli.main([*show, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["high_water"] is None

    cfg = NodeConfig.load(config)
    node_high_water(cfg, SoftwareMasterKey.from_file(key_dir / "master.key")).attest(P(2, 77))
    assert node_cli.main(show) == 0
    assert "high-water mark: epoch 2, index 77" in capsys.readouterr().out
    assert node_cli.main([*show, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {
        "node_id": "n1", "shard": 3, "backend": "software",
        "where": f"file {key_dir / 'master.key.high-water.shard-3.n1'}",
        "high_water": {"epoch": 2, "index": 77},
    }
    key_text = (key_dir / "master.key").read_text().strip()

    mark_file = key_dir / "master.key.high-water.shard-3.n1"
    mark_file.write_bytes(mark_file.read_bytes()[:-3])
    assert node_cli.main(show) == 6  # DAMAGED
    err = capsys.readouterr().err
    assert err.startswith("bkv-vault-node: high-water file") and err.count("\n") == 1
    assert key_text not in err
    (key_dir / "master.key").unlink()
    assert node_cli.main(show) == 2


# -- the PKCS#11 token object -----------------------------------------------------


def _destroy_token_mark(softhsm: SoftHsm, token: str, mark: HighWaterMark) -> None:
    import pkcs11

    attr = pkcs11.Attribute
    tok = pkcs11.lib(str(softhsm.module)).get_token(token_label=token)
    with tok.open(rw=True) as session:  # shares the login of the module's open master
        (obj,) = list(session.get_objects({attr.CLASS: pkcs11.ObjectClass.DATA,
                                           attr.LABEL: MARK_OBJECT_LABEL,
                                           attr.APPLICATION: mark._scope}))  # type: ignore[attr-defined]
        obj.destroy()


def test_the_token_object_is_a_private_data_object(
    softhsm: SoftHsm, token_master: Pkcs11MasterKey
) -> None:
    import pkcs11

    attr = pkcs11.Attribute
    scope = f"shard-1.{secrets.token_hex(4)}"
    token_master.high_water(scope).attest(P(4, 2**40))
    tok = pkcs11.lib(str(softhsm.module)).get_token(token_label="bkv-hw")
    with tok.open() as session:
        (obj,) = list(session.get_objects({attr.APPLICATION: scope}))
        assert obj[attr.CLASS] == pkcs11.ObjectClass.DATA
        assert obj[attr.TOKEN] and obj[attr.PRIVATE]
        assert obj[attr.LABEL] == MARK_OBJECT_LABEL
        assert obj[attr.VALUE] == b"BKVHWT\x00\x01" + P(4, 2**40).encode()


def test_a_planted_public_or_malformed_token_object_does_not_count(
    softhsm: SoftHsm, token_master: Pkcs11MasterKey
) -> None:
    import pkcs11

    attr = pkcs11.Attribute
    scope = f"shard-1.{secrets.token_hex(4)}"
    mark = token_master.high_water(scope)
    mark.attest(P(0, 10))
    tok = pkcs11.lib(str(softhsm.module)).get_token(token_label="bkv-hw")
    template = {attr.CLASS: pkcs11.ObjectClass.DATA, attr.TOKEN: True,
                attr.LABEL: MARK_OBJECT_LABEL, attr.APPLICATION: scope}
    with tok.open(rw=True) as session:
        session.create_object(template | {attr.PRIVATE: False,
                                          attr.VALUE: b"BKVHWT\x00\x01" + P(0, 1).encode()})
    assert token_master.high_water(scope).current() == P(0, 10)  # the public one is ignored
    with tok.open(rw=True) as session:
        session.create_object(template | {attr.PRIVATE: True, attr.VALUE: b"garbage"})
    with pytest.raises(HighWaterDamaged, match="malformed"):
        token_master.high_water(scope).current()
    with pytest.raises(HighWaterDamaged):
        token_master.high_water(scope).accept_rollback(P(0, 0))


def test_a_write_interrupted_between_its_two_steps_leaves_old_or_new(
    softhsm: SoftHsm, token_master: Pkcs11MasterKey
) -> None:
    import pkcs11

    attr = pkcs11.Attribute
    scope = f"shard-1.{secrets.token_hex(4)}"
    token_master.high_water(scope).attest(P(0, 10))
    tok = pkcs11.lib(str(softhsm.module)).get_token(token_label="bkv-hw")
    template = {attr.CLASS: pkcs11.ObjectClass.DATA, attr.TOKEN: True, attr.PRIVATE: True,
                attr.LABEL: MARK_OBJECT_LABEL, attr.APPLICATION: scope}
    # a raise that stopped after creating the new object: the new mark holds
    with tok.open(rw=True) as session:
        session.create_object(template | {attr.VALUE: b"BKVHWT\x00\x01" + P(0, 12).encode()})
    assert token_master.high_water(scope).current() == P(0, 12)
    # an accept-rollback that stopped there too: the old (higher) mark still holds
    with tok.open(rw=True) as session:
        session.create_object(template | {attr.VALUE: b"BKVHWT\x00\x01" + P(0, 2).encode()})
    mark = token_master.high_water(scope)
    assert mark.current() == P(0, 12)
    assert mark.accept_rollback(P(0, 2)) == P(0, 12)  # run again: one object left
    with tok.open() as session:
        assert len(list(session.get_objects(template))) == 1
    assert mark.current() == P(0, 2)


def test_a_closed_token_backend_fails_instead_of_reading_no_mark(softhsm: SoftHsm) -> None:
    master = Pkcs11MasterKey.open_token(softhsm.settings("bkv-hw-b"))
    mark = master.high_water("shard-0.n1")
    mark.attest(P(0, 3))
    assert master.high_water("shard-0.n1").current() == P(0, 3)
    master.close()  # the token's last session: it logs the process out
    with pytest.raises(HsmError):
        master.high_water("shard-0.n1").current()
    again = Pkcs11MasterKey.open_token(softhsm.settings("bkv-hw-b"))
    try:
        assert again.high_water("shard-0.n1").current() == P(0, 3)
    finally:
        again.close()


def test_cli_shows_the_token_mark(
    tmp_path: Path, softhsm: SoftHsm, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _config(
        tmp_path, master_key_backend="pkcs11", pkcs11_module=str(softhsm.module),
        pkcs11_token_label="bkv-hw-cli", pkcs11_key_label="bkv-master",
        pkcs11_pin_file=str(softhsm.pin_file),
    )
    del raw["master_key_file"]
    config = _write_config(tmp_path, raw)
    show = ["hsm", "high-water", "show", "--config", str(config), "--json"]
    assert node_cli.main(show) == 0
    assert json.loads(capsys.readouterr().out)["high_water"] is None
    master = Pkcs11MasterKey.open_token(softhsm.settings("bkv-hw-cli"))
    try:
        node_high_water(NodeConfig.load(config), master).attest(P(1, 12))
    finally:
        master.close()
    assert node_cli.main(show) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["backend"] == "pkcs11" and shown["where"] == "PKCS#11 token 'bkv-hw-cli'"
    assert shown["high_water"] == {"epoch": 1, "index": 12}
    assert softhsm.pin not in json.dumps(shown)
