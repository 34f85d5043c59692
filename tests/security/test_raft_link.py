"""A hostile peer on the Raft link, holding real credentials.

The peer below speaks the link protocol from raw sockets: it completes the
handshake with the cluster's real transport secret and a member's real link key
(read from that member's key file), so every frame it sends passes the AEAD
check. What must still hold (``vault_node/raft/pysyncobj_edge.py``):

* a frame whose payload is a pickle with ``__reduce__`` never runs code: the
  connection is dropped, the marker file never appears, the node keeps serving;
* a decompression bomb (1 GiB of zeros, about 1 MiB compressed), a frame
  announcing 2 GiB and a chunked entry streamed past 16 MiB are refused without
  the node's memory growing;
* a member may not pose as another member, nor send pysyncobj's switched-off or
  malformed admin commands, nor Raft messages pysyncobj can't handle;
* a replayed frame (in the same connection or in a new one) and a frame without
  the connection's random key are refused; the nodes run with
  ``PYTHONOPTIMIZE=2``, which strips pysyncobj's own ``assert`` checks;
* after ``member remove``, the removed member's key is refused by every remaining
  member (new links at the handshake, a link opened before on its next frame)
  while the shard keeps committing.

Each attack ends with a registration and a recovery against the leader.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pickle
import secrets
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.vault.conftest import (
    NODE_CMD,
    Cluster,
    VaultCallError,
    VaultTestClient,
    clean_env,
    started_cluster,
)
from vault_node.raft.transport_cipher import Initiator, LinkKey, LinkSecrets, LinkSession

pytestmark = pytest.mark.cluster

IO_TIMEOUT = 5.0
ADMIN_TIMEOUT = 30.0
BOMB_BYTES = 1 << 30
RSS_GROWTH_LIMIT = 64 * 1024 * 1024  # the node's peak RSS may not grow by more than this


class _FileGadget:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (self.path, "w"))


class RefusedError(Exception):
    """The node closed the connection instead of answering."""


class HostilePeer:
    """A raw-socket speaker of the Raft link, with whatever credentials the test hands it."""

    def __init__(self, address: str, secrets_: LinkSecrets, node_key: bytes) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT)
        self.sent: list[bytes] = []  # raw frames, for replays
        dial = Initiator.start(secrets_, node_key)
        self.send_raw(dial.hello)
        answer = self.recv_frame()
        if answer is None:
            self.sock.close()
            raise RefusedError("handshake refused")
        self.session: LinkSession = dial.finish(answer)
        self.rand_key: bytes | None = None  # the node's, sent with our frames
        self.my_key: bytes | None = None  # ours, sent with the node's frames

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, frame: bytes) -> None:
        self.sent.append(frame)
        self.sock.sendall(struct.pack("<I", len(frame)) + frame)

    def send_plain(self, plaintext: bytes) -> None:
        self.send_raw(self.session.seal(plaintext))

    def send(self, message: Any) -> None:
        """A pysyncobj message, wrapped with the node's random key once we have it."""
        if self.rand_key is not None:
            message = (self.rand_key, message)
        self.send_plain(zlib.compress(pickle.dumps(message, protocol=2)))

    def recv_frame(self) -> bytes | None:
        """The next frame, or None once the node has closed the connection."""
        header = self._recv_exactly(4)
        if header is None:
            return None
        return self._recv_exactly(struct.unpack("<I", header)[0])

    def recv(self) -> Any:
        frame = self.recv_frame()
        if frame is None:
            raise RefusedError("connection closed")
        message = pickle.loads(zlib.decompress(self.session.open(frame)))  # our own test peer
        if self.my_key is not None:  # the node wraps its replies with our random key
            key, message = message
            assert key == self.my_key
        return message

    def _recv_exactly(self, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            try:
                chunk = self.sock.recv(count - len(data))
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def greet(self) -> None:
        """pysyncobj's random-key exchange: send ours, keep the node's."""
        mine = os.urandom(32)
        self.send(mine)
        self.my_key = mine
        theirs = self.recv()
        assert isinstance(theirs, bytes)
        self.rand_key = theirs

    def closed_by_node(self) -> bool:
        """True once the node has dropped us (EOF or reset), within ``IO_TIMEOUT``."""
        self.sock.settimeout(IO_TIMEOUT)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def _credentials(cfg: dict[str, Any]) -> LinkSecrets:
    """The real transport secret and this member's real link key, from its files."""
    secret = Path(cfg["transport_secret_file"]).read_text().strip().encode()
    return LinkSecrets(secret, LinkKey.from_hex(Path(cfg["link_key_file"]).read_text()))


def _public_key(cfg: dict[str, Any]) -> bytes:
    return bytes.fromhex(next(p["link_public_key"] for p in cfg["peers"]
                              if p["node_id"] == cfg["node_id"]))


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _still_serves(cluster: Cluster | _Without) -> None:
    """A registration and a recovery go through the leader, committed by the shard.

    An attack that posed as a member (its address) cut that member off for a moment,
    which may start an election: a try that meets a leader change is repeated with a
    new account once a leader is agreed again (bounded).
    """
    problems: list[str] = []
    for _ in range(5):
        client = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
        try:
            account, key = f"acct-{secrets.token_hex(6)}", secrets.token_bytes(32)
            assert client.register(account, b"link pw", key) > 0
            assert client.recover(account, b"link pw") == key
            return
        except (VaultCallError, grpc.RpcError) as err:
            problems.append(str(err).splitlines()[0])
            time.sleep(1.0)
        finally:
            client.close()
    pytest.fail(f"the shard did not serve after the attack: {problems}")


def _roles(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(the attacked node's config, the config whose key the attacker stole, the target pid)."""
    leader = cluster.wait_for_leader()
    target = next(c for c in cluster.configs if c["grpc_address"] == leader)
    thief = next(c for c in cluster.configs if c is not target)
    pid = next(p.pid for c, p in zip(cluster.configs, cluster.procs, strict=True) if c is target)
    return target, thief, pid


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes started with ``PYTHONOPTIMIZE=2``: pysyncobj's asserts are gone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONOPTIMIZE", "2")
        with started_cluster(tmp_path_factory.mktemp("raft-link"), 3) as c:
            mp.delenv("PYTHONOPTIMIZE")
            for proc in c.procs:
                environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
                assert b"PYTHONOPTIMIZE=2" in environ
            yield c
            # every attack was refused by the link, none escaped into the Raft thread
            logs = "".join(p.read_text(errors="replace") for p in c.state.glob("*.log"))
            assert "raft tick failed" not in logs and "Traceback" not in logs


def _peer(target: dict[str, Any], thief: dict[str, Any]) -> HostilePeer:
    return HostilePeer(target["raft_address"], _credentials(thief), _public_key(target))


def test_the_stolen_credential_works(optimized: Cluster) -> None:
    """Control: with these credentials the peer really is a member (it gets admin answers)."""
    target, thief, _ = _roles(optimized)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(["bkv_members", "local"])
        reply = peer.recv()
        assert reply["ok"] and len(reply["members"]) == 3
    finally:
        peer.close()


@pytest.mark.parametrize("when", ["first frame", "after the key exchange"])
def test_reduce_payload_never_runs(optimized: Cluster, tmp_path: Path, when: str) -> None:
    target, thief, _ = _roles(optimized)
    marker = tmp_path / "pwned"
    peer = _peer(target, thief)
    try:
        if when != "first frame":
            peer.greet()
        peer.send(_FileGadget(str(marker)))
        assert peer.closed_by_node(), "the node kept the connection after a code pickle"
    finally:
        peer.close()
    assert not marker.exists(), "a node unpickled a global from an authenticated peer"
    _still_serves(optimized)


def test_decompression_bomb_and_huge_length_are_refused(optimized: Cluster) -> None:
    target, thief, pid = _roles(optimized)
    deflate = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(BOMB_BYTES // len(zeros)))
    bomb += deflate.flush()
    assert len(bomb) < 2 * 1024 * 1024  # 1 GiB inflates from about 1 MiB
    before = _peak_rss(pid)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send_plain(bomb)
        assert peer.closed_by_node(), "the node accepted a decompression bomb"
    finally:
        peer.close()
    # A frame announcing 2 GiB is refused from its header, before any body arrives.
    peer = _peer(target, thief)
    try:
        peer.sock.sendall(struct.pack("<I", 0x7FFFFFFF) + os.urandom(1024))
        assert peer.closed_by_node(), "the node waited for a 2 GiB frame"
    finally:
        peer.close()
    growth = _peak_rss(pid) - before
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth} bytes"
    _still_serves(optimized)


def test_replays_and_missing_random_key_are_refused(optimized: Cluster) -> None:
    target, thief, _ = _roles(optimized)
    # The same frame twice in one connection.
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(["bkv_members", "local"])
        assert peer.recv()["ok"]
        peer.send_raw(peer.sent[-1])
        assert peer.closed_by_node(), "a replayed frame was accepted"
        recorded = list(peer.sent)
    finally:
        peer.close()
    # A whole recorded connection replayed into a new one: the node answers the
    # replayed hello with fresh keys, so the first recorded data frame fails.
    host, port = target["raft_address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"".join(struct.pack("<I", len(f)) + f for f in recorded))
        sock.settimeout(IO_TIMEOUT)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            for _ in range(64):  # bounded: the answer, then the end of the connection
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert len(received) == 4 + 97, "the node answered more than the replayed hello"
    # A frame that lacks this connection's random key (pysyncobj checked it with an assert).
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.rand_key = os.urandom(32)
        peer.send(["bkv_members", "local"])
        assert peer.closed_by_node(), "a frame with a wrong random key was accepted"
    finally:
        peer.close()
    _still_serves(optimized)


def test_a_peer_may_not_claim_another_members_address(optimized: Cluster) -> None:
    target, thief, _ = _roles(optimized)
    third = next(c for c in optimized.configs if c is not target and c is not thief)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(third["raft_address"])  # "I am the third member" with the thief's key
        assert peer.closed_by_node(), "a member posed as another member"
    finally:
        peer.close()
    _still_serves(optimized)


def test_a_member_may_not_dial_a_node_that_dials_it(optimized: Cluster) -> None:
    """Claiming its own address towards the node that dials it must not cost that link.

    pysyncobj would put the incoming connection in place of the one the node dials
    with and later redial on it without the member's key: the pair would stay cut
    for good. With the third node paused, the two must reach each other to serve.
    """
    configs = optimized.configs
    # a (target, member) pair in which the target is the side that dials
    target, member = next((a, b) for a in configs for b in configs
                          if a is not b and a["raft_address"] > b["raft_address"])
    third = next(c for c in configs if c is not target and c is not member)
    peer = _peer(target, member)
    try:
        peer.greet()
        peer.send(member["raft_address"])  # the member's own address, with its own key
        assert peer.closed_by_node(), "a member dialled the node that dials it"
    finally:
        peer.close()
    paused = optimized.procs[configs.index(third)]
    paused.send_signal(signal.SIGSTOP)
    try:
        _still_serves(_Without(optimized, third))
    finally:
        paused.send_signal(signal.SIGCONT)
    _still_serves(optimized)


class _Without:
    """The cluster as seen without one (paused) member, for ``_still_serves``."""

    def __init__(self, cluster: Cluster, absent: dict[str, Any]) -> None:
        self._cluster, self._absent = cluster, absent
        self.fleet_public_key = cluster.fleet_public_key

    def wait_for_leader(self) -> str:
        end = time.monotonic() + 30
        others = [c["grpc_address"] for c in self._cluster.configs if c is not self._absent]
        while time.monotonic() < end:
            statuses = [self._cluster.status(a) for a in others]
            leaders = {s.leader_address for s in statuses if s is not None and s.role}
            if all(s is not None for s in statuses) and len(leaders) == 1 \
                    and leaders <= set(others):
                return leaders.pop()
            time.sleep(0.3)
        pytest.fail("the two running members agree on no leader")


def test_endless_entry_transmission_is_cut(optimized: Cluster) -> None:
    """A member streaming one "large entry" forever is dropped at 16 MiB, memory bounded."""
    target, thief, pid = _roles(optimized)
    before = _peak_rss(pid)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(thief["raft_address"])  # the member its key belongs to
        chunk = os.urandom(64 * 1024)  # incompressible, like pysyncobj's chunks of a pickle
        cut = False
        for i in range(20 * 16):  # 20 MiB at most
            kind = "start" if i == 0 else "process"
            try:
                peer.send({"type": "append_entries", "transmission": kind, "data": chunk,
                           "term": 0, "commit_index": 0, "prevLogIdx": 0, "prevLogTerm": 0})
            except OSError:
                cut = True
                break
        cut = cut or peer.closed_by_node()
        assert cut, "the node kept reassembling an endless entry"
    finally:
        peer.close()
    growth = _peak_rss(pid) - before
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth} bytes"
    _still_serves(optimized)


@pytest.mark.parametrize("message", [{"type": "append_entries"}, {"type": "request_vote"},
                                     {"type": "next_node_idx", "next_node_idx": "x"}])
def test_malformed_raft_messages_drop_the_link(optimized: Cluster, message: Any) -> None:
    """pysyncobj indexes messages unchecked; a malformed one ends the link, not the tick."""
    target, thief, _ = _roles(optimized)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(thief["raft_address"])
        peer.send(message)
        assert peer.closed_by_node(), f"{message!r} was not refused"
    finally:
        peer.close()
    _still_serves(optimized)


@pytest.mark.parametrize("command", [["add", "127.0.0.1:1"], [["nested"]], [], {"type": "x"}])
def test_unknown_or_malformed_admin_commands_drop_the_link(optimized: Cluster,
                                                           command: Any) -> None:
    """pysyncobj's own (switched-off) commands and malformed ones end the connection."""
    target, thief, _ = _roles(optimized)
    peer = _peer(target, thief)
    try:
        peer.greet()
        peer.send(command)
        assert peer.closed_by_node(), f"{command!r} was not refused"
    finally:
        peer.close()
    _still_serves(optimized)


def _members_local(cfg: dict[str, Any]) -> list[str]:
    out = subprocess.run(
        [*NODE_CMD, "member", "list", "--local", "--json", "--config", cfg["config_path"],
         "--timeout", "10"],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )
    assert out.returncode == 0, out.stderr
    return sorted(m["node_id"] for m in json.loads(out.stdout)["members"])


def test_removed_member_is_refused_by_the_others(tmp_path: Path) -> None:
    with started_cluster(tmp_path / "shard", 4) as shard:
        leader = shard.wait_for_leader()
        victim = next(c for c in shard.configs if c["grpc_address"] != leader)
        rest = [c for c in shard.configs if c is not victim]
        # Control: before removal the victim's credential opens a link to every other member.
        for cfg in rest:
            _peer(cfg, victim).close()
        # A link opened with the victim's key before the removal, kept busy during it.
        watcher = rest[-1]
        open_link = _peer(watcher, victim)
        open_link.greet()
        remove = subprocess.Popen(
            [*NODE_CMD, "member", "remove", "--config", rest[0]["config_path"], "--node-id",
             victim["node_id"], "--timeout", str(ADMIN_TIMEOUT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )
        try:
            cut = False
            end = time.monotonic() + ADMIN_TIMEOUT
            while time.monotonic() < end:  # one request every 0.2 s until the link is cut
                try:
                    open_link.send(["bkv_members", "local"])
                    open_link.recv()
                except (RefusedError, OSError):
                    cut = True
                    break
                time.sleep(0.2)
            _, stderr = remove.communicate(timeout=120)
        finally:
            open_link.close()
            if remove.poll() is None:
                remove.kill()
        assert remove.returncode == 0, stderr + shard.logs()
        assert cut, "the removed member's open link kept working"
        log = (shard.state / f"{watcher['node_id']}.log").read_text()
        assert "link key is no longer a member's" in log  # cut for the removal, not a timeout
        expected = sorted(c["node_id"] for c in rest)
        end = time.monotonic() + ADMIN_TIMEOUT
        for cfg in rest:  # every remaining member has the removal in its log
            while _members_local(cfg) != expected:
                assert time.monotonic() < end, f"{cfg['node_id']} still lists the victim"
                time.sleep(0.2)
        # The victim still holds the transport secret and its key file: both refused now.
        for cfg in rest:
            with pytest.raises(RefusedError):
                _peer(cfg, victim)
        # Its admin commands are refused too (same credential, through the CLI).
        denied = subprocess.run(
            [*NODE_CMD, "member", "list", "--json", "--config", victim["config_path"],
             "--timeout", "5"],
            capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
        )
        assert denied.returncode == 12 and "refused the connection" in denied.stderr
        _still_serves(shard)
