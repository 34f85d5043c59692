"""Attacks on the Raft port: garbage and a code-execution pickle, raw and in pysyncobj framing.

pysyncobj frames a message as a 4-byte native-endian length, then
``zlib(pickle(message))``, encrypted when a transport secret is configured. The
guard under attack is the cluster transport secret: every frame must pass the
transport cipher's authentication (``vault_node/raft/core.py``,
``TransportCipher``; pysyncobj's own default is Fernet) before ``pickle.loads``
runs. Without it, the framed pickle below would be unpickled and create the
marker file.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import os
import pickle
import socket
import struct
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
from vault_node.raft.transport_cipher import TransportCipher

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
        "transport-cipher-wrong-secret": _frame(
            TransportCipher(os.urandom(32)).encrypt_at_time(compressed, 0)
        ),
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


def test_gadget_fires_against_pysyncobj_without_a_password(tmp_path: Path) -> None:
    """Control: the same bytes DO execute on a pysyncobj node that has no transport secret.

    This shows the payloads are well-formed for pysyncobj's framing, so the cluster
    test below fails if the vault ever ran pysyncobj without ``password``.
    """
    marker = tmp_path / "control-marker"
    (port,) = free_ports(1)
    conf = SyncObjConf(autoTick=True, dynamicMembershipChange=False)
    node = SyncObj(f"127.0.0.1:{port}", [], conf)
    try:
        deadline = time.monotonic() + 10.0
        while not marker.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                _send(f"127.0.0.1:{port}", _payloads(marker)["pickle-framed"])
            time.sleep(0.1)
    finally:
        node.destroy()
    assert marker.exists(), "control failed: pysyncobj did not unpickle the framed gadget"


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
