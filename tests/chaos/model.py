"""The vault as one account sees it, for the linearizability checker; and history -> operations.

State ``(gen, attempts, destroyed)`` mirrors ``vault_node.state.AccountEntry``
(``gen`` None = never registered) with the attempt limit N of the cluster.
Each workload operation is one vault step with at most one commit that
changes this state, so it is atomic here:

* ``register(g)``  -- Put: ``(g, 0, False)``.
* ``begin``        -- BeginAttempt: not registered -> ``not_registered``;
  destroyed -> ``destroyed``; attempts >= N -> becomes destroyed, ``destroyed``;
  else attempts + 1 and KE2 with ``attempts_left = N - attempts`` (the new
  count: the guesses left should this one be wrong, as ``service.py`` replies).
* ``finish(correct)`` -- ResetAttempts: releases the current generation and
  resets attempts, only if registered and not destroyed.
* ``finish(wrong)``   -- LOGIN_FAILED carrying the ``attempts_left`` of its own
  KE2 (the session's value, not the current state's).

The vault counts distinct guesses since the last reset (a KE1's blinded
element, ``guess_tag`` in ``service.py``), so the state also holds the begin ops
counted since then: a begin already in that set is the same guess delivered
again and changes nothing. Every workload begin sends a fresh KE1.

Where the reply is not a pure function of the replicated state, the model is
permissive and says so below. Retries inside ChatD (after UNAVAILABLE or a
deadline on one node) may commit one request twice; ``operations_by_account``
therefore adds "ghost" optional repeats of begins and registers. A repeated
begin counts only if a reset came in between (the same guess after a reset is
a new test of the password); a repeated Put re-registers the same generation
within its own register's interval. A ghost may fall anywhere in that interval
(in truth it precedes the op's own commit).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, NamedTuple

from .history import Event
from .lincheck import PENDING, Operation


class State(NamedTuple):
    """One account: generation (None = never registered), counted guesses, destroyed,
    and which begin ops were counted since the last reset."""

    gen: int | None
    attempts: int
    destroyed: bool
    counted: frozenset[int] = frozenset()


# Normalised results (hashable, comparable).
NOT_REGISTERED = ("not_registered",)
DESTROYED = ("destroyed",)
SESSION_EXPIRED = ("session_expired",)
UNSEEN = -1  # stands for every generation no finish ever released


class VaultModel:
    """One account of ``vault_node.state.VaultState`` under the replies of ``service.py``."""

    def __init__(self, attempt_limit: int) -> None:
        if attempt_limit < 1:
            raise ValueError("attempt limit must be at least 1")
        self.limit = attempt_limit

    def init(self) -> State:
        return State(None, 0, False)

    def step(self, state: State, call: Hashable, ret: Any) -> Iterable[State]:
        assert isinstance(call, tuple)
        kind = call[0]
        if kind == "register":
            return [State(call[1], 0, False)]
        if kind == "begin":
            return self._begin(state, call[1], ret)
        if kind == "finish":
            return self._finish(state, bool(call[1]), call[2], ret)
        raise ValueError(f"unknown call {kind!r}")

    def _begin(self, state: State, op: int | None, ret: Any) -> list[State]:
        gen, attempts, destroyed, counted = state
        out: tuple[Any, ...]
        if gen is not None and not destroyed and op in counted:
            # The same guess again: granted with the current count. At the limit a
            # DestroyIfExhausted (folded into "attempts >= N" here) may have come first.
            if ret is PENDING or ret == ("ke2", self.limit - attempts):
                return [state]
            if ret == DESTROYED and attempts >= self.limit:
                return [State(gen, attempts, True)]
            return []
        if gen is None:
            out, new = NOT_REGISTERED, state
        elif destroyed:
            out, new = DESTROYED, state
        elif attempts >= self.limit:
            out, new = DESTROYED, State(gen, attempts, True)
        else:
            out = ("ke2", self.limit - (attempts + 1))
            new = State(gen, attempts + 1, False, counted if op is None else counted | {op})
        return [new] if ret is PENDING or ret == out else []

    def _finish(self, state: State, correct: bool, ke2_left: int | None, ret: Any) -> list[State]:
        gen, attempts, destroyed, _counted = state
        live = gen is not None and not destroyed
        reset: list[State] = [State(gen, 0, False)] if live else []
        if correct:
            # session_expired: the session was lost (leader change), the record changed
            # under it, or ChatD retried after a reset had committed -- so the reset may
            # or may not have happened. Permissive: both.
            if ret is PENDING or ret == SESSION_EXPIRED:
                return [*reset, state] if reset != [state] else [state]
            if ret == ("gen", gen) and live:
                return reset
        else:
            # A wrong KE3 on the last attempt (or an expired last session, or the
            # sweeper) commits DestroyIfExhausted. That is folded into "attempts >= N":
            # to every begin such a record answers "destroyed" exactly like a destroyed
            # one, and only a correct finish of an older session could tell them apart,
            # which the model allows. So a wrong finish never changes the state here.
            if ret is PENDING or ret == SESSION_EXPIRED:
                return [state]
            if (
                isinstance(ret, tuple)
                and len(ret) == 2
                and ret[0] == "login_failed"
                and (ke2_left is None or ret[1] == ke2_left)
            ):
                return [state]
        # The service never answers KEY_DESTROYED to a KE3; tolerated if it is true.
        if ret == DESTROYED and (destroyed or (gen is not None and attempts >= self.limit)):
            return [state]
        return []


def normalise_result(f: str, value: Any) -> tuple[Any, ...]:
    """The history's ok value as a hashable result the model compares against."""
    if f == "register":
        return ("ok",)
    if isinstance(value, dict):
        if value.get("ke2") is True and isinstance(value.get("attempts_left"), int):
            return ("ke2", value["attempts_left"])
        if "gen" in value and "error" not in value:
            return ("gen", value["gen"])
        error = value.get("error")
        if error == "login_failed":
            return ("login_failed", value.get("attempts_left"))
        if error in ("not_registered", "destroyed", "session_expired"):
            return (str(error),)
        if error is not None:
            return ("other", str(error))
    return ("other", repr(value))


def call_of(
    f: str, value: Any, observed: set[Any] | None = None, op: int | None = None
) -> tuple[Any, ...]:
    """The model call for an invocation (its value carries no secret, only gens and flags).

    With ``observed`` (the generations some finish released), every other
    generation becomes ``UNSEEN``: the model compares generations only with
    released ones, so this changes no verdict, and it makes registers of
    never-released generations interchangeable for the search. The KE2 count
    only matters to a wrong finish, so a correct finish's call omits it.
    """
    value = value if isinstance(value, dict) else {}
    if f == "register":
        gen = value.get("gen")
        return ("register", gen if observed is None or gen in observed else UNSEEN)
    if f == "begin":
        return ("begin", op)
    if f == "finish":
        correct = bool(value.get("correct"))
        left = value.get("ke2_attempts_left")
        return ("finish", correct, left if isinstance(left, int) and not correct else None)
    raise ValueError(f"unknown operation {f!r}")


def operations_by_account(
    events: Sequence[Event], *, extra_counts: int = 1
) -> dict[str, list[Operation]]:
    """Per account, the operations of a history, positions = line numbers.

    ``fail`` ops are left out (they did not take effect); ``info`` and
    never-completed ops are optional with no deadline, except a wrong finish of
    unknown outcome, which cannot change the model state and is left out too.
    Every answered begin and every register that may have run brings
    ``extra_counts`` optional ghost repeats, limited to its own interval (or
    unlimited if its outcome is unknown): a command ChatD may have committed on
    a try whose reply was lost before it retried.
    """
    invoked: dict[int, tuple[int, Event]] = {}
    ended: dict[int, tuple[int, Event]] = {}
    for pos, e in enumerate(events):
        (invoked if e.type == "invoke" else ended)[e.op] = (pos, e)
    released: dict[str, set[Any]] = {}
    for _, e in ended.values():
        if e.type == "ok" and e.f == "finish" and isinstance(e.value, dict) and "gen" in e.value:
            released.setdefault(e.account, set()).add(e.value["gen"])
    out: dict[str, list[Operation]] = {}
    ghost_id = -1
    for op_id, (pos, inv) in sorted(invoked.items(), key=lambda kv: kv[1][0]):
        end = ended.get(op_id)
        kind = end[1].type if end is not None else "pending"
        # Only a begin with a definite answer carries its id: the id lets its ghost
        # repeats count once between resets. A begin of unknown outcome counts at
        # most once, wherever it is placed (tracking it too makes the search blow up).
        ghosts = extra_counts if inv.f == "register" and kind != "fail" else 0
        if inv.f == "begin" and kind == "ok":
            call, ghosts = call_of(inv.f, inv.value, op=op_id), extra_counts
        else:
            call = call_of(inv.f, inv.value, released.get(inv.account, set()))
        ops = out.setdefault(inv.account, [])
        complete = float(end[0]) if end is not None and kind != "info" else math.inf
        label = f"op {op_id} ({inv.proc}) {inv.f} {inv.value} -> "
        if kind == "ok":
            assert end is not None
            result = normalise_result(inv.f, end[1].value)
            ops.append(Operation(op_id, call, result, pos, complete, True,
                                 label + json_repr(end[1].value)))
        elif kind in ("info", "pending") and call[:2] != ("finish", False):
            ops.append(Operation(op_id, call, PENDING, pos, math.inf, False, label + "unknown"))
        if ghosts:
            for _ in range(ghosts):
                ops.append(Operation(ghost_id, call, PENDING, pos, complete, False,
                                     f"possible repeat of op {op_id}"))
                ghost_id -= 1
    return out


def json_repr(value: Any) -> str:
    return "null" if value is None else str(value)
