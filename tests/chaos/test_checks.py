"""Each of the suite's checks fires on a hand-made bad history and stays quiet on a good one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vault_node import state as st

from .checks import run_checks
from .history import History, HistoryBuilder, first_ok_recovery_after, outcome_counts, read_history

LIMIT = 3
A, B = "acct-a", "acct-b"


def reg(h: HistoryBuilder, gen: int, account: str = A) -> None:
    h.ok(h.invoke("c0", "register", account, {"gen": gen}))


def ke2(h: HistoryBuilder, left: int, account: str = A) -> None:
    h.ok(h.invoke("c0", "begin", account), {"ke2": True, "attempts_left": left})


def fin(h: HistoryBuilder, value: dict[str, Any], account: str = A, correct: bool = True) -> None:
    h.ok(h.invoke("c0", "finish", account, {"correct": correct}), value)


def good_history() -> HistoryBuilder:
    h = HistoryBuilder()
    reg(h, 1)
    reg(h, 1, B)
    for _ in range(2):
        for left in (2, 1, 0):
            ke2(h, left)
        fin(h, {"gen": 1})  # the last allowed guess was right: counter back to 0
    ke2(h, 2, B)
    fin(h, {"error": "login_failed", "attempts_left": 2}, B, correct=False)
    ke2(h, 1, B)
    ke2(h, 0, B)
    h.ok(h.invoke("c0", "begin", B), {"error": "destroyed"})
    reg(h, 2, B)
    ke2(h, 2, B)
    fin(h, {"gen": 2}, B)
    return h


def names(violations: list[str]) -> set[str]:
    return {v.split(":", 1)[0] for v in violations}


def test_good_history_passes_every_check() -> None:
    h = good_history()
    report = run_checks(h.events, attempt_limit=LIMIT, digests={"n1": b"d" * 32, "n2": b"d" * 32})
    assert report.ok, report.summary()
    assert report.unknown == []
    assert report.counters["ke2_windows"] >= 3
    assert report.counters["outcome.begin:ke2"] == 10


def test_lost_registration_fires() -> None:
    h = good_history()
    h.ok(h.invoke("c9", "begin", A), {"error": "not_registered"})
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
    assert "lost-registration" in names(report.violations)
    assert any("not_registered" in v and A in v for v in report.violations)


def test_older_generation_after_an_acknowledged_register_fires() -> None:
    h = HistoryBuilder()
    reg(h, 1)
    reg(h, 2)
    ke2(h, 2)
    fin(h, {"gen": 1})
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
    assert "lost-registration" in names(report.violations)
    # Registers that overlap may land in either order: no loss.
    h = HistoryBuilder()
    one = h.invoke("c0", "register", A, {"gen": 1})
    two = h.invoke("c1", "register", A, {"gen": 2})
    h.ok(two)
    h.ok(one)
    ke2(h, 2)
    fin(h, {"gen": 2})
    assert run_checks(h.events, attempt_limit=LIMIT, digests=None).ok


def test_too_many_ke2_between_resets_fires() -> None:
    h = HistoryBuilder()
    reg(h, 1)
    for left in (2, 1, 0, 0):
        ke2(h, left)
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
    assert "ke2-limit" in names(report.violations)
    assert any("4 KE2" in v for v in report.violations)


def test_ke2_window_is_cut_by_a_possible_reset() -> None:
    # A correct finish whose outcome is unknown may have reset the counter: the
    # KE2s around it are never counted together.
    h = HistoryBuilder()
    reg(h, 1)
    for left in (2, 1):
        ke2(h, left)
    h.complete(h.invoke("c0", "finish", A, {"correct": True}), "info")
    for left in (2, 1, 0):
        ke2(h, left)
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
    assert "ke2-limit" not in names(report.violations)
    assert report.ok, report.summary()


def test_non_linearizable_history_fires() -> None:
    h = good_history()
    reg(h, 7, "acct-c")
    ke2(h, 2, "acct-c")
    ke2(h, 2, "acct-c")  # a lost increment
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
    assert names(report.violations) == {"linearizability"}
    assert "acct-c" in report.violations[0]


def test_budget_exhaustion_is_reported_apart() -> None:
    report = run_checks(good_history().events, attempt_limit=LIMIT, digests=None, budget=2)
    assert report.ok
    assert report.unknown and all("budget" in u for u in report.unknown)


def test_digest_check() -> None:
    events = good_history().events
    same = {"n1": b"\x01" * 32, "n2": b"\x01" * 32}
    assert run_checks(events, attempt_limit=LIMIT, digests=same).ok
    differ = {"n1": b"\x01" * 32, "n2": b"\x02" * 32}
    assert names(run_checks(events, attempt_limit=LIMIT, digests=differ).violations) == {
        "digests"}
    missing = {"n1": b"\x01" * 32, "unreachable:127.0.0.1:9": b""}
    report = run_checks(events, attempt_limit=LIMIT, digests=missing)
    assert any("did not report" in v for v in report.violations)
    assert not run_checks(events, attempt_limit=LIMIT, digests={}).ok


def test_history_file_round_trip_and_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history = History(path)
    op = history.invoke("c0", "register", A, {"gen": 1})
    history.complete(op, "ok", None)
    op = history.invoke("c0", "begin", A, None)
    history.complete(op, "ok", {"ke2": True, "attempts_left": 2})
    op = history.invoke("c0", "finish", A, {"correct": True})
    history.complete(op, "ok", {"gen": 1})
    history.invoke("c1", "begin", A, None)  # never completes
    history.close()
    with path.open("a", encoding="utf-8") as f:
        f.write('{"op": 9, "proc": "c1", "ty')  # the writer died mid-line
    events = read_history(path)
    assert [e.type for e in events] == ["invoke", "ok"] * 3 + ["invoke"]
    assert "password" not in path.read_text("utf-8")
    assert outcome_counts(events) == {
        "begin:ke2": 1, "begin:pending": 1, "finish:gen": 1, "register:ok": 1}
    assert first_ok_recovery_after(events, 0.0) == events[5].t
    assert first_ok_recovery_after(events, events[5].t) is None
    assert run_checks(events, attempt_limit=LIMIT, digests=None).ok


# ---- no false alarms: histories of the real state machine under random interleavings ----


def simulated_history(seed: int, *, procs: int = 3, steps: int = 60) -> HistoryBuilder:
    """Clients racing on one account; every effect is ``VaultState.apply`` inside its op.

    Replies follow ``service.py``. Some replies are lost (info, or never
    completed), some effects never happen, some begins and registers commit
    twice and some resets answer session_expired (ChatD retries after a lost
    reply), so every kind of uncertainty is exercised.
    """
    rng = random.Random(seed)
    vault = st.VaultState()
    acct_id = bytes(32)
    gen_of: dict[bytes, int] = {}
    h = HistoryBuilder()
    gens = 0
    # proc -> [op, apply-fn, last result, effects still to apply, applied at least once]
    running: dict[int, list[Any]] = {}
    sessions: dict[int, tuple[bytes, int, bool]] = {}

    def start(p: int) -> None:
        nonlocal gens
        roll = rng.random()
        if p in sessions and roll < 0.6:
            record_id, left, last = sessions.pop(p)
            correct = rng.random() < 0.5
            op = h.invoke(f"c{p}", "finish", A, {"correct": correct, "ke2_attempts_left": left})

            def fin() -> Any:
                if correct:
                    r = vault.apply(st.ResetAttempts(acct_id, record_id))
                    if r.outcome == st.Outcome.OK and rng.random() < 0.9:
                        return {"gen": gen_of[record_id]}
                    return {"error": "session_expired"}
                if last:
                    vault.apply(st.DestroyIfExhausted(acct_id, record_id))
                return {"error": "login_failed", "attempts_left": left}

            running[p] = [op, fin, None, 1, False]
        elif roll < 0.15 or not gen_of:
            gens += 1
            gen, record_id = gens, gens.to_bytes(16, "big")
            op = h.invoke(f"c{p}", "register", A, {"gen": gen})

            def reg() -> Any:
                gen_of[record_id] = gen
                vault.apply(st.Put(acct_id, record_id, b"sealed", LIMIT))
                return None

            running[p] = [op, reg, None, 2 if rng.random() < 0.1 else 1, False]
        else:
            op = h.invoke(f"c{p}", "begin", A)

            def beg() -> Any:
                r = vault.apply(st.BeginAttempt(acct_id, op.to_bytes(16, "big")))  # fresh KE1
                if r.outcome == st.Outcome.GRANTED:
                    left = max(r.limit - r.attempts, 0)
                    sessions[p] = (r.record_id, left, r.attempts >= r.limit)
                    return {"ke2": True, "attempts_left": left}
                sessions.pop(p, None)
                return {"error": str(r.outcome)}

            running[p] = [op, beg, None, 2 if rng.random() < 0.1 else 1, False]

    for _ in range(steps):
        p = rng.randrange(procs)
        if p not in running:
            start(p)
            continue
        op, effect, result, left, applied = running[p]
        if left > 0 and rng.random() < 0.7:
            if not applied and rng.random() < 0.03:
                running[p][3] = -1  # lost before it took effect
            else:
                running[p][2:] = [effect(), left - 1, True]
            continue
        del running[p]
        fate = rng.random()
        if left < 0:
            h.complete(op, "fail" if fate < 0.5 else "info")
        elif left > 0 or fate < 0.08:
            h.complete(op, "info")
            sessions.pop(p, None)
        elif fate < 0.1:
            sessions.pop(p, None)  # never completes (the client gave up on it)
        else:
            h.ok(op, result)
    return h


def test_random_histories_of_the_real_state_machine_pass() -> None:
    seen: dict[str, int] = {}
    for seed in range(60):
        for procs, steps in ((3, 60), (4, 150)):
            h = simulated_history(seed, procs=procs, steps=steps)
            report = run_checks(h.events, attempt_limit=LIMIT, digests=None)
            assert report.ok, f"seed {seed}:\n{report.summary()}"
            assert not report.unknown, f"seed {seed}:\n{report.summary()}"
            for key, n in report.counters.items():
                seen[key] = seen.get(key, 0) + n
    for kind in ("begin:ke2", "begin:destroyed", "finish:gen", "finish:login_failed",
                 "finish:session_expired", "begin:info", "register:ok", "register:info",
                 "finish:info", "begin:fail", "begin:pending"):
        assert seen.get(f"outcome.{kind}", 0) > 0, (kind, seen)


def test_long_uncertain_history_stays_within_a_small_search() -> None:
    # Thousands of operations, hundreds of them of unknown outcome, on one account.
    h = simulated_history(7, procs=2, steps=8000)
    report = run_checks(h.events, attempt_limit=LIMIT, digests=None, budget=50_000)
    assert report.ok and not report.unknown, report.summary()
    assert report.counters["ops"] > 2500
    assert report.counters["outcome.begin:info"] > 100
    assert report.counters["lin_nodes"] < 40_000
