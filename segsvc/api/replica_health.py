"""Health of a node on a shared operation log: NOT_SERVING while it is further behind the
log than `max_lag_records` (catching up after a pause, or a burst other nodes wrote), so a
load balancer sends reads elsewhere meanwhile; SERVING again once it caught up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

from segsvc.engine.engine import Engine

log = logging.getLogger(__name__)
CHECK_SECONDS = 0.2


def follow_lag(
    engine: Engine,
    servicer: health.HealthServicer,
    services: Iterable[str],
    max_lag_records: int,
    stopping: threading.Event,
) -> threading.Thread:
    """Starts the thread that keeps `services`' health in step with the node's lag."""
    names = tuple(services)

    def run() -> None:
        lagging = False
        while not stopping.wait(CHECK_SECONDS):
            lag = engine.replica_lag()
            if (lag > max_lag_records) == lagging:
                continue
            lagging = not lagging
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if lagging
                else health_pb2.HealthCheckResponse.SERVING
            )
            log.info(
                "%d records behind the log: %s",
                lag,
                "NOT_SERVING until caught up" if lagging else "caught up, SERVING",
            )
            for name in names:
                # After a graceful shutdown began, the servicer ignores this.
                servicer.set(name, status)

    thread = threading.Thread(target=run, name="segsvc-replica-health", daemon=True)
    thread.start()
    return thread
