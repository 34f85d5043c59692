"""A small linearizability checker: Wing & Gong's search with memoisation (as in Knossos/Porcupine).

Input: the operations of one independent object (here: one account), each with
an invocation and a completion position in real-time order, and a model. The
search builds a sequential order one operation at a time; an operation may come
next only if it was invoked before every still-unplaced *required* operation
completed. Configurations (set of placed operations, model state) already seen
are not explored again, which keeps the search polynomial for histories with
little concurrency.

Required operations (completed ``ok``) must be placed. Optional operations
(``info`` or never completed: the outcome is unknown) may be placed at any point
after their invocation, or never; an optional operation may also carry a
completion position, after which it can no longer take effect. Once a placed
operation was invoked after that position, the optional operation is dead and
is folded into the placed set, so configurations that differ only in whether
a dead optional ran are merged. Interchangeable optional operations (same call,
unknown result) are tried in earliest-deadline order only, and an optional
operation is never placed where it would not change the state (leaving it
unplaced keeps every option open).

A search that exceeds its node budget answers ``unknown``, never ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

S = TypeVar("S", bound=Hashable)

DEFAULT_BUDGET = 200_000


class _Pending:
    """The result of an operation whose outcome is unknown."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()


class Model(Protocol[S]):
    """A sequential specification: initial state and the states an operation may lead to."""

    def init(self) -> S: ...

    def step(self, state: S, call: Hashable, ret: Any) -> Iterable[S]:
        """States after ``call`` returned ``ret`` (PENDING: unknown); empty = impossible."""
        ...


@dataclass(frozen=True)
class Operation:
    """One operation: call, observed result (or PENDING), real-time interval."""

    id: int
    call: Hashable
    ret: Any
    invoke: float
    complete: float = math.inf
    required: bool = True
    label: str = ""

    def describe(self) -> str:
        return self.label or f"op {self.id} {self.call!r} -> {self.ret!r}"


Verdict = Literal["ok", "violation", "unknown"]


@dataclass(frozen=True)
class LinResult:
    """Outcome for one object; ``order`` is a witness (ok) or the deepest prefix found."""

    verdict: Verdict
    nodes: int
    explanation: str = ""
    order: tuple[int, ...] = ()


@dataclass
class _Deepest(Generic[S]):
    placed: int = -1
    order: tuple[int, ...] = ()
    state: Any = None
    done: int = 0


class _Search(Generic[S]):
    """Immutable facts about one object's operations, shared by every search node."""

    def __init__(self, ops: Sequence[Operation], model: Model[S]) -> None:
        self.ops = ops
        self.model = model
        self.required = 0
        self.finite = 0  # every operation that is not optional-and-pending-forever
        groups: dict[Hashable, list[int]] = {}
        for i, op in enumerate(ops):
            if op.required:
                self.required |= 1 << i
            if op.required or op.ret is not PENDING or op.complete != math.inf:
                self.finite |= 1 << i
            else:
                groups.setdefault(op.call, []).append(i)
        # Pending-forever operations with the same call are interchangeable and never
        # die: the placed ones are always the earliest invoked, so a count locates the
        # next one.
        self.forever = [(call, members, sum(1 << i for i in members))
                        for call, members in groups.items()]

    def successors(self, done: int, state: S) -> Iterator[tuple[int, int, S]]:
        """(operation index, new placed set, new state) for every operation that may come next."""
        ops = self.ops
        # Finite operations before the lowest unplaced one are all placed. Scanning on
        # in invocation order, the horizon (earliest completion of an unplaced required
        # operation) can only come from operations invoked before the current horizon.
        lo = _lowest(self.finite & ~done)
        horizon = math.inf
        seen: list[int] = []
        for i in range(lo, len(ops)):
            op = ops[i]
            if op.invoke >= horizon:
                break
            if done >> i & 1 or not self.finite >> i & 1:
                continue
            seen.append(i)
            if op.required:
                horizon = min(horizon, op.complete)
        candidates: list[int] = []
        optional: dict[Hashable, int] = {}
        for i in seen:
            op = ops[i]
            if op.invoke >= horizon:
                break
            if op.required or op.ret is not PENDING:
                candidates.append(i)
                continue
            best = optional.get(op.call)  # interchangeable: earliest deadline only
            if best is None or op.complete < ops[best].complete:
                optional[op.call] = i
        for call, members, mask in self.forever:
            placed = (done & mask).bit_count()
            if (call not in optional and placed < len(members)
                    and ops[members[placed]].invoke < horizon):
                optional[call] = members[placed]
        # Required first (by completion), so histories without surprises linearise at once.
        candidates.sort(key=lambda i: ops[i].complete)
        candidates.extend(sorted(optional.values(), key=lambda i: ops[i].complete))
        for i in candidates:
            op = ops[i]
            new_done = self._fold_dead(done | 1 << i, op.invoke, lo)
            for new_state in self.model.step(state, op.call, op.ret):
                if not op.required and new_state == state:
                    continue  # dominated: leaving it unplaced keeps every option open
                yield i, new_done, new_state

    def _fold_dead(self, done: int, invoked: float, lo: int) -> int:
        """Mark optional operations that completed before ``invoked`` as settled (never ran)."""
        ops = self.ops
        for i in range(lo, len(ops)):
            op = ops[i]
            if op.invoke >= invoked:
                break
            if not (self.required | done) >> i & 1 and op.complete < invoked:
                done |= 1 << i
        return done


def _lowest(mask: int) -> int:
    """Index of the lowest set bit (0 for an empty mask)."""
    return (mask & -mask).bit_length() - 1 if mask else 0


def check_operations(
    operations: Sequence[Operation], model: Model[S], *, budget: int = DEFAULT_BUDGET
) -> LinResult:
    """Decide whether ``operations`` linearise under ``model`` (within ``budget`` search nodes).

    A node (placed set, state) is skipped when a node with the same required
    operations placed, the same state and a subset of its optional operations
    placed (or dead) was already explored: that one had every option this one has.
    """
    ops = sorted(operations, key=lambda o: (o.invoke, o.id))
    for op in ops:
        if not op.invoke < op.complete:
            raise ValueError(f"operation {op.id} completes before it is invoked")
        if op.required and op.ret is PENDING:
            raise ValueError(f"required operation {op.id} has no result")
    search = _Search(ops, model)
    required = search.required
    start = model.init()
    if required == 0:
        return LinResult("ok", 0)
    deepest: _Deepest[S] = _Deepest(state=start)
    visited: dict[tuple[int, S], list[int]] = {(0, start): [0]}
    stack = [search.successors(0, start)]
    order: list[int] = []
    nodes = 0
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            if order:
                order.pop()
            continue
        index, done, state = nxt
        key, optional = (done & required, state), done & ~required
        explored = visited.setdefault(key, [])
        if any(seen & ~optional == 0 for seen in explored):
            continue
        explored.append(optional)
        nodes += 1
        if nodes > budget:
            return LinResult(
                "unknown", nodes, f"search budget of {budget} nodes exhausted", tuple(order)
            )
        order.append(ops[index].id)
        if done & required == required:
            return LinResult("ok", nodes, "", tuple(order))
        placed = (done & required).bit_count()
        if placed > deepest.placed:
            deepest = _Deepest(placed, tuple(order), state, done)
        stack.append(search.successors(done, state))
    return LinResult("violation", nodes, _explain(ops, required, deepest, model), deepest.order)


def _explain(
    ops: Sequence[Operation], required: int, deepest: _Deepest[Any], model: Model[Any]
) -> str:
    """Name the first required operation that cannot be placed after the deepest prefix."""
    done = deepest.done
    blocked = [i for i, _ in enumerate(ops) if required >> i & 1 and not done >> i & 1]
    blocked.sort(key=lambda i: ops[i].complete)
    for i in blocked:
        op = ops[i]
        if not list(model.step(deepest.state, op.call, op.ret)):
            return (
                f"{op.describe()} is impossible in state {deepest.state!r} "
                f"(reached after {len(deepest.order)} operations) and no other order explains it"
            )
    first = ops[blocked[0]] if blocked else None
    what = first.describe() if first is not None else "an operation"
    return f"no order of the operations explains {what} (deepest state {deepest.state!r})"


@dataclass
class PartitionedResult:
    """P-compositionality: one result per object; the history is linearizable iff all are."""

    results: dict[str, LinResult] = field(default_factory=dict)

    @property
    def violations(self) -> dict[str, LinResult]:
        return {k: r for k, r in self.results.items() if r.verdict == "violation"}

    @property
    def unknown(self) -> dict[str, LinResult]:
        return {k: r for k, r in self.results.items() if r.verdict == "unknown"}

    @property
    def first_violation(self) -> tuple[str, LinResult] | None:
        for key, result in self.results.items():
            if result.verdict == "violation":
                return key, result
        return None

    @property
    def verdict(self) -> Verdict:
        if self.violations:
            return "violation"
        return "unknown" if self.unknown else "ok"


def check_partitions(
    partitions: Mapping[str, Sequence[Operation]],
    model_for: Callable[[str], Model[Any]],
    *,
    budget: int = DEFAULT_BUDGET,
) -> PartitionedResult:
    """Check every object separately (in key order), each with its own budget."""
    out = PartitionedResult()
    for key in sorted(partitions):
        out.results[key] = check_operations(partitions[key], model_for(key), budget=budget)
    return out
