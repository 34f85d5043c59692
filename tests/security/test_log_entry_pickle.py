"""pysyncobj unpickles every log entry it applies or replays; ours refuse globals.

A pickle that names a global (here ``os.system``) is how bytes become code. Such
an entry can come from a tampered journal on a node's disk (the disk is not
trusted, DESIGN §6) or from an authenticated peer gone bad. The guard is
``vault_node.raft.safe_pickle``, installed by ``vault_node.raft.pysyncobj_edge`` for every
pysyncobj module that unpickles (``pysyncobj.pickle`` itself, the journal, the
serializer, syncobj, the TCP connection); membership entries are JSON so they
need no global.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pysyncobj.journal as journal_module
import pysyncobj.pickle as pysyncobj_pickle
import pysyncobj.serializer as serializer_module
import pysyncobj.syncobj as syncobj_module
import pysyncobj.tcp_connection as tcp_connection_module
import pytest

from vault_node.raft import core as raft_core
from vault_node.raft import safe_pickle
from vault_node.raft.membership import Member, decode_change, encode_change


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pysyncobj_uses_the_safe_codec() -> None:
    assert raft_core.VaultSyncObj  # importing raft_core installs the edge module's hooks
    for module in (syncobj_module, serializer_module, tcp_connection_module):
        assert module.pickle is safe_pickle
    assert pysyncobj_pickle.loads is safe_pickle.loads
    assert pysyncobj_pickle.load is safe_pickle.load
    assert journal_module.loads is safe_pickle.loads


@pytest.mark.parametrize("where", ["syncobj", "pysyncobj.pickle", "journal"])
def test_an_entry_naming_a_global_is_refused_and_never_runs(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps((1, (_Exploit(marker),)), protocol=2)
    loads = {"syncobj": syncobj_module.pickle.loads, "pysyncobj.pickle": pysyncobj_pickle.loads,
             "journal": journal_module.loads}[where]
    with pytest.raises(safe_pickle.UnpicklingError):
        loads(payload)  # pysyncobj's own loads fell back to the stock pure-Python unpickler
    assert not marker.exists()


def test_empty_bytes_round_trip_but_bytes_n_is_refused() -> None:
    assert safe_pickle.loads(safe_pickle.dumps((b"", 1))) == (b"", 1)
    sized = pickle.dumps(b"", protocol=2).replace(b")R", b"K\x05\x85R")  # bytes(5)
    with pytest.raises(safe_pickle.UnpicklingError):
        safe_pickle.loads(sized)


def test_plain_entries_still_round_trip() -> None:
    entry = (7, (b"\x00\x01 canonical command bytes \xff",))
    assert safe_pickle.loads(safe_pickle.dumps(entry)) == entry
    assert safe_pickle.loads(safe_pickle.dumps(["x", 3, "y"])) == ["x", 3, "y"]


def test_membership_entries_are_json_not_pickles() -> None:
    member = Member("dc4-n1", "dc4", "10.0.0.9:7200", "10.0.0.9:7100")
    encoded = encode_change("add", member)
    assert b"\x80" not in encoded[:2]  # not a pickle header
    assert decode_change(encoded) == ("add", member)
    assert decode_change(pickle.dumps(["add", "x", None], protocol=2)) is None
    assert decode_change(encoded.replace(b'"add"', b'"zap"')) is None
