"""The linearizability checker and the vault model on hand-made histories."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

import pytest

from .history import HistoryBuilder
from .lincheck import PENDING, LinResult, Operation, check_operations, check_partitions
from .model import VaultModel, operations_by_account

LIMIT = 10
A = "acct-a"


def check(h: HistoryBuilder, *, extra_counts: int = 1, budget: int = 100_000) -> LinResult:
    parts = operations_by_account(h.events, extra_counts=extra_counts)
    result = check_partitions(parts, lambda _: VaultModel(LIMIT), budget=budget)
    assert len(result.results) == 1
    return next(iter(result.results.values()))


def registered(gen: int = 1) -> HistoryBuilder:
    h = HistoryBuilder()
    h.ok(h.invoke("c0", "register", A, {"gen": gen}))
    return h


def begin(h: HistoryBuilder, left: int, proc: str = "c0") -> None:
    h.ok(h.invoke(proc, "begin", A), {"ke2": True, "attempts_left": left})


def finish(h: HistoryBuilder, value: dict[str, Any], *, correct: bool = True,
           left: int | None = None) -> None:
    h.ok(h.invoke("c0", "finish", A, {"correct": correct, "ke2_attempts_left": left}), value)


def test_sequential_history_linearises() -> None:
    h = registered()
    begin(h, 9)
    finish(h, {"gen": 1}, left=9)
    begin(h, 9)
    finish(h, {"error": "login_failed", "attempts_left": 9}, correct=False, left=9)
    begin(h, 8)
    h.ok(h.invoke("c0", "register", A, {"gen": 2}))
    begin(h, 9)
    finish(h, {"gen": 2}, left=9)
    result = check(h)
    assert result.verdict == "ok", result.explanation
    assert len(result.order) >= 9


def test_overlapping_begins_linearise_only_in_the_order_of_their_counts() -> None:
    h = registered()
    first = h.invoke("c0", "begin", A)
    second = h.invoke("c1", "begin", A)
    h.ok(first, {"ke2": True, "attempts_left": 8})  # completes first, but counted second
    h.ok(second, {"ke2": True, "attempts_left": 9})
    result = check(h)
    assert result.verdict == "ok"
    assert result.order.index(second) < result.order.index(first)
    # Without the overlap the same answers are impossible.
    seq = registered()
    begin(seq, 8)
    begin(seq, 9, proc="c1")
    assert check(seq).verdict == "violation"


def test_stale_read_is_rejected() -> None:
    h = registered()
    begin(h, 9)
    begin(h, 8)
    begin(h, 9)  # attempts_left back up without a register or a successful finish
    result = check(h)
    assert result.verdict == "violation"
    assert result.explanation.startswith("op 3 "), result.explanation


def test_lost_increment_is_rejected() -> None:
    h = registered()
    one = h.invoke("c0", "begin", A)
    two = h.invoke("c1", "begin", A)
    h.ok(one, {"ke2": True, "attempts_left": 9})
    h.ok(two, {"ke2": True, "attempts_left": 9})
    assert check(h).verdict == "violation"


def test_a_retried_begin_never_counts_the_same_guess_twice() -> None:
    # ChatD may deliver one KE1 several times; the vault counts a guess once
    # between resets, so no number of retries explains a double count.
    h = registered()
    begin(h, 9)
    begin(h, 7)
    assert check(h, extra_counts=3).verdict == "violation"
    assert check(h, extra_counts=0).verdict == "violation"
    h2 = registered()
    begin(h2, 9)
    begin(h2, 8)
    assert check(h2, extra_counts=3).verdict == "ok"


@pytest.mark.parametrize("took_effect", [True, False])
def test_info_begin_may_or_may_not_have_happened(took_effect: bool) -> None:
    h = registered()
    h.complete(h.invoke("c0", "begin", A), "info")
    begin(h, 8 if took_effect else 9, proc="c1")
    assert check(h, extra_counts=0).verdict == "ok"


@pytest.mark.parametrize("seen", [1, 2])
def test_info_register_may_or_may_not_have_happened(seen: int) -> None:
    h = registered(1)
    h.complete(h.invoke("c0", "register", A, {"gen": 2}), "info")
    begin(h, 9)
    finish(h, {"gen": seen}, left=9)
    assert check(h).verdict == "ok"


def test_never_completed_op_is_pending_forever() -> None:
    h = registered(1)
    h.invoke("c0", "register", A, {"gen": 2})  # the client died before the reply
    begin(h, 9, proc="c1")
    finish(h, {"gen": 1})
    begin(h, 9, proc="c1")
    finish(h, {"gen": 2})  # applied late
    assert check(h).verdict == "ok"
    begin(h, 9, proc="c1")
    finish(h, {"gen": 1})  # but it cannot be undone
    assert check(h).verdict == "violation"


def test_lost_registration_is_rejected() -> None:
    h = registered()
    h.ok(h.invoke("c1", "begin", A), {"error": "not_registered"})
    result = check(h)
    assert result.verdict == "violation"
    assert "not_registered" in result.explanation


def test_destruction_after_the_limit_and_no_key_after_it() -> None:
    h = registered()
    for left in range(LIMIT - 1, -1, -1):
        begin(h, left)
    h.ok(h.invoke("c0", "begin", A), {"error": "destroyed"})
    assert check(h, extra_counts=0).verdict == "ok"
    finish(h, {"gen": 1})
    assert check(h, extra_counts=0).verdict == "violation"


def test_early_destruction_is_rejected() -> None:
    h = registered()
    begin(h, 9)
    h.ok(h.invoke("c0", "begin", A), {"error": "destroyed"})
    assert check(h).verdict == "violation"


def test_wrong_finish_reports_its_own_ke2_count() -> None:
    h = registered()
    begin(h, 9)
    finish(h, {"error": "login_failed", "attempts_left": 8}, correct=False, left=9)
    assert check(h).verdict == "violation"


def test_budget_exhaustion_reports_unknown_not_ok() -> None:
    h = registered()
    for left in range(LIMIT - 1, 0, -1):
        begin(h, left)
    result = check(h, budget=3)
    assert result.verdict == "unknown"
    assert "budget" in result.explanation
    assert check(h).verdict == "ok"


# ---- the generic checker with a plain counter ---------------------------------------


class Counter:
    """``("inc",)`` adds one; ``("read",)`` returns the value."""

    def init(self) -> int:
        return 0

    def step(self, state: int, call: Hashable, ret: Any) -> Iterable[int]:
        if call == ("inc",):
            return [state + 1]
        return [state] if ret is PENDING or ret == state else []


def test_optional_op_cannot_take_effect_after_its_completion() -> None:
    inc = Operation(1, ("inc",), PENDING, invoke=0, complete=1, required=False)
    read_zero = Operation(2, ("read",), 0, invoke=2, complete=3)
    read_one = Operation(3, ("read",), 1, invoke=4, complete=5)
    assert check_operations([inc, read_zero, read_one], Counter()).verdict == "violation"
    assert check_operations([inc, read_zero], Counter()).verdict == "ok"
    assert check_operations([inc, read_one], Counter()).verdict == "ok"
    open_inc = Operation(1, ("inc",), PENDING, invoke=0, complete=math.inf, required=False)
    assert check_operations([open_inc, read_zero, read_one], Counter()).verdict == "ok"


def test_many_interchangeable_pending_ops_stay_cheap() -> None:
    ops = [Operation(i, ("inc",), PENDING, invoke=i, required=False) for i in range(60)]
    ops.append(Operation(100, ("read",), 61, invoke=200, complete=201))
    result = check_operations(ops, Counter(), budget=5_000)
    assert result.verdict == "violation"
    ops[-1] = Operation(100, ("read",), 37, invoke=200, complete=201)
    result = check_operations(ops, Counter(), budget=5_000)
    assert result.verdict == "ok"
    assert result.nodes < 5_000


def test_a_register_repeated_by_chatd_resets_within_its_own_interval_only() -> None:
    h = registered(1)
    begin(h, 9)
    second = h.invoke("c0", "register", A, {"gen": 2})
    begin(h, 9, proc="c1")  # after the first Put of gen 2
    h.ok(second)
    begin(h, 9, proc="c1")  # after the repeated Put of gen 2
    assert check(h).verdict == "ok"
    assert check(h, extra_counts=0).verdict == "violation"
    begin(h, 8, proc="c1")
    finish(h, {"gen": 1})  # no repeat brings an overwritten generation back
    assert check(h).verdict == "violation"
