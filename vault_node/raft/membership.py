"""Raft group membership as the vault sees it: who the members are and how to reach them.

pysyncobj knows a member only by its Raft address. Operators and ChatD need the
node id, data center and gRPC address too, so every member added at run time
carries them inside the pysyncobj node object; the membership log entry
carries them, with the member's link public key (the key its Raft frames must be
sealed with, ``vault_node.raft.transport_cipher``), as canonical JSON
(``encode_change``: never a pickle) and every snapshot stores them as plain
JSON. Removing a member removes its key from the set the others accept.
Members that came from the TOML bootstrap list are described by that list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from vault_node.config import PeerConfig, is_host_port
from vault_node.raft.pysyncobj_edge import TCPNode
from vault_node.raft.transport_cipher import LinkError, parse_public_key

MIN_MEMBERS = 3  # a change that would leave fewer voters is refused
MEMBER_ATTRIBUTE = "bkv_member"  # where a TCPNode carries the member's description
_MAX_FIELD = 255


class MembershipError(ValueError):
    """A malformed member description or a refused membership change."""


def _check_address(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_FIELD:
        raise MembershipError(f"{what} must be host:port")
    if not is_host_port(value):
        raise MembershipError(f"{what} must be host:port, got {value!r}")
    return value


def _check_name(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > _MAX_FIELD
        or not value.isprintable()
    ):
        raise MembershipError(f"{what} must be a non-empty printable string")
    return value


@dataclass(frozen=True)
class Member:
    """One voting member of the shard's Raft group."""

    node_id: str
    datacenter: str
    raft_address: str
    grpc_address: str
    link_key: str = ""  # the member's link public key (hex); "" only when unknown

    def __post_init__(self) -> None:
        _check_name(self.node_id, "node id")
        _check_name(self.datacenter, "datacenter")
        _check_address(self.raft_address, "raft address")
        if self.grpc_address:  # "" only for a member whose description is unknown
            _check_address(self.grpc_address, "grpc address")
        if self.link_key:  # "" for an unknown member, which can't authenticate on the link
            if not isinstance(self.link_key, str):
                raise MembershipError("link key must be 64 hex digits")
            try:
                object.__setattr__(self, "link_key", parse_public_key(self.link_key).hex())
            except LinkError as err:
                raise MembershipError(str(err)) from None

    @property
    def link_public_key(self) -> bytes | None:
        """The raw link public key; None for a member that can't authenticate."""
        return bytes.fromhex(self.link_key) if self.link_key else None

    def to_plain(self) -> dict[str, str]:
        return {
            "node_id": self.node_id,
            "datacenter": self.datacenter,
            "raft_address": self.raft_address,
            "grpc_address": self.grpc_address,
            "link_key": self.link_key,
        }

    @classmethod
    def from_plain(cls, plain: object) -> Member:
        """Rebuild from ``to_plain`` output; MembershipError if malformed."""
        if not isinstance(plain, Mapping):
            raise MembershipError("a member must be a table")
        try:
            return cls(
                node_id=plain["node_id"],
                datacenter=plain["datacenter"],
                raft_address=plain["raft_address"],
                grpc_address=plain["grpc_address"],
                link_key=plain.get("link_key", ""),  # entries from before link keys
            )
        except KeyError as err:
            raise MembershipError(f"a member lacks {err.args[0]!r}") from None

    @classmethod
    def unknown(cls, raft_address: str) -> Member:
        """A member known only by its Raft address (added outside these tools)."""
        return cls(raft_address, "unknown", raft_address, "")

    def node(self) -> TCPNode:
        """The pysyncobj node for this member, carrying the description."""
        return TCPNode(self.raft_address, **{MEMBER_ATTRIBUTE: self.to_plain()})


_CHANGE_MAGIC = b"bkv-member-change-v1:"
_CHANGE_KINDS = ("add", "rem")  # pysyncobj's names for the two changes


def encode_change(kind: str, member: Member) -> bytes:
    """The payload of a membership log entry: which change, and the member's description."""
    if kind not in _CHANGE_KINDS:
        raise MembershipError(f"unknown membership change {kind!r}")
    body = {"change": kind, "member": member.to_plain()}
    return _CHANGE_MAGIC + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_change(data: bytes) -> tuple[str, Member] | None:
    """``encode_change`` reversed; None for anything else (logged and ignored by the caller)."""
    if not data.startswith(_CHANGE_MAGIC):
        return None
    try:
        body = json.loads(data[len(_CHANGE_MAGIC):])
        kind = body["change"]
        member = Member.from_plain(body["member"])
    except (ValueError, TypeError, KeyError):  # MembershipError is a ValueError
        return None
    if kind not in _CHANGE_KINDS:
        return None
    return kind, member


def describe(node: Any, known: Mapping[str, Member]) -> Member:
    """The member behind a pysyncobj node: its own description, the bootstrap list, or unknown."""
    address = str(getattr(node, "address", node))
    plain = getattr(node, MEMBER_ATTRIBUTE, None)
    if plain is not None:
        try:
            member = Member.from_plain(plain)
        except MembershipError:
            pass
        else:
            bootstrap = known.get(address)
            if not member.link_key and bootstrap is not None and bootstrap.link_key:
                # recorded before members carried link keys: the operator's list supplies it
                return replace(member, link_key=bootstrap.link_key)
            return member
    return known.get(address) or Member.unknown(address)


def bootstrap_members(peers: Iterable[PeerConfig]) -> tuple[Member, ...]:
    """The members a node's TOML bootstrap list describes."""
    return tuple(
        Member(p.node_id, p.datacenter, p.raft_address, p.grpc_address, p.link_public_key)
        for p in peers
    )


def members_to_plain(members: Iterable[Member]) -> list[dict[str, str]]:
    """Sorted by node id, so equal memberships serialise identically."""
    return [m.to_plain() for m in sorted(members, key=lambda m: (m.node_id, m.raft_address))]


def members_from_plain(plain: object) -> list[Member]:
    if not isinstance(plain, list):
        raise MembershipError("members must be a list")
    members = [Member.from_plain(item) for item in plain]
    if len({m.raft_address for m in members}) != len(members):
        raise MembershipError("duplicate raft address among members")
    return members


def check_addition(current: Iterable[Member], new: Member) -> None:
    """Refuse a member without a link key, or whose id, Raft address or key is in use."""
    if not new.link_key:
        raise MembershipError("a new member needs its link public key")
    for m in current:
        if m.link_key == new.link_key:
            raise MembershipError("that link key already belongs to a member")
        if m.node_id == new.node_id:
            raise MembershipError(f"node id {new.node_id!r} is already a member")
        if m.raft_address == new.raft_address:
            raise MembershipError(f"raft address {new.raft_address} is already a member")


def check_removal(current: Iterable[Member], node_id: str) -> Member:
    """The member to remove; refuses an unknown id or going below ``MIN_MEMBERS``."""
    members = list(current)
    target = next((m for m in members if m.node_id == node_id), None)
    if target is None:
        raise MembershipError(f"{node_id!r} is not a member")
    if len(members) - 1 < MIN_MEMBERS:
        raise MembershipError(
            f"refusing to go below {MIN_MEMBERS} members ({len(members)} now); add one first"
        )
    return target
