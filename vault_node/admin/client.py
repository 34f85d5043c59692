"""The operator side of the admin path: one authenticated request to a node's Raft port.

The client speaks pysyncobj's utility protocol over the vault's Raft link (see
``vault_node.raft.admin_endpoint``): it authenticates with the transport secret and the link
key of the node whose config it was given (a current member's credential), it
only talks to a node that proves it holds the link key the membership lists for
its address, and it only believes replies that echo the random key it chose for
this connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from vault_node.raft.membership import MembershipError, members_from_plain
from vault_node.raft.pysyncobj_edge import (
    ADMIN_MAX_MESSAGE_BYTES,
    LinkConnection,
    LinkPolicy,
    TCPNode,
    createPoller,
)
from vault_node.raft.transport_cipher import LinkSecrets

PER_TRY_SECONDS = 10.0
RETRY_PAUSE_SECONDS = 0.3
_POLL_SECONDS = 0.1


class AdminError(Exception):
    """The admin request failed; the message is one line for the operator."""


class AdminUnavailableError(AdminError):
    """No node answered (in time): retrying later may work."""


class AdminRefusedError(AdminError):
    """The node dropped the connection in the handshake: a wrong secret or a non-member key."""


class _AdminConnection(LinkConnection):
    """Remembers that the socket came up, to tell a refused handshake from no connection."""

    bkv_max_frame = ADMIN_MAX_MESSAGE_BYTES
    bkv_max_message = ADMIN_MAX_MESSAGE_BYTES
    socket_up = False

    def _bkv_socket_connected(self) -> None:
        self.socket_up = True
        super()._bkv_socket_connected()


class AdminClient:
    """Sends admin commands to vault nodes and follows leader hints (bounded in time)."""

    def __init__(self, secrets: LinkSecrets, link_keys: dict[str, bytes]) -> None:
        """``link_keys``: Raft address -> link public key of the members we may talk to."""
        self._secrets = secrets
        self._link_keys = dict(link_keys)

    def __repr__(self) -> str:
        return "AdminClient()"

    def request(self, address: str, command: Sequence[Any], timeout: float) -> dict[str, Any]:
        """One request/reply with the node at ``address`` (its Raft address)."""
        try:
            node = TCPNode(address)
            host = node.ip
        except (ValueError, OSError):
            raise AdminError(f"invalid node address {address!r}") from None
        if host is None:
            raise AdminError(f"cannot resolve {node.host}")
        expected = self._link_keys.get(address)
        if expected is None:
            raise AdminError(f"no link key known for {address} (not in the config's [[peers]])")
        poller = createPoller("auto")
        state: dict[str, Any] = {"reply": None, "open": True, "greeted": False,
                                 "connected": False}
        my_key = os.urandom(32)

        def on_connected() -> None:
            state["connected"] = True
            conn.recvRandKey = my_key  # the node must echo it in every frame it sends
            conn.send(my_key)

        def on_message(message: Any) -> None:
            if not state["greeted"]:
                state["greeted"] = True
                conn.sendRandKey = message  # ... and we echo the node's key in ours
                conn.send(list(command))
                return
            state["reply"] = message
            conn.disconnect()

        def on_disconnected() -> None:
            state["open"] = False

        conn = _AdminConnection(
            poller,
            onConnected=on_connected,
            onMessageReceived=on_message,
            onDisconnected=on_disconnected,
            timeout=timeout,
        )
        conn.encryptor = LinkPolicy(self._secrets, lambda key: key == expected)
        conn.bkv_expected_peer = expected
        if not conn.connect(host, node.port):
            raise AdminUnavailableError(f"cannot connect to {address}")
        deadline = time.monotonic() + timeout
        try:
            while state["open"] and time.monotonic() < deadline:
                poller.poll(_POLL_SECONDS)
        finally:
            conn.disconnect()
        reply = state["reply"]
        if reply is None:
            if not conn.socket_up:
                raise AdminUnavailableError(f"cannot connect to {address}")
            if not state["greeted"]:
                raise AdminRefusedError(
                    f"{address} refused the connection (is the transport secret right, "
                    "and is this config's node still a member?)"
                )
            raise AdminUnavailableError(f"no reply from {address} within {timeout:.0f}s")
        if not isinstance(reply, dict):
            raise AdminError(f"{address} refused the request: {reply}")
        self._learn(reply)
        return reply

    def _learn(self, reply: dict[str, Any]) -> None:
        """Members' link keys from an authenticated reply, to follow leader hints."""
        try:
            members = members_from_plain(reply.get("members"))
        except MembershipError:
            return
        for m in members:
            if m.link_public_key is not None:
                self._link_keys[m.raft_address] = m.link_public_key

    def call_leader(
        self, seeds: Sequence[str], command: Sequence[Any], deadline_seconds: float
    ) -> dict[str, Any]:
        """Send ``command`` to the leader: try the seeds, follow hints, retry until the deadline.

        Returns the first successful reply; raises AdminError on a definite refusal
        or when the deadline passes.
        """
        if not seeds:
            raise AdminError("no node address to ask")
        end = time.monotonic() + deadline_seconds
        target, turn, hops, problem = seeds[0], 0, 0, "no leader"
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AdminUnavailableError(f"gave up after {deadline_seconds:.0f}s: {problem}")
            try:
                reply = self.request(target, command, min(remaining, PER_TRY_SECONDS))
            except AdminRefusedError:
                raise  # retrying elsewhere can't help: every member checks the same credentials
            except AdminError as err:
                problem = str(err)
                turn += 1
                target = seeds[turn % len(seeds)]
                time.sleep(min(RETRY_PAUSE_SECONDS, max(0.0, end - time.monotonic())))
                continue
            if reply.get("ok"):
                return reply
            problem = str(reply.get("error", "refused"))
            if not reply.get("retry"):
                raise AdminError(problem)
            leader = reply.get("leader")
            if (
                reply.get("not_leader")
                and isinstance(leader, str)
                and leader != target
                and hops < len(seeds) + 2  # stale views can't make us spin
            ):
                target, hops = leader, hops + 1  # a fresh hint: ask the leader at once
                continue
            hops = 0
            time.sleep(min(RETRY_PAUSE_SECONDS, max(0.0, end - time.monotonic())))
