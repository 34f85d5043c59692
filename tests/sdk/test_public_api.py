"""The SDK as an app sees it: only ``client_sdk``'s public names, against a real local cluster.

The README's "Use it from Python" blocks are executed as they are, so the
documentation cannot drift; the asyncio client runs the same scenarios as the
blocking one.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client_sdk as bkv
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from tests.cluster.conftest import running_cluster

pytestmark = pytest.mark.cluster

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-public-api-test-", attempt_limit=5) as c:
        yield c


def _readme_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _photos(root: Path) -> Path:
    photos = root / "photos"
    (photos / "2026").mkdir(parents=True)
    (photos / "2026" / "beach.jpg").write_bytes(secrets.token_bytes(300_000))
    (photos / "notes.txt").write_text("hello\n")
    return photos


def test_the_public_api_is_what_all_says() -> None:
    assert len(bkv.__all__) == len(set(bkv.__all__))
    for name in bkv.__all__:
        assert getattr(bkv, name) is not None
    with pytest.raises(AttributeError):
        bkv.launcher  # noqa: B018 - tooling is not part of the SDK
    assert (Path(bkv.__file__).parent / "py.typed").exists()


def test_readme_examples_run(cluster: LocalCluster, tmp_path: Path) -> None:
    blocks = _readme_blocks()
    assert len(blocks) == 2
    namespace: dict[str, Any] = {
        "config_path": cluster.client_config_path,
        "photos": _photos(tmp_path),
        "storage_url": str(tmp_path / "storage"),
        "restore_to": tmp_path / "restored",
        "account": f"readme-{secrets.token_hex(4)}",
    }
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "restored" / "notes.txt").read_text() == "hello\n"
    assert namespace["result"].snapshot_id in namespace["names"]


def test_the_whole_story_with_public_names_only(cluster: LocalCluster, tmp_path: Path) -> None:
    """Key, backup, register, lose the device, recover, restore: nothing internal."""
    photos, storage = _photos(tmp_path), str(tmp_path / "storage")
    key_file = tmp_path / "k.key"
    key = bkv.BackupKey.generate()
    bkv.write_key_file(key_file, key)
    made = bkv.create_backup(photos, storage, bkv.read_key_file(key_file))
    account = f"story-{secrets.token_hex(4)}"
    config = bkv.ClientConfig.load(cluster.client_config_path)
    with bkv.VaultClient(config, ksf=IDENTITY_KSF) as vault:
        vault.register(account, key.raw, PASSWORD)
        with pytest.raises(bkv.AlreadyRegistered):
            vault.register(account, key.raw, PASSWORD)
        with pytest.raises(bkv.WrongPassword) as err:
            vault.recover(account, "nope")
        assert err.value.attempts_left == 4
        found = bkv.BackupKey(vault.recover(account, PASSWORD))
    with pytest.raises(bkv.WrongKeyError):
        bkv.restore_backup(made.snapshot_id, storage, bkv.BackupKey.generate(), tmp_path / "x")
    bkv.restore_backup(made.snapshot_id, storage, found, tmp_path / "restored")
    assert (tmp_path / "restored" / "2026" / "beach.jpg").read_bytes() == (
        photos / "2026" / "beach.jpg").read_bytes()


def _scenario_sync(config: bkv.ClientConfig, account: str) -> list[str]:
    seen = []
    with bkv.VaultClient(config, ksf=IDENTITY_KSF) as vault:
        with pytest.raises(bkv.NotRegistered):
            vault.recover(account, PASSWORD)
        vault.register(account, bytes(32), PASSWORD)
        for _ in range(4):
            with pytest.raises(bkv.WrongPassword) as err:
                vault.recover(account, "wrong")
            seen.append(f"left {err.value.attempts_left}")
        assert vault.recover(account, PASSWORD) == bytes(32)
        vault.delete(account, PASSWORD)
        with pytest.raises(bkv.NotRegistered):
            vault.recover(account, PASSWORD)
    return seen


async def _scenario_async(config: bkv.ClientConfig, account: str) -> list[str]:
    seen = []
    async with bkv.AsyncVaultClient(config, ksf=IDENTITY_KSF) as vault:
        with pytest.raises(bkv.NotRegistered):
            await vault.recover(account, PASSWORD)
        await vault.register(account, bytes(32), PASSWORD)
        for _ in range(4):
            with pytest.raises(bkv.WrongPassword) as err:
                await vault.recover(account, "wrong")
            seen.append(f"left {err.value.attempts_left}")
        assert await vault.recover(account, PASSWORD) == bytes(32)
        await vault.delete(account, PASSWORD)
        with pytest.raises(bkv.NotRegistered):
            await vault.recover(account, PASSWORD)
    return seen


def test_asyncio_client_behaves_like_the_blocking_one(cluster: LocalCluster) -> None:
    config = bkv.ClientConfig.load(cluster.client_config_path)
    sync = _scenario_sync(config, f"sync-{secrets.token_hex(4)}")
    async_ = asyncio.run(_scenario_async(config, f"async-{secrets.token_hex(4)}"))
    assert sync == async_ == ["left 4", "left 3", "left 2", "left 1"]


def test_asyncio_client_destroys_and_reports_like_the_blocking_one(
    cluster: LocalCluster,
) -> None:
    config = bkv.ClientConfig.load(cluster.client_config_path)
    account = f"gone-{secrets.token_hex(4)}"

    async def run() -> None:
        async with bkv.AsyncVaultClient(config, ksf=IDENTITY_KSF) as vault:
            await vault.register(account, bytes(32), PASSWORD)
            for _ in range(5):
                with pytest.raises(bkv.WrongPassword):
                    await vault.recover(account, "wrong")
            with pytest.raises(bkv.KeyDestroyed):
                await vault.recover(account, PASSWORD)

    asyncio.run(run())
    with bkv.VaultClient(config, ksf=IDENTITY_KSF) as vault, pytest.raises(bkv.KeyDestroyed):
        vault.recover(account, PASSWORD)


def test_the_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    """What `make docs` runs: pdoc over the public names, any warning an error."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "error", "-m", "pdoc", "-o", str(tmp_path),
                           "client_sdk"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "client_sdk.html").read_text()
    for name in ("VaultClient", "AsyncVaultClient", "create_backup", "WrongPassword"):
        assert f'id="{name}"' in page, name
