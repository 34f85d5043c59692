"""`bkv bench shard` runs end to end on a small shard and reports every figure by name.

It asserts on the presence and sanity of the figures (and on the digests being equal
at the end), never on how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = {"rss_mib_per_node", "disk_mib_per_node", "restart_follower_s", "restart_leader_s",
        "commit_p50_ms_during_snapshot", "commit_p99_ms_during_snapshot", "catchup_s",
        "recoveries_per_s", "snapshot_s", "digests_equal", "deposits"}


def test_bench_shard_reports_every_figure() -> None:
    bkv = str(Path(sys.executable).with_name("bkv"))
    out = subprocess.run([bkv, "bench", "shard", "--deposits", "1000", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(figures) >= KEYS
    assert figures["deposits"] == 1000 and figures["digests_equal"] == 1.0
    assert all(figures[k] > 0 for k in KEYS if k != "digests_equal")
