"""Publishing a server's state through the standard ``grpc.health.v1.Health`` service."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("bkv.health")

OVERALL = health.OVERALL_HEALTH
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Publishes ``check()`` as the status of ``services``, re-evaluated periodically.

    Watchers are notified only on a change, so a stable server sends nothing.
    While NOT_SERVING the check runs every ``recovery_interval`` (default:
    ``interval``), so a server that can answer again says so soon. After
    :meth:`stop` it stays NOT_SERVING, whatever a late check says.
    """

    def __init__(
        self,
        check: Callable[[], bool],
        services: tuple[str, ...],
        interval: float,
        recovery_interval: float | None = None,
        thread_name: str = "health",
    ) -> None:
        self._check = check
        self._services = services
        self._interval = interval
        self._recovery_interval = interval if recovery_interval is None else recovery_interval
        self.servicer: Any = health.HealthServicer()
        self._status = NOT_SERVING
        for name in services:  # the servicer starts with "" SERVING: not yet true
            self.servicer.set(name, NOT_SERVING)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    def start(self) -> None:
        self._thread.start()

    def update(self) -> None:
        """Evaluate ``check`` once and publish the result if it changed."""
        try:
            ok = bool(self._check())
        except Exception:  # a failing check means "can't answer", never a dead thread
            log.exception("health check failed")
            ok = False
        status = SERVING if ok else NOT_SERVING
        if status == self._status or self._stop.is_set():
            return
        self._status = status
        for name in self._services:
            self.servicer.set(name, status)
        log.info("health: %s", "SERVING" if ok else "NOT_SERVING")

    def stop(self) -> None:
        """NOT_SERVING from now on (also for late ``update`` calls); stop the thread."""
        self._stop.set()
        self._status = NOT_SERVING
        self.servicer.enter_graceful_shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.update()
            pause = self._interval if self.serving else self._recovery_interval
            if self._stop.wait(pause):
                return
