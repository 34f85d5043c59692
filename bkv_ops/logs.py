"""Structured logs for both servers: one JSON object per line, or plain text on a terminal.

Operators feed the JSON lines to a log pipeline, so every line must parse on
its own: newlines inside messages are escaped by the encoder and an exception
becomes one ``exc`` field (type and message, never a traceback with locals).
The code never logs secrets; as a second line of defence, any structured field
whose name suggests one (password, key, token, ...) is replaced by a marker.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Literal

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[str, ...] = ("json", "text")
REDACTED = "[redacted]"
# Field names containing any of these are never written out (belt and braces).
SECRET_WORDS = ("password", "passwd", "key", "token", "secret", "seed", "ke1", "ke2", "ke3",
                "deposit", "envelope", "payload")
MAX_FIELD_CHARS = 1000

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` could hold a secret (substring match, case-insensitive)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with the value of every secret-sounding name (at any depth) replaced."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if is_secret_name(str(name)):
            out[str(name)] = REDACTED
        elif isinstance(value, Mapping):
            out[str(name)] = redact(value)
        else:
            out[str(name)] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """A JSON-safe, bounded rendering of one field value."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # raw bytes are never shown: they may be key material
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in list(value)[:50]]
    return _one_line(str(value))


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 3] + "..."


def exception_field(exc_info: Any) -> str | None:
    """``"Type: message"`` on one line, or None; the traceback is deliberately dropped."""
    if not exc_info or exc_info is True or exc_info[0] is None:
        return None
    exc_type, exc, _ = exc_info
    message = _one_line(str(exc)) if exc is not None else ""
    return f"{exc_type.__name__}: {message}" if message else exc_type.__name__


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, identity, extra fields, exc."""

    def __init__(self, identity: Mapping[str, str]) -> None:
        super().__init__()
        self._identity = dict(identity)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            **self._identity,
            "msg": _one_line(record.getMessage()),
        }
        for name, value in redact(_extras(record)).items():
            line.setdefault(name, value)  # an extra never overwrites a standard field
        exc = exception_field(record.exc_info)
        if exc is not None:
            line["exc"] = exc
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """Human-readable single lines for a terminal; extra fields appended as ``k=v``."""

    def __init__(self, identity: Mapping[str, str]) -> None:
        super().__init__()
        self._who = " ".join(f"{v}" for v in identity.values() if v)

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname, record.name]
        if self._who:
            parts.append(f"[{self._who}]")
        text = " ".join(parts) + ": " + _one_line(record.getMessage())
        fields = redact(_extras(record))
        if fields:
            text += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        exc = exception_field(record.exc_info)
        return text if exc is None else f"{text} exc={json.dumps(exc)}"


def default_format(stream: IO[str] | None = None) -> LogFormat:
    """``text`` when writing to a terminal, ``json`` otherwise (files, pipes, containers)."""
    target = sys.stderr if stream is None else stream
    try:
        return "text" if target.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def pick_format(flag: str | None, configured: str = "") -> LogFormat:
    """The command-line choice, else the config's ``log_format``, else :func:`default_format`."""
    for choice in (flag, configured):
        if choice == "json":
            return "json"
        if choice == "text":
            return "text"
    return default_format()


def configure_logging(
    fmt: LogFormat,
    level: int | str = logging.INFO,
    *,
    service: str = "",
    node: str = "",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Replace the root handlers with one stderr handler in ``fmt``; return it.

    ``service`` and ``node`` name the process on every line. Uncaught exceptions
    (main and other threads) and ``warnings`` are routed through the same
    handler, so nothing multi-line reaches the stream from Python.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    identity = {k: v for k, v in (("service", service), ("node", node)) if v}
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(identity) if fmt == "json" else TextFormatter(identity))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    return handler


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("bkv.uncaught").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log = logging.getLogger("bkv.uncaught")
    if args.exc_value is None:
        log.error("uncaught %s in thread %s", args.exc_type.__name__, name)
        return
    log.error("uncaught exception in thread %s", name,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
