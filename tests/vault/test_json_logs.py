"""Structured logs: one JSON object per line, single-line exceptions, secret-named fields redacted.

The same lines from real processes are checked in ``tests/cluster/test_cluster_status.py``.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from bkv_ops.logs import (
    REDACTED,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    is_secret_name,
    pick_format,
    redact,
)
from bkv_tools.launcher_layout import child_env
from chatd_proxy.config import ChatDConfig
from chatd_proxy.config import ConfigError as ChatDConfigError
from vault_node.config import ConfigError, NodeConfig


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    """Root logging into a buffer as JSON; the previous handlers and hooks come back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    stream = io.StringIO()
    configure_logging("json", logging.DEBUG, service="vault", node="n1", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
        logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_every_record_is_one_json_line_with_the_standard_fields(captured: io.StringIO) -> None:
    log = logging.getLogger("bkv.test")
    log.info("two\nlines %s", "and\r\nmore", extra={"shard": 3, "outcome": "OK"})
    log.warning("plain")
    out = lines(captured)
    assert len(out) == 2
    first = out[0]
    assert first["level"] == "info" and first["logger"] == "bkv.test"
    assert first["service"] == "vault" and first["node"] == "n1"
    assert first["msg"] == "two lines and more"
    assert first["shard"] == 3 and first["outcome"] == "OK"
    ts = str(first["ts"])
    assert ts.endswith("Z") and datetime.fromisoformat(ts.replace("Z", "+00:00")).tzinfo
    assert out[1]["level"] == "warning"


def test_exceptions_become_one_field_without_traceback(captured: io.StringIO) -> None:
    def fail() -> None:
        local_secret = "do-not-show-me"  # noqa: F841 (a local a traceback printer could show)
        raise ValueError("bad\nthing")

    try:
        fail()
    except ValueError:
        logging.getLogger("bkv.test").exception("it failed")
    (line,) = lines(captured)
    assert line["exc"] == "ValueError: bad thing"
    assert "Traceback" not in captured.getvalue() and "do-not-show-me" not in captured.getvalue()


def test_secret_named_fields_are_redacted(captured: io.StringIO) -> None:
    logging.getLogger("bkv.test").info("deposit stored", extra={
        "password": "hunter2", "backup_key": "00" * 32, "account_token": "tok",
        "ke2": b"\x01\x02", "nested": {"seed": "s", "shard": 1}, "raw": b"\xff" * 8,
        "attempts": 2,
    })
    (line,) = lines(captured)
    for name in ("password", "backup_key", "account_token", "ke2"):
        assert line[name] == REDACTED
    assert line["nested"] == {"seed": REDACTED, "shard": 1}
    assert line["raw"] == "<8 bytes>"  # raw bytes are never printed
    assert line["attempts"] == 2
    for leaked in ("hunter2", "00" * 32, "tok\"", "\\u00ff"):
        assert leaked not in captured.getvalue()


@pytest.mark.parametrize("name", ["password", "PASSWORD_hash", "fleet_key", "token", "secret",
                                  "Seed", "ke1", "KE3_mac", "deposit_blob"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)
    assert redact({name: "x"}) == {name: REDACTED}


@pytest.mark.parametrize("name", ["shard", "outcome", "term", "node_id", "role"])
def test_ordinary_names_pass(name: str) -> None:
    assert not is_secret_name(name)
    assert redact({name: "x\ny"}) == {name: "x y"}


def test_extra_fields_never_overwrite_standard_ones() -> None:
    record = logging.LogRecord("bkv.x", logging.INFO, __file__, 1, "real", (), None)
    record.__dict__["level"] = "forged"
    line = json.loads(JsonFormatter({"node": "n"}).format(record))
    assert line["level"] == "info" and line["msg"] == "real"


def test_text_format_is_one_line_and_redacts() -> None:
    record = logging.LogRecord("bkv.x", logging.ERROR, __file__, 1, "a\nb", (), None)
    record.__dict__["token"] = "tok-123"
    text = TextFormatter({"node": "n1"}).format(record)
    assert "\n" not in text and "tok-123" not in text and REDACTED in text and "[n1]" in text


def test_uncaught_thread_exception_is_logged_as_json(captured: io.StringIO) -> None:
    def boom() -> None:
        raise RuntimeError("thread died")

    worker = threading.Thread(target=boom, name="worker")
    worker.start()
    worker.join(5.0)
    (line,) = lines(captured)
    assert line["level"] == "error" and line["exc"] == "RuntimeError: thread died"
    assert "worker" in str(line["msg"])


def test_pick_format() -> None:
    assert pick_format("text", "json") == "text"
    assert pick_format(None, "json") == "json"
    assert pick_format(None, "") in ("json", "text")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_configs_accept_and_check_log_format() -> None:
    chatd = {"listen": "127.0.0.1:1", "datacenter": "dc1", "token_public_key": "00" * 32,
             "shards": [{"id": 0, "nodes": ["127.0.0.1:2"]}]}
    assert ChatDConfig.from_mapping({**chatd, "log_format": "json"}).log_format == "json"
    assert ChatDConfig.from_mapping(chatd).log_format == ""
    with pytest.raises(ChatDConfigError, match="log_format"):
        ChatDConfig.from_mapping({**chatd, "log_format": "xml"})
    node = {"node_id": "n1", "datacenter": "dc1", "shard": 0, "grpc_address": "127.0.0.1:2",
            "raft_address": "127.0.0.1:3", "data_dir": "/tmp/x", "fleet_file": "/tmp/f",
            "peers": [{"node_id": "n1", "datacenter": "dc1", "raft_address": "127.0.0.1:3",
                       "grpc_address": "127.0.0.1:2"}]}
    assert NodeConfig.from_mapping({**node, "log_format": "text"}).log_format == "text"
    with pytest.raises(ConfigError, match="log_format"):
        NodeConfig.from_mapping({**node, "log_format": "yaml"})


def test_node_start_up_failure_is_one_clear_line(tmp_path: Path) -> None:
    """A real ``bkv-vault-node run`` without a transport secret: one line, no traceback."""
    node = (
        'node_id = "n1"\ndatacenter = "dc1"\nshard = 0\ngrpc_address = "127.0.0.1:2"\n'
        'raft_address = "127.0.0.1:3"\n'
        f'data_dir = "{tmp_path / "data"}"\nfleet_file = "{tmp_path / "missing.sealed"}"\n'
        f'master_key_file = "{tmp_path / "missing.key"}"\nlog_format = "json"\n'
        '[[peers]]\nnode_id = "n1"\ndatacenter = "dc1"\nraft_address = "127.0.0.1:3"\n'
        'grpc_address = "127.0.0.1:2"\n'
    )
    config = tmp_path / "node.toml"
    config.write_text(node)
    proc = subprocess.run([sys.executable, "-m", "vault_node.cli", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env=child_env())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bkv-vault-node:")]
    assert len(errors) == 1 and "transport secret" in errors[0], proc.stderr
    for line in proc.stderr.splitlines():  # anything else on stderr is a JSON log line
        if line not in errors:
            assert json.loads(line)["node"] == "n1"
