"""The chaos suite's four checks over a history (and the nodes' state digests).

1. **No acknowledged registration is lost.** After ``register(g)`` completed ok,
   no operation invoked later may see ``not_registered`` (a destroyed record is
   a tombstone, never "not registered") or release a generation whose register
   had completed before ``register(g)`` was invoked. Generations of registers
   still in flight or of unknown outcome may legitimately replace ``g``.
2. **At most N KE2 per deposit between resets.** See :func:`check_ke2_windows`.
3. **Linearizability** of every account under :class:`model.VaultModel`.
   A search that runs out of budget is reported in ``unknown``, not as a
   violation.
4. **Equal state digests** on every node once the cluster has healed; a node
   that did not report (empty digest) is a violation.

Positions in the history (line numbers) give the real-time order.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Event, outcome_counts
from .lincheck import DEFAULT_BUDGET, check_partitions
from .model import VaultModel, operations_by_account


@dataclass(frozen=True)
class _Op:
    """One operation of the history with its interval (positions; inf = unknown outcome)."""

    op: int
    proc: str
    f: str
    account: str
    call: Any
    type: str  # "ok" | "fail" | "info" | "pending"
    result: Any
    invoke: float
    complete: float


@dataclass
class CheckReport:
    """What the checks found; ``ok`` means no violation (unknown results are listed apart)."""

    violations: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [f"checks: {len(self.violations)} violation(s), {len(self.unknown)} unknown"]
        lines += [f"  {k} = {v}" for k, v in sorted(self.counters.items())]
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines += [f"  UNKNOWN {u}" for u in self.unknown]
        return "\n".join(lines)


def collect_ops(events: Sequence[Event]) -> list[_Op]:
    """Pair invocations with completions; ``info`` and missing completions end at infinity."""
    ends: dict[int, tuple[int, Event]] = {}
    for pos, e in enumerate(events):
        if e.type != "invoke":
            ends[e.op] = (pos, e)
    ops = []
    for pos, e in enumerate(events):
        if e.type != "invoke":
            continue
        end = ends.get(e.op)
        if end is None:
            kind, result, complete = "pending", None, math.inf
        else:
            kind, result = end[1].type, end[1].value
            complete = math.inf if kind == "info" else float(end[0])
        ops.append(_Op(e.op, e.proc, e.f, e.account, e.value, kind, result, pos, complete))
    return ops


def _value(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def check_lost_registrations(ops: Sequence[_Op]) -> list[str]:
    """Check 1 (see module docstring)."""
    violations = []
    by_account: dict[str, list[_Op]] = defaultdict(list)
    for o in ops:
        by_account[o.account].append(o)
    for account, aops in sorted(by_account.items()):
        registers = {_value(o.call, "gen"): o for o in aops if o.f == "register"}
        acked = sorted((o for o in registers.values() if o.type == "ok"),
                       key=lambda o: o.complete)
        ends = [o.complete for o in acked]
        latest: list[_Op] = []  # latest[k]: the latest-invoked of acked[: k + 1]
        for o in acked:
            latest.append(o if not latest or o.invoke > latest[-1].invoke else latest[-1])
        for x in aops:
            if x.type != "ok":
                continue
            k = bisect.bisect_left(ends, x.invoke)  # acked[:k] completed before x began
            if k == 0:
                continue
            if x.f == "begin" and _value(x.result, "error") == "not_registered":
                r = acked[0]
                violations.append(
                    f"lost-registration: account {account}: register op {r.op} "
                    f"(gen {_value(r.call, 'gen')}) was acknowledged, then begin op {x.op} "
                    "saw not_registered"
                )
            seen = _value(x.result, "gen") if x.f == "finish" else None
            older = registers.get(seen) if seen is not None else None
            if older is None or older.type != "ok":
                continue
            r = latest[k - 1]
            if r.invoke > older.complete:  # r began after `older` was done, and ended before x
                violations.append(
                    f"lost-registration: account {account}: register op {r.op} "
                    f"(gen {_value(r.call, 'gen')}) was acknowledged, then finish op {x.op} "
                    f"released older gen {seen} (register op {older.op})"
                )
    return violations


def _reset_capable(o: _Op) -> bool:
    """May this op have brought the attempt counter down (Put or ResetAttempts)?"""
    if o.type == "fail":
        return False
    return o.f == "register" or (o.f == "finish" and bool(_value(o.call, "correct")))


def check_ke2_windows(ops: Sequence[_Op], attempt_limit: int) -> tuple[list[str], int]:
    """Check 2: KE2 replies per account between counter resets never exceed the limit.

    The only commands that lower an account's attempt counter are Put (register)
    and ResetAttempts (a finish with the correct password; an unknown or
    session-expired outcome may have reset too). Their intervals, merged, cut
    the timeline; in each gap between two merged blocks no reset can have taken
    effect. Every KE2 is one granted BeginAttempt, and a grant needs attempts <
    N and adds one, so the begins invoked and completed inside one gap -- which
    all took effect inside it -- are at most N, whatever the generation. This
    never over-counts: a KE2 that might straddle a reset is not counted at all.
    Returns (violations, windows checked).
    """
    violations = []
    windows = 0
    by_account: dict[str, list[_Op]] = defaultdict(list)
    for o in ops:
        by_account[o.account].append(o)
    for account, aops in sorted(by_account.items()):
        blocks: list[list[float]] = []
        for o in sorted((o for o in aops if _reset_capable(o)), key=lambda o: o.invoke):
            if blocks and o.invoke <= blocks[-1][1]:
                blocks[-1][1] = max(blocks[-1][1], o.complete)
            else:
                blocks.append([o.invoke, o.complete])
        edges = [-math.inf] + [x for b in blocks for x in b] + [math.inf]
        gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
        ke2 = sorted((o for o in aops
                      if o.f == "begin" and o.type == "ok" and _value(o.result, "ke2")),
                     key=lambda o: o.invoke)
        starts = [o.invoke for o in ke2]
        for start, end in gaps:
            if start == math.inf:
                continue
            first, last = bisect.bisect_right(starts, start), bisect.bisect_left(starts, end)
            inside = [o for o in ke2[first:last] if o.complete < end]
            windows += 1 if inside else 0
            if len(inside) > attempt_limit:
                ids = ", ".join(str(o.op) for o in inside)
                violations.append(
                    f"ke2-limit: account {account} (gen {_gen_before(aops, start)}): "
                    f"{len(inside)} KE2 replies (ops {ids}) with no possible reset in "
                    f"between; limit is {attempt_limit}"
                )
    return violations, windows


def _gen_before(aops: Sequence[_Op], position: float) -> Any:
    """The generation last known for certain before ``position`` (for messages only)."""
    gen: Any = "?"
    for o in sorted(aops, key=lambda o: o.complete):
        if o.complete > position or o.type != "ok":
            continue
        if o.f == "register":
            gen = _value(o.call, "gen")
        elif o.f == "finish" and _value(o.result, "gen") is not None:
            gen = _value(o.result, "gen")
    return gen


def check_digests(digests: dict[str, bytes]) -> list[str]:
    """Check 4: every node reported, and all reported the same state digest."""
    if not digests:
        return ["digests: no node reported a state digest"]
    violations = [f"digests: node {n} did not report a state digest"
                  for n, d in sorted(digests.items()) if not d]
    distinct: dict[bytes, list[str]] = defaultdict(list)
    for node, d in sorted(digests.items()):
        if d:
            distinct[d].append(node)
    if len(distinct) > 1:
        groups = "; ".join(f"{d.hex()[:12]}: {', '.join(n)}" for d, n in distinct.items())
        violations.append(f"digests: nodes disagree on the state ({groups})")
    return violations


def run_checks(
    events: Sequence[Event],
    *,
    attempt_limit: int,
    digests: dict[str, bytes] | None,
    budget: int = DEFAULT_BUDGET,
    extra_counts: int = 1,
) -> CheckReport:
    """Run the four checks; ``digests=None`` skips the digest check."""
    report = CheckReport()
    ops = collect_ops(events)
    report.violations += check_lost_registrations(ops)
    ke2_violations, windows = check_ke2_windows(ops, attempt_limit)
    report.violations += ke2_violations
    partitions = operations_by_account(events, extra_counts=extra_counts)
    lin = check_partitions(partitions, lambda _: VaultModel(attempt_limit), budget=budget)
    for account, result in lin.results.items():
        if result.verdict == "violation":
            report.violations.append(f"linearizability: account {account}: {result.explanation}")
        elif result.verdict == "unknown":
            report.unknown.append(f"linearizability: account {account}: {result.explanation}")
    if digests is not None:
        report.violations += check_digests(digests)
    report.counters = {
        "ops": len(ops),
        "accounts": len(partitions),
        "ke2_windows": windows,
        "lin_nodes": sum(r.nodes for r in lin.results.values()),
        **{f"outcome.{k}": v for k, v in outcome_counts(list(events)).items()},
    }
    return report
