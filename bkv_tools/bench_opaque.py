"""OPAQUE cost figures: what one login costs the vault, and what it costs a device.

The server figure bounds how many logins per second one vault node can serve
(target: at most 1 ms of CPU per login); the client figure, dominated by
Argon2id, is the delay a user feels and the per-guess cost an attacker pays.
Figures are printed, never asserted.

Run: ``python -m bkv_tools.bench_opaque [--runs N] [--client-runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from bkv_ops.console import quiet_on_closed_pipe
from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF, KSF, PRODUCTION_KSF

_ACCOUNT = b"bench-account"
_PASSWORD = b"benchmark password"
_CTX = opaque.PRODUCT_CONTEXT


class _Timer:
    """Accumulates CPU (process_time) and wall (perf_counter) time of timed sections."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self._c0 = 0.0
        self._w0 = 0.0

    def __enter__(self) -> _Timer:
        self._c0, self._w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c0
        self.wall += time.perf_counter() - self._w0


def _line(name: str, cpu: Sequence[float], wall: Sequence[float]) -> str:
    def ms(values: Sequence[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1000.0

    return (
        f"{name}: n={len(cpu)}  cpu mean={statistics.fmean(cpu) * 1000:.3f} ms "
        f"p50={ms(cpu, 0.5):.3f} ms p95={ms(cpu, 0.95):.3f} ms  "
        f"wall mean={statistics.fmean(wall) * 1000:.3f} ms p50={ms(wall, 0.5):.3f} ms"
    )


def _register(keys: opaque.ServerKeys, ksf: KSF) -> bytes:
    state, request = opaque.client_start_registration(_PASSWORD)
    response = opaque.server_registration_response(keys, request, _ACCOUNT)
    record, _ = opaque.client_finish_registration(
        state, response, ksf=ksf, client_identity=_ACCOUNT
    )
    return record


def server_login(runs: int) -> str:
    """Server CPU per login: server_start_login + server_finish_login; client work untimed."""
    keys = opaque.generate_server_keys()
    record = _register(keys, IDENTITY_KSF)
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        client, ke1 = opaque.client_start_login(_PASSWORD)
        timer = _Timer()
        with timer:
            server, ke2 = opaque.server_start_login(
                keys, record, _ACCOUNT, ke1, context=_CTX, client_identity=_ACCOUNT
            )
        ke3, _, _ = opaque.client_finish_login(
            client, ke2, ksf=IDENTITY_KSF, context=_CTX, client_identity=_ACCOUNT
        )
        with timer:
            opaque.server_finish_login(server, ke3)
        cpu.append(timer.cpu)
        wall.append(timer.wall)
    return _line("server login (start + finish)", cpu, wall)


def server_registration(runs: int) -> str:
    """Server CPU per registration response (one OPRF evaluation)."""
    keys = opaque.generate_server_keys()
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        _, request = opaque.client_start_registration(_PASSWORD)
        timer = _Timer()
        with timer:
            opaque.server_registration_response(keys, request, _ACCOUNT)
        cpu.append(timer.cpu)
        wall.append(timer.wall)
    return _line("server registration response", cpu, wall)


def client_login(runs: int, ksf: KSF) -> str:
    """Device cost of one login (client_start_login + client_finish_login) with ``ksf``."""
    keys = opaque.generate_server_keys()
    record = _register(keys, ksf)
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        timer = _Timer()
        with timer:
            client, ke1 = opaque.client_start_login(_PASSWORD)
        _, ke2 = opaque.server_start_login(
            keys, record, _ACCOUNT, ke1, context=_CTX, client_identity=_ACCOUNT
        )
        with timer:
            opaque.client_finish_login(client, ke2, ksf=ksf, context=_CTX, client_identity=_ACCOUNT)
        cpu.append(timer.cpu)
        wall.append(timer.wall)
    return _line(f"client login [{ksf.descriptor}]", cpu, wall)


@quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    """Print the figures; exit status 0. ``argv=None`` means defaults (not ``sys.argv``)."""
    parser = argparse.ArgumentParser(prog="python -m bkv_tools.bench_opaque", description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="server-side runs (default 300)")
    parser.add_argument("--client-runs", type=int, default=3, help="production-KSF client runs")
    args = parser.parse_args([] if argv is None else list(argv))
    runs, client_runs = max(1, args.runs), max(1, args.client_runs)
    print("OPAQUE-3DH ristretto255 / SHA-512 (libsodium via pysodium)")
    print(server_login(runs))
    print(server_registration(runs))
    print(client_login(max(1, runs // 10), IDENTITY_KSF))
    print(client_login(client_runs, PRODUCTION_KSF))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
