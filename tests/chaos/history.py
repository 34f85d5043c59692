"""The chaos history: one JSON object per line, every vault step as an invoke and a completion.

An operation is written twice: ``invoke`` before the request leaves the client,
and ``ok`` / ``fail`` / ``info`` once its fate is known (``info`` = unknown: it
may or may not have taken effect, and stays pending forever). Lines are written
and flushed under one lock, so the order of lines is the real-time order of the
events; the checkers rely on that order rather than on clock values. A process
killed mid-write leaves at most a truncated last line, which ``read_history``
skips. No secrets are ever recorded: generations, booleans and counters only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, cast

EventType = Literal["invoke", "ok", "fail", "info"]
COMPLETIONS = ("ok", "fail", "info")
OPS = ("register", "begin", "finish")


@dataclass(frozen=True)
class Event:
    """One line of the history."""

    op: int
    proc: str
    type: EventType
    f: str
    account: str
    value: Any
    t: float
    wall: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "op": self.op,
                "proc": self.proc,
                "type": self.type,
                "f": self.f,
                "account": self.account,
                "value": self.value,
                "t": self.t,
                "wall": self.wall,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        """Parse one line; ValueError if it is not a well-formed event."""
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("event is not an object")
        try:
            event = cls(
                op=int(raw["op"]),
                proc=str(raw["proc"]),
                type=raw["type"],
                f=str(raw["f"]),
                account=str(raw["account"]),
                value=raw.get("value"),
                t=float(raw["t"]),
                wall=float(raw["wall"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed event: {err}") from None
        if event.type not in ("invoke", *COMPLETIONS):
            raise ValueError(f"unknown event type {event.type!r}")
        return event


class History:
    """Append-only, thread-safe history writer (one flushed line per event)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")
        self._next_op = 0
        self._open: dict[int, tuple[str, str, str]] = {}  # op -> (proc, f, account)

    def __repr__(self) -> str:
        return f"History({str(self.path)!r}, open_ops={len(self._open)})"

    def invoke(self, proc: str, f: str, account: str, value: Any) -> int:
        """Record that ``proc`` is about to run ``f`` on ``account``; returns the op id."""
        if f not in OPS:
            raise ValueError(f"unknown operation {f!r}")
        with self._lock:
            op = self._next_op
            self._next_op += 1
            self._open[op] = (proc, f, account)
            self._write(Event(op, proc, "invoke", f, account, value, time.monotonic(), time.time()))
        return op

    def complete(self, op: int, type: str, value: Any) -> None:
        """Record the outcome (``ok``/``fail``/``info``) of an invoked op, at most once."""
        if type not in COMPLETIONS:
            raise ValueError(f"unknown completion type {type!r}")
        kind = cast(EventType, type)
        with self._lock:
            proc, f, account = self._open.pop(op)
            self._write(Event(op, proc, kind, f, account, value, time.monotonic(), time.time()))

    def close(self) -> None:
        """Flush and close (idempotent); ops still open stay pending in the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _write(self, event: Event) -> None:
        if self._file is None:
            raise ValueError("history is closed")
        self._file.write(event.to_json() + "\n")
        self._file.flush()


def read_history(path: Path) -> list[Event]:
    """All events in file order; a truncated or garbled *last* line is ignored."""
    lines = Path(path).read_text("utf-8", errors="replace").split("\n")
    events: list[Event] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(line))
        except ValueError:
            if any(rest.strip() for rest in lines[index + 1 :]):
                raise ValueError(f"{path}: line {index + 1} is not a history event") from None
    return events


def completions(events: list[Event]) -> dict[int, Event]:
    """op id -> its completion event (ops never completed are absent)."""
    return {e.op: e for e in events if e.type != "invoke"}


def first_ok_recovery_after(events: list[Event], t: float) -> float | None:
    """Monotonic time of the first successful ``finish`` (a key released) completed after ``t``."""
    for e in events:
        if (
            e.type == "ok"
            and e.f == "finish"
            and e.t > t
            and isinstance(e.value, dict)
            and "gen" in e.value
        ):
            return e.t
    return None


def outcome_kind(event: Event) -> str:
    """A short name for a completion: ``ok``, ``fail``, ``info``, or the ok value's kind."""
    return outcome_of(event.type, event.value)


def outcome_of(type: str, value: Any) -> str:
    """``outcome_kind`` of a completion of this type and value (before it is an event)."""
    if type != "ok":
        return type
    if isinstance(value, dict):
        if "error" in value:
            return str(value["error"])
        if value.get("ke2"):
            return "ke2"
        if "gen" in value:
            return "gen"
    return "ok"


def outcome_counts(events: list[Event]) -> dict[str, int]:
    """Counts per ``"<f>:<kind>"`` (e.g. ``begin:ke2``, ``finish:gen``), plus pending ops."""
    counts: Counter[str] = Counter()
    done = completions(events)
    for e in events:
        if e.type == "invoke":
            end = done.get(e.op)
            counts[f"{e.f}:{outcome_kind(end) if end is not None else 'pending'}"] += 1
    return dict(sorted(counts.items()))


class HistoryBuilder:
    """An in-memory history with the same invoke/complete calls (hand-made histories)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._open: dict[int, Event] = {}
        self._clock = 0.0

    def invoke(self, proc: str, f: str, account: str, value: Any = None) -> int:
        op = sum(1 for e in self.events if e.type == "invoke")
        self._clock += 1.0
        event = Event(op, proc, "invoke", f, account, value, self._clock, self._clock)
        self._open[op] = event
        self.events.append(event)
        return op

    def complete(self, op: int, type: str, value: Any = None) -> None:
        if type not in COMPLETIONS:
            raise ValueError(f"unknown completion type {type!r}")
        inv = self._open.pop(op)
        self._clock += 1.0
        kind = cast(EventType, type)
        self.events.append(
            Event(op, inv.proc, kind, inv.f, inv.account, value, self._clock, self._clock)
        )

    def ok(self, op: int, value: Any = None) -> None:
        self.complete(op, "ok", value)
