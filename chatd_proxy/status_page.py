"""ChatD's read-only status page: the cluster by data center, and ChatD's recent request rates.

Served over plain HTTP on ``status_address`` (loopback by default: put it behind
the operator's own access control). GET only; it shows what ``ClusterStatus``
shows (roles, terms, indexes, lag, health), a banner for every shard that has
lost its quorum (fewer than a majority of its nodes answer), and the request
rates by final status of this ChatD and of the peer ChatDs named in
``peer_status_addresses`` (read from their ``/rates.json``, server side, with a
short timeout): never an account, a token or a payload. The page has no external
assets, and a Content-Security-Policy that admits only its own inline script
and style (by hash) and fetches to the same origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter

from bkv_api.v1 import services_pb2
from bkv_ops.cluster_status import NodeIdentity, build_rows, status_document

log = logging.getLogger("bkv.chatd.status")

SAMPLE_SECONDS = 1.0
WINDOWS = (("10s", 10.0), ("1m", 60.0))
CACHE_SECONDS = 1.0
PEER_TIMEOUT_SECONDS = 0.5
MAX_PEER_REPLY_BYTES = 64 * 1024
StatusSource = Callable[[], list[tuple[str, services_pb2.NodeStatus | None]]]


class RateWindow:
    """Counter totals sampled over time, turned into per-second rates over recent windows."""

    def __init__(self, keep_seconds: float = 70.0) -> None:
        self._keep = keep_seconds
        self._samples: deque[tuple[float, dict[str, float]]] = deque()
        self._lock = threading.Lock()

    def add(self, now: float, totals: Mapping[str, float]) -> None:
        with self._lock:
            self._samples.append((now, dict(totals)))
            while self._samples and now - self._samples[0][0] > self._keep:
                self._samples.popleft()

    def rates(self, now: float, window: float) -> dict[str, float]:
        """Per-second rate of each key between the newest sample and the one ~``window`` ago."""
        with self._lock:
            if len(self._samples) < 2:
                return {}
            newest_t, newest = self._samples[-1]
            old_t, old = next(((t, s) for t, s in self._samples if now - t <= window),
                              self._samples[0])
        span = newest_t - old_t
        if span <= 0:
            return {}
        return {k: round(max(0.0, v - old.get(k, 0.0)) / span, 3) for k, v in newest.items()}


def counter_totals(counter: Counter) -> dict[str, float]:
    """``{outcome: total}`` of a labelled Prometheus counter, read through ``collect``."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = "/".join(sample.labels.values()) or "all"
                totals[label] = sample.value
    return totals


class StatusPage:
    """The HTTP server, the rate sampler and a short cache of the cluster's status."""

    def __init__(
        self,
        source: StatusSource,
        requests: Counter,
        datacenter: str,
        *,
        shards: Sequence[Sequence[str]] = (),
        peers: Sequence[str] = (),
    ) -> None:
        self._source = source
        self._shards = [tuple(nodes) for nodes in shards]  # configured node addresses
        self._peers = list(peers)  # other ChatDs' status addresses (host:port)
        self._requests = requests
        self._datacenter = datacenter
        self._window = RateWindow()
        self._known: dict[str, NodeIdentity] = {}  # address -> identity last seen
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    def set_shards(self, shards: Sequence[Sequence[str]]) -> None:
        """The configured node addresses of each shard, after a membership change."""
        with self._lock:
            self._shards = [tuple(nodes) for nodes in shards]
            self._cache = None

    def snapshot(self) -> dict[str, Any]:
        """The ``/status.json`` document (asked of the nodes at most once per second)."""
        with self._lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < CACHE_SECONDS:
                return self._cache[1]
            entries = self._source()
            for address, st in entries:
                if st is not None:
                    self._known[address] = NodeIdentity(st.node_id, st.datacenter, st.shard)
            rows = build_rows(entries, self._known)
            own = self.rates(now)
            doc = status_document(
                rows,
                chatd={"datacenter": self._datacenter},
                chatd_requests_per_second=own["requests_per_second"],
                chatds=[own, *(self._peer_rates(peer) for peer in self._peers)],
                no_quorum=self._no_quorum(entries),
                generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            self._cache = (now, doc)
            return doc

    def rates(self, now: float | None = None) -> dict[str, Any]:
        """This ChatD's requests per second by outcome (the ``/rates.json`` document)."""
        now = time.monotonic() if now is None else now
        return {"datacenter": self._datacenter, "reachable": True,
                "requests_per_second": {name: self._window.rates(now, seconds)
                                        for name, seconds in WINDOWS}}

    def _no_quorum(
        self, entries: list[tuple[str, services_pb2.NodeStatus | None]]
    ) -> list[dict[str, int]]:
        """Shards where no majority of the configured nodes answers: no leader is possible."""
        answered = {address for address, st in entries if st is not None}
        lost = []
        for shard, nodes in enumerate(self._shards):
            up = sum(1 for a in nodes if a in answered)
            if nodes and up <= len(nodes) // 2:
                lost.append({"shard": shard, "unreachable": len(nodes) - up,
                             "total": len(nodes)})
        return lost

    def _peer_rates(self, peer: str) -> dict[str, Any]:
        """A peer ChatD's ``/rates.json``, checked for shape; unreachable on any failure."""
        down: dict[str, Any] = {"datacenter": peer, "reachable": False,
                                "requests_per_second": {}}
        try:
            with urllib.request.urlopen(
                f"http://{peer}/rates.json", timeout=PEER_TIMEOUT_SECONDS
            ) as reply:
                doc = json.loads(reply.read(MAX_PEER_REPLY_BYTES))
        except (OSError, ValueError):
            return down
        rates = doc.get("requests_per_second") if isinstance(doc, dict) else None
        name = doc.get("datacenter") if isinstance(doc, dict) else None
        if not isinstance(rates, dict) or not isinstance(name, str):
            return down
        clean = {str(w)[:16]: {str(k)[:32]: float(v) for k, v in r.items()
                               if isinstance(v, int | float)}
                 for w, r in rates.items() if isinstance(r, dict)}
        return {"datacenter": name[:64], "reachable": True, "requests_per_second": clean}

    def serve(self, address: str) -> int:
        """Listen on ``host:port`` (0 picks a port), start the threads; return the port."""
        host, _, port = address.rpartition(":")
        self._http = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(self))
        self._http.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="status-http", daemon=True),
            threading.Thread(target=self._sample_loop, name="status-rates", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        bound = int(self._http.server_address[1])
        log.info("status page on port %d", bound)
        return bound

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        for thread in self._threads:
            thread.join(timeout=5.0)

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self._window.add(time.monotonic(), counter_totals(self._requests))
            self._stop.wait(SAMPLE_SECONDS)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;background:#f6f7f9;color:#1d2330}
h1{font-size:1.3em;margin:0 0 .3em}#meta{color:#555;margin-bottom:1em}
#dcs{display:flex;gap:1em;flex-wrap:wrap}
.dc{background:#fff;border:1px solid #ccd;border-radius:6px;padding:.6em 1em;min-width:320px}
.dc h2{font-size:1.1em;margin:.2em 0 .5em}
table{border-collapse:collapse;width:100%}td,th{padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.leader{background:#d9f2d9;font-weight:bold}tr.unreachable{background:#f8d7d7;color:#822}
.bad{color:#b00;font-weight:bold}#rates{margin-top:1em;background:#fff;border:1px solid #ccd;
border-radius:6px;padding:.6em 1em;display:inline-block}
.noquorum{background:#b00;color:#fff;font-weight:bold;font-size:1.15em;padding:.6em 1em;
border-radius:6px;margin-bottom:1em}
"""

_SCRIPT = """
function cell(tr, text){
  const td=document.createElement('td');td.textContent=text;tr.appendChild(td);}
function show(v){return v===null||v===undefined?'?':String(v);}
function render(doc){
  const dcs=document.getElementById('dcs');dcs.textContent='';
  for(const dc of doc.datacenters){
    const box=document.createElement('div');box.className='dc';box.id='dc-'+dc.name;
    const h=document.createElement('h2');h.textContent=dc.name;box.appendChild(h);
    const t=document.createElement('table');const head=document.createElement('tr');
    for(const c of ['node','role','term','commit','applied','lag','health']){
      const th=document.createElement('th');th.textContent=c;head.appendChild(th);}
    t.appendChild(head);
    for(const n of dc.nodes){
      const tr=document.createElement('tr');tr.id='node-'+n.node_id;
      tr.className=n.leader?'leader':(n.reachable?'':'unreachable');
      cell(tr,n.node_id+(n.leader?' \\u2605 LEADER':''));cell(tr,n.role);cell(tr,show(n.term));
      cell(tr,show(n.commit_index));cell(tr,show(n.last_applied));cell(tr,show(n.lag));
      cell(tr,n.health);t.appendChild(tr);}
    box.appendChild(t);dcs.appendChild(box);}
  const lead=Object.entries(doc.leaders).map(([s,n])=>'shard '+s+': '+n).join(', ');
  const meta=document.getElementById('meta');
  meta.textContent='ChatD '+doc.chatd.datacenter+' \\u2014 leader '+(lead||'none')+
    ' \\u2014 updated '+doc.generated_at;
  meta.className=doc.shards_without_leader.length?'bad':'';
  const b=document.getElementById('banner');b.textContent='';
  for(const q of doc.no_quorum){
    const p=document.createElement('div');p.className='noquorum';
    p.textContent='NO QUORUM \u2014 shard '+q.shard+': '+q.unreachable+' of '+q.total+
      ' vault nodes unreachable. Requests fail with "no quorum" until a majority is back.';
    b.appendChild(p);}
  const r=document.getElementById('rates');r.textContent='';
  const h=document.createElement('b');h.textContent='ChatD requests/s';r.appendChild(h);
  for(const c of doc.chatds){
    const p=document.createElement('div');p.className='chatd';
    if(!c.reachable){p.textContent='ChatD '+c.datacenter+': not answering';r.appendChild(p);
      continue;}
    const parts=Object.entries(c.requests_per_second).map(([w,rates])=>w+': '+
      (Object.entries(rates).map(([k,v])=>k+' '+v.toFixed(2)).join(', ')||'none'));
    p.textContent='ChatD '+c.datacenter+' \u2014 '+parts.join('; ');r.appendChild(p);}
  document.body.dataset.state='rendered';
}
async function tick(){
  try{const res=await fetch('status.json',{cache:'no-store'});render(await res.json());}
  catch(e){const m=document.getElementById('meta');m.textContent='status unavailable';
    m.className='bad';}
}
tick();setInterval(tick,2000);
"""

PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    "<title>Backup Key Vault status</title><style>" + _STYLE + "</style></head><body>"
    "<h1>Backup Key Vault cluster</h1><div id=banner></div>"
    "<div id=meta>loading\u2026</div><div id=dcs></div>"
    "<div id=rates></div><script>" + _SCRIPT + "</script></body></html>"
).encode("utf-8")

HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _handler(page: StatusPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """GET ``/`` and ``/status.json``; every other method is refused."""

        server_version = "bkv-status"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", PAGE)
            elif path == "/rates.json":  # what peer ChatDs read for their pages
                self._send(200, "application/json", json.dumps(page.rates()).encode("utf-8"))
            elif path == "/status.json":
                try:
                    body = json.dumps(page.snapshot()).encode("utf-8")
                except Exception as err:  # the page says "unavailable"; the server lives on
                    log.warning("status snapshot failed: %s", type(err).__name__)
                    self._send(503, "application/json", b'{"error":"unavailable"}')
                    return
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _refuse(self) -> None:
            self._send(405, "text/plain; charset=utf-8", b"read-only\n", allow=True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def do_HEAD(self) -> None:
            self._refuse()

        def _send(self, code: int, ctype: str, body: bytes, allow: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in HEADERS.items():
                self.send_header(name, value)
            if allow:
                self.send_header("Allow", "GET")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status page: %s", format % args)

    return Handler
