"""A dependency-free progress bar for long transfers (bytes, rate, ETA on stderr).

Library code reports progress through a plain callback, ``progress(done,
total)``, so it never decides how (or whether) progress is shown. The bar
draws only on a terminal: piped or redirected stderr stays clean for logs.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes done so far, expected total or None when unknown)."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_BAR_WIDTH = 24
MIN_ETA_SECONDS = 1.0
MAX_ETA_SECONDS = 100 * 3600.0


def format_size(count: float) -> str:
    """Human-readable binary size: 0 B, 1023 B, 1.5 KiB, 20.0 MiB."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """m:ss or h:mm:ss."""
    total = max(0, int(seconds + 0.5))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(
    label: str, done: int, total: int | None, elapsed: float, *, rate: float | None = None
) -> str:
    """One status line; a total smaller than ``done`` (an estimate) is treated as ``done``.

    ``rate`` defaults to ``done / elapsed``. The ETA stays "--:--" until
    :data:`MIN_ETA_SECONDS` of transfer were measured (a first chunk over a few
    milliseconds predicts nothing) and when it would exceed :data:`MAX_ETA_SECONDS`.
    """
    if rate is None:
        rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{format_size(rate)}/s"
    if total is None or total <= 0:
        return f"{label} {format_size(done)}  {speed}"
    total = max(total, done)
    fraction = done / total
    filled = int(fraction * _BAR_WIDTH)
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    left = (total - done) / rate if rate > 0 else None
    measured = elapsed >= MIN_ETA_SECONDS
    eta = format_duration(left) if measured and left is not None and left <= MAX_ETA_SECONDS \
        else "--:--"
    return (
        f"{label} [{bar}] {fraction * 100:3.0f}% "
        f"{format_size(done)} / {format_size(total)}  {speed}  ETA {eta}"
    )


class ProgressBar:
    """A :data:`ProgressCallback` that redraws one stderr line at most every ``interval`` s.

    ``enabled=None`` means "only if the stream is a terminal". Safe to call
    from worker threads. Use as a context manager so the line is finished.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _isatty(self._stream)
        self.enabled = enabled
        self._label = label
        self._interval = interval
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._state: tuple[int, int | None] = (0, None)
        self._first: tuple[float, int] | None = None  # (when, done) of the first report
        self._width = 0
        self._drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._state = (done, total)
            now = time.monotonic()
            if self._first is None:  # the rate is measured from here, not from construction
                self._first = (now, done)
            if now - self._last_draw >= self._interval:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        done, total = self._state
        since, base = self._first if self._first is not None else (now, done)
        measured = now - since
        rate = (done - base) / measured if measured > 0 else 0.0
        line = render(self._label, done, total, measured, rate=rate)
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write(f"\r{line}{pad}")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Draw the final state and end the line (only if anything was shown)."""
        if not self.enabled:
            return
        with self._lock:
            if self._drawn or self._state[0]:
                self._draw(time.monotonic())
                self._stream.write("\n")
                self._stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class CountingStream(io.RawIOBase):
    """Wraps a file object and reports the bytes passing through it to a progress callback.

    Closing the wrapper leaves the wrapped file open: its owner closes it.
    """

    def __init__(self, inner: Any, progress: ProgressCallback | None, total: int | None) -> None:
        super().__init__()
        self._inner = inner
        self._progress = progress
        self._total = total
        self._done = 0

    def _count(self, count: int) -> None:
        self._done += count
        if self._progress is not None:
            self._progress(self._done, self._total)

    def readable(self) -> bool:
        return hasattr(self._inner, "readinto") or hasattr(self._inner, "read")

    def writable(self) -> bool:
        return hasattr(self._inner, "write")

    def write(self, data: Any, /) -> int:
        written: int = self._inner.write(data)
        self._count(written)
        return written

    def readinto(self, buffer: Any, /) -> int:
        got: int = self._inner.readinto(buffer) or 0
        self._count(got)
        return got

    def flush(self) -> None:
        if not self.closed and hasattr(self._inner, "flush"):
            self._inner.flush()
