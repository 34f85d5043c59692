"""The layering, as a test: who may import whom (README, "Layout").

Every ``import``/``from ... import`` of every module of the project is read with
``ast`` (imports inside functions included), so a lazy import can't dodge a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("bkv_protocol", "bkv_ops", "vault_node", "chatd_proxy", "client_sdk", "bkv_tools")

# package -> packages of ours it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "bkv_protocol": set(),
    "bkv_ops": {"bkv_protocol"},
    "client_sdk": {"bkv_protocol", "bkv_ops"},
    "chatd_proxy": {"bkv_protocol", "bkv_ops"},
    "vault_node": {"bkv_protocol", "bkv_ops"},
    "bkv_tools": set(OURS),
}
# rooms inside vault_node -> rooms they may import
VAULT_ROOMS: dict[str, set[str]] = {
    "state": set(),
    "config": set(),
    "hsm": {"config"},
    "storage": {"state"},
    "raft": {"state", "config", "hsm", "storage"},
    "service": {"state", "config", "hsm", "raft"},
    "admin": {"state", "config", "hsm", "raft", "storage"},
    "server": {"state", "config", "hsm", "raft", "service"},
    "cli": {"state", "config", "hsm", "raft", "service", "admin", "server", "storage"},
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_their_layer_allows(package: str) -> None:
    bad = []
    for path in _modules(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_vault_node_rooms_follow_the_data_flow() -> None:
    bad = []
    for path in _modules("vault_node"):
        parts = path.relative_to(ROOT / "vault_node").with_suffix("").parts
        room = parts[0]
        if room == "__init__":
            continue
        for name in _imports(path):
            segments = name.split(".")
            if segments[0] != "vault_node" or len(segments) < 2:
                continue
            target = segments[1]
            if target != room and target in VAULT_ROOMS and target not in VAULT_ROOMS[room]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_package_says_what_lives_there() -> None:
    for package in OURS:
        for init in (ROOT / package).rglob("__init__.py"):
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc, f"{init.relative_to(ROOT)} has no docstring"


def test_the_sdk_ships_no_cluster_tooling() -> None:
    """An app importing client_sdk gets no launcher, compose layout, certs CLI, demo or bench."""
    names = {p.stem for p in _modules("client_sdk")}
    assert not names & {"launcher", "launcher_layout", "compose_layout", "certs_cli", "demo",
                        "bench_vault", "bench_files", "bench_backup"}
    assert not (ROOT / "client_sdk" / "cli").exists()


def test_pysyncobj_is_reached_through_one_edge() -> None:
    """Replacing or upgrading the Raft library touches the edge and the SyncObj subclass only."""
    edge = {Path("vault_node/raft/pysyncobj_edge.py")}
    private_ok = edge | {Path("vault_node/raft/core.py")}
    bad = []
    for package in OURS:
        for path in _modules(package):
            rel = path.relative_to(ROOT)
            if rel not in edge and any(n.split(".")[0] == "pysyncobj" for n in _imports(path)):
                bad.append(f"{rel} imports pysyncobj")
            if rel not in private_ok and "_SyncObj__" in path.read_text():
                bad.append(f"{rel} reaches into pysyncobj's private names")
    assert not bad, "\n".join(bad)
