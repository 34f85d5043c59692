"""The pysyncobj edge: an upgrade that changes a hooked name fails loudly at start-up.

Each case breaks one name ``vault_node/raft/pysyncobj_edge.py`` hooks (in a fresh
interpreter, before the vault imports it) and checks that importing the Raft
layer (what ``bkv-vault-node run`` does first) stops with a message naming the
mismatch instead of running with a hook silently skipped. Also: the frame
codec's bounds.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import zlib

import pytest

from vault_node.raft.pysyncobj_edge import (
    MAX_MESSAGE_BYTES,
    decode_message,
    encode_message,
    shape_problems,
)
from vault_node.raft.transport_cipher import LinkError

BREAKS = {
    "stock parser removed": (
        "import pysyncobj.tcp_connection as m\n"
        "del m.TcpConnection._TcpConnection__processParseMessage",
        "_TcpConnection__processParseMessage is missing",
    ),
    "send takes other parameters": (
        "import pysyncobj.tcp_connection as m\n"
        "m.TcpConnection.send = lambda self, message, flush: None",
        "TcpConnection.send takes",
    ),
    "another version": (
        "import pysyncobj.version as m\nm.VERSION = '0.3.18'",
        "pysyncobj 0.3.18 installed",
    ),
    "pysyncobj.pickle.loads gone": (
        "import pysyncobj.pickle as m\ndel m.loads",
        "pysyncobj.pickle:loads is missing",
    ),
    "incoming connections built elsewhere": (
        "import pysyncobj.tcp_server as m\ndel m.TcpConnection",
        "pysyncobj.tcp_server.TcpConnection is missing",
    ),
    "membership hook renamed": (
        "import pysyncobj.syncobj as m\n"
        "m.SyncObj._SyncObj__doChangeClusterV2 = m.SyncObj._SyncObj__doChangeCluster\n"
        "del m.SyncObj._SyncObj__doChangeCluster",
        "_SyncObj__doChangeCluster is missing",
    ),
}


def test_the_installed_pysyncobj_matches() -> None:
    assert shape_problems() == []


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_broken_hooked_name_fails_loudly(case: str) -> None:
    breakage, expected = BREAKS[case]
    code = breakage + "\nimport vault_node.raft.replication\nprint('started')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0 and "started" not in out.stdout
    assert "PysyncobjEdgeError" in out.stderr and expected in out.stderr, out.stderr


def test_codec_bounds() -> None:
    message = {"type": "append_entries", "entries": [(b"x" * 100, 1, 1)]}
    assert decode_message(encode_message(message)) == message
    bomb = zlib.compress(bytes(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(LinkError, match="larger than"):
        decode_message(bomb)
    with pytest.raises(LinkError, match="trailing"):
        decode_message(encode_message(1) + b"more")
    with pytest.raises(LinkError, match="cut"):
        decode_message(encode_message(message)[:-4])
    with pytest.raises(LinkError, match="not plain data"):
        decode_message(zlib.compress(pickle.dumps(pickle.loads, protocol=2)))
