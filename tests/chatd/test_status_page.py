"""ChatD's status page against a real local cluster, rendered by headless Chromium.

The browser runs the page's own script (under its Content-Security-Policy), so a
DOM that lists every node and marks the leader proves the live data reached it.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from chatd_proxy.status_page import RateWindow
from client_sdk.config import ClientConfig
from client_sdk.vault_client import VaultClient
from tests.cluster.conftest import running_cluster, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_TIMEOUT = 90.0
SHOT_SIZE = (1200, 800)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-status-page-") as c:
        yield c


@pytest.fixture(scope="module")
def page_url(cluster: LocalCluster) -> str:
    return f"http://{cluster.layout['chatd'][0]['status_address']}/"


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10.0) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def status(url: str) -> dict[str, Any]:
    code, _, body = fetch(url + "status.json")
    assert code == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


def node_ids(doc: dict[str, Any]) -> list[str]:
    return sorted(n["node_id"] for dc in doc["datacenters"] for n in dc["nodes"])


def chromium(url: str, *extra: str) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: run scripts/install-system-deps.sh")
    with tempfile.TemporaryDirectory(prefix="bkv-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             *extra, url],
            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, cwd=profile,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def leader_in_dom(dom: str) -> list[str]:
    """Node ids of the rows the page marked as leader."""
    return re.findall(r'<tr id="node-([\w-]+)" class="leader"><td>[\w-]+ \u2605 LEADER<', dom)


def png_pixels(path: Path, max_rows: int) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of the first ``max_rows`` rows of an 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), "an 8-bit RGB(A) screenshot"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(min(height, max_rows)):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) *
                                                          (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        previous = line
    return width, height, colours


def test_rate_window() -> None:
    window = RateWindow()
    window.add(0.0, {"OK": 0})
    window.add(5.0, {"OK": 10, "UNAVAILABLE": 5})
    window.add(10.0, {"OK": 40, "UNAVAILABLE": 5})
    assert window.rates(10.0, 10.0) == {"OK": 4.0, "UNAVAILABLE": 0.5}
    assert window.rates(10.0, 5.0) == {"OK": 6.0, "UNAVAILABLE": 0.0}
    assert RateWindow().rates(1.0, 10.0) == {}


@pytest.mark.cluster
def test_status_json_lists_every_node_and_one_leader(cluster: LocalCluster, page_url: str
                                                     ) -> None:
    # A node that misses ChatD's one-second status deadline (a busy machine) is listed by
    # address until it first answers: wait, bounded, for every node to be named.
    wait_until(lambda: node_ids(status(page_url)) == sorted(cluster.nodes()), 30,
               "every node on the status page")
    doc = status(page_url)
    leaders = [n["node_id"] for dc in doc["datacenters"] for n in dc["nodes"] if n["leader"]]
    assert leaders == [cluster.leader(0)] and doc["leaders"] == {"0": leaders[0]}
    assert [dc["name"] for dc in doc["datacenters"]] == ["dc1", "dc2", "dc3"]
    assert all(isinstance(n["lag"], int) for dc in doc["datacenters"] for n in dc["nodes"])
    assert set(doc["chatd_requests_per_second"]) == {"10s", "1m"}


@pytest.mark.cluster
def test_the_page_is_read_only_with_strict_headers(page_url: str) -> None:
    code, headers, body = fetch(page_url)
    assert code == 200 and b"<script>" in body and b"http" not in body  # no external assets
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    for method in ("POST", "PUT", "DELETE"):
        assert fetch(page_url + "status.json", method)[0] == 405
    assert fetch(page_url + "admin")[0] == 404


@pytest.mark.cluster
def test_rates_count_requests_and_no_account_shows(cluster: LocalCluster, page_url: str
                                                  ) -> None:
    account = "+1555" + secrets.token_hex(6)
    config = ClientConfig.load(cluster.client_config_path)
    direct = ClientConfig(fleet_public_key=config.fleet_public_key, shard_count=1,
                          chatd=[cluster.layout["chatd"][0]["listen"]], deadline_seconds=15,
                          token_signing_key_file=config.token_signing_key_file)
    with VaultClient(direct, ksf=IDENTITY_KSF) as client:
        client.register(account, secrets.token_bytes(32), "status page password")

    def counted() -> bool:
        return bool(status(page_url)["chatd_requests_per_second"]["10s"].get("OK", 0) > 0)

    wait_until(counted, 20, "OK requests in the 10 s rate")
    body = fetch(page_url + "status.json")[2] + fetch(page_url)[2]
    assert account.encode() not in body and b"status page password" not in body


@pytest.mark.cluster
def test_chromium_renders_the_live_cluster_and_follows_a_new_leader(
    cluster: LocalCluster, page_url: str
) -> None:
    leader = cluster.leader(0)
    assert leader is not None
    dom = chromium(page_url, "--dump-dom")
    assert 'data-state="rendered"' in dom, "the page's script did not render"
    for node in cluster.nodes():
        assert f'id="node-{node}"' in dom
    assert leader_in_dom(dom) == [leader]

    with tempfile.TemporaryDirectory(prefix="bkv-shot-") as tmp:
        shot = Path(tmp) / "page.png"
        chromium(page_url, f"--screenshot={shot}", "--window-size=1200,800")
        width, height, colours = png_pixels(shot, max_rows=400)
        keep = Path(tempfile.gettempdir()) / "bkv-status-page.png"
        shutil.copyfile(shot, keep)  # for a look by eye after the run
    assert (width, height) == SHOT_SIZE
    assert len(colours) > 20, f"the screenshot looks blank ({len(colours)} colours)"

    cluster.kill_node(leader)
    try:
        def new_leader() -> bool:
            leaders = status(page_url)["leaders"]
            return leaders.get("0") not in (None, leader)

        wait_until(new_leader, 60, "a new leader on the status page")
        time.sleep(1.1)  # past the page's one-second cache
        doc = status(page_url)
        successor = doc["leaders"]["0"]
        assert leader in doc["unreachable"]
        dom = chromium(page_url, "--dump-dom")
        assert leader_in_dom(dom) == [successor]
        assert f'<tr id="node-{leader}" class="unreachable">' in dom
    finally:
        cluster.restart_node(leader)
