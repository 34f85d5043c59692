"""Attacks on the Raft port: garbage and a code-execution pickle, raw and in pysyncobj framing.

pysyncobj frames a message as a 4-byte native-endian length, then
``zlib(pickle(message))``, encrypted when a transport secret is configured. The
guards under attack here are the link handshake (``vault_node/raft/pysyncobj_edge.py``:
the transport secret and a member's link key before anything else is read) and
the restricted codec behind it. Without them, the framed pickle below would be
unpickled and create the marker file. ``test_raft_link.py`` attacks with valid
credentials.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pysyncobj import SyncObj, SyncObjConf

from bkv_tools.launcher import LocalCluster
from bkv_tools.launcher_layout import free_ports
from client_sdk.config import ClientConfig
from tests.security.conftest import (
    converged_digest,
    direct_client,
    leader_address,
    new_account,
    node_status,
)
from vault_node.raft.transport_cipher import Initiator, LinkKey, LinkSecrets

pytestmark = pytest.mark.cluster


class _FileGadget:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (self.path, "w"))


def _frame(data: bytes) -> bytes:
    return struct.pack("i", len(data)) + data


def _payloads(marker: Path) -> dict[str, bytes]:
    gadget = pickle.dumps(_FileGadget(str(marker)))
    compressed = zlib.compress(gadget, 3)
    wrong_key = Fernet(base64.urlsafe_b64encode(os.urandom(32)))
    forged = wrong_key.encrypt_at_time(compressed, int(time.monotonic()))
    return {
        "garbage": os.urandom(4096),
        "garbage-framed": _frame(os.urandom(512)),
        "negative-length": struct.pack("i", -8) + os.urandom(64),
        "pickle-raw": gadget,
        "pickle-zlib-raw": compressed,
        "pickle-framed": _frame(compressed),  # exactly what an unauthenticated pysyncobj sends
        "pickle-framed-twice": _frame(compressed) * 2,
        "fernet-wrong-key": _frame(forged),
        "link-hello-wrong-secret-then-pickle": _frame(
            Initiator.start(LinkSecrets(os.urandom(32), LinkKey.generate()), bytes(32)).hello
        ) + _frame(compressed),
        "handshake-then-pickle": _frame(zlib.compress(pickle.dumps(os.urandom(32))))
        + _frame(compressed),
    }


def test_gadget_would_fire_if_unpickled(tmp_path: Path) -> None:
    """Sanity: the framed payload really creates the marker when a node unpickles it."""
    marker = tmp_path / "sanity-marker"
    frame = _payloads(marker)["pickle-framed"]
    length = struct.unpack("i", frame[:4])[0]
    handle = pickle.loads(zlib.decompress(frame[4 : 4 + length]))
    handle.close()
    assert marker.exists()


_PLAIN_PYSYNCOBJ = """
import sys, time
from pysyncobj import SyncObj, SyncObjConf
node = SyncObj(sys.argv[1], [], SyncObjConf(autoTick=True, dynamicMembershipChange=False))
time.sleep(60)
"""


def _fire_at_plain_pysyncobj(marker: Path, *, in_this_process: bool) -> None:
    """Send the framed gadget to a pysyncobj node without a password until it fires (10 s)."""
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    node: Any = None
    proc: subprocess.Popen[bytes] | None = None
    if in_this_process:
        node = SyncObj(address, [], SyncObjConf(autoTick=True, dynamicMembershipChange=False))
    else:  # a fresh interpreter that never imported the vault
        proc = subprocess.Popen([sys.executable, "-c", _PLAIN_PYSYNCOBJ, address])
    try:
        deadline = time.monotonic() + 10.0
        while not marker.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                _send(address, _payloads(marker)["pickle-framed"])
            time.sleep(0.1)
    finally:
        if node is not None:
            node.destroy()
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)


def test_gadget_fires_against_pysyncobj_without_a_password(tmp_path: Path) -> None:
    """Control: the same bytes DO execute on a stock pysyncobj node that has no password.

    This shows the payloads are well-formed for pysyncobj's framing, so the cluster
    test below fails if the vault ever let stock pysyncobj parse its Raft port.
    """
    marker = tmp_path / "control-marker"
    _fire_at_plain_pysyncobj(marker, in_this_process=False)
    assert marker.exists(), "control failed: pysyncobj did not unpickle the framed gadget"


def test_no_pysyncobj_node_in_a_vault_process_unpickles(tmp_path: Path) -> None:
    """Once the vault's Raft layer is imported, even a bare pysyncobj node in the same
    process is safe: every connection is the vault's, and the stock parser refuses."""
    import vault_node.raft.core  # noqa: F401 (installs the pysyncobj edge)

    marker = tmp_path / "in-process-marker"
    _fire_at_plain_pysyncobj(marker, in_this_process=True)
    assert not marker.exists(), "a pysyncobj node in a vault process unpickled the gadget"


def _send(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendall(payload)
            sock.recv(4096)  # the node may answer its handshake, or just drop us
        except OSError:
            pass


def test_raft_port_rejects_garbage_and_pickles(
    sec_cluster: LocalCluster, sec_config: ClientConfig, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    before = converged_digest(sec_cluster)
    leader = sec_cluster.leader(0)
    assert leader is not None
    follower = next(n for n in sec_cluster.nodes(0) if n != leader)
    targets = [sec_cluster.node(n)["raft_address"] for n in (leader, follower)]
    for address in targets:
        for payload in _payloads(marker).values():
            _send(address, payload)
    time.sleep(1.0)  # let every node's tick thread see the bytes

    assert not marker.exists(), "a node unpickled unauthenticated Raft bytes"
    assert converged_digest(sec_cluster) == before, "attack bytes changed the replicated state"
    for node_id in sec_cluster.nodes(0):
        assert node_status(sec_cluster.node(node_id)["grpc_address"]) is not None, node_id

    # The shard still commits: a registration goes through and every node applies it.
    client = direct_client(sec_cluster, sec_config)
    try:
        assert client.register(new_account("raft"), b"pw", os.urandom(32)) > 0
    finally:
        client.close()
    assert converged_digest(sec_cluster) != before
    assert leader_address(sec_cluster)
