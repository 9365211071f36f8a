"""The engine's side of /metrics: its timings as they happen (an EngineObserver filled with
Prometheus histograms and gauges) and its sizes read at each scrape (a collector over
Engine.stats()), by workspace. The engine itself imports no Prometheus code."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from segsvc.engine.engine import Engine
from segsvc.engine.observer import EngineObserver, WorkspaceObserver
from segsvc.engine.stats import EngineStats

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CHANGES_BUCKETS = (0, 1, 10, 100, 1000, 10_000, 100_000, 1_000_000)


class PrometheusObserver(EngineObserver):
    """The engine's timings as Prometheus histograms and gauges, by workspace."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit = Histogram(
            "segsvc_log_commit_seconds",
            "Time of a write's LMDB transaction: log append, apply, rows, commit.",
            ("workspace",),
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.checkpoint = Histogram(
            "segsvc_checkpoint_seconds",
            "Time to store a checkpoint (the write lock is held meanwhile).",
            ("workspace",),
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.replay = Gauge(
            "segsvc_replay_seconds",
            "Time the last load of the workspace took (checkpoint plus log replay).",
            ("workspace",),
            registry=registry,
        )
        self.replayed = Gauge(
            "segsvc_replayed_operations",
            "Log records the last load of the workspace replayed after its checkpoint.",
            ("workspace",),
            registry=registry,
        )
        self.tick = Histogram(
            "segsvc_tick_seconds",
            "Time of a tick: time-dependent segments re-checked, retention applied.",
            ("workspace",),
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.tick_changes = Histogram(
            "segsvc_tick_changes",
            "People moved into or out of segments by one tick.",
            ("workspace",),
            buckets=CHANGES_BUCKETS,
            registry=registry,
        )

    def workspace(self, name: str) -> WorkspaceObserver:
        return _PrometheusWorkspaceObserver(self, name)


class _PrometheusWorkspaceObserver(WorkspaceObserver):
    def __init__(self, metrics: PrometheusObserver, name: str) -> None:
        self._commit = metrics.commit.labels(name)
        self._checkpoint = metrics.checkpoint.labels(name)
        self._replay = metrics.replay.labels(name)
        self._replayed = metrics.replayed.labels(name)
        self._tick = metrics.tick.labels(name)
        self._tick_changes = metrics.tick_changes.labels(name)

    def committed(self, seconds: float) -> None:
        self._commit.observe(seconds)

    def checkpointed(self, seconds: float) -> None:
        self._checkpoint.observe(seconds)

    def replayed(self, operations: int, seconds: float) -> None:
        self._replay.set(seconds)
        self._replayed.set(operations)

    def ticked(self, seconds: float, changes: int) -> None:
        self._tick.observe(seconds)
        self._tick_changes.observe(changes)


# (metric name, help, WorkspaceStats attribute) of the per-workspace gauges.
_WORKSPACE_GAUGES = (
    ("segsvc_people", "Live people.", "people"),
    ("segsvc_segments", "Segments, archived ones included.", "segments"),
    ("segsvc_events", "Events held in memory.", "events"),
    ("segsvc_last_change_seq", "Sequence number of the newest change.", "last_change_seq"),
    ("segsvc_last_op_seq", "Sequence number of the newest logged operation.", "last_op_seq"),
    (
        "segsvc_records_since_checkpoint",
        "Replay weight logged since the last checkpoint (what a restart replays).",
        "records_since_checkpoint",
    ),
    ("segsvc_change_feed_followers", "Change-feed followers following now.", "followers"),
    (
        "segsvc_change_feed_max_lag_changes",
        "Changes the furthest-behind follower has not been handed yet.",
        "max_follower_lag",
    ),
    ("segsvc_audience_snapshots", "Audience snapshots stored.", "audience_snapshots"),
)


class EngineCollector(Collector):
    """The engine's stats (segsvc.engine.stats), read at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        stats = self._engine.stats()
        for name, help_text, attribute in _WORKSPACE_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["workspace"])
            for ws in stats.workspaces:
                family.add_metric([ws.name], getattr(ws, attribute))
            yield family
        age = GaugeMetricFamily(
            "segsvc_checkpoint_age_seconds",
            "Seconds since the last checkpoint (absent before the first).",
            labels=["workspace"],
        )
        for ws in stats.workspaces:
            if ws.checkpoint_age_seconds is not None:
                age.add_metric([ws.name], ws.checkpoint_age_seconds)
        yield age
        yield from _replica_gauges(stats)
        yield GaugeMetricFamily(
            "segsvc_lmdb_map_used_bytes", "LMDB map in use.", value=stats.map_used_bytes
        )
        yield GaugeMetricFamily(
            "segsvc_lmdb_map_size_bytes", "LMDB map size (--map-size).", value=stats.map_size_bytes
        )
        yield GaugeMetricFamily(
            "segsvc_memory_rss_bytes", "Resident memory (VmRSS).", value=stats.memory.rss_bytes
        )
        yield GaugeMetricFamily(
            "segsvc_memory_rss_anon_bytes",
            "Resident memory of the process's own, without mapped files (RssAnon).",
            value=stats.memory.rss_anon_bytes,
        )
        yield GaugeMetricFamily(
            "segsvc_uptime_seconds",
            "Seconds since the engine opened.",
            value=self._engine.uptime_seconds(),
        )


# (metric name, help, ReplicaPosition attribute) of the per-workspace gauges with --nats.
_REPLICA_GAUGES = (
    (
        "segsvc_replica_applied_op_seq",
        "Sequence number of the last operation this node applied from the shared log.",
        "applied_op_seq",
    ),
    (
        "segsvc_replica_stream_last_seq",
        "Stream sequence of the last message on the workspace's JetStream subject.",
        "stream_last_seq",
    ),
    (
        "segsvc_replica_stream_last_op_seq",
        "Sequence number of the last operation in the workspace's JetStream subject.",
        "stream_last_op_seq",
    ),
    (
        "segsvc_replica_lag_ops",
        "Operations in the JetStream log this node has not applied yet.",
        "lag_ops",
    ),
)


def _replica_gauges(stats: EngineStats) -> Iterable[Metric]:
    """With a shared log: the node's name (an info gauge) and its position in each
    workspace's log; a workspace whose stream position is unknown (NATS did not answer) is
    left out of the stream gauges rather than reported as 0."""
    if not stats.node_name:
        return
    node = GaugeMetricFamily(
        "segsvc_node_info",
        "The name this node goes by on the shared log (always 1).",
        labels=["node"],
    )
    node.add_metric([stats.node_name], 1)
    yield node
    for name, help_text, attribute in _REPLICA_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=["workspace"])
        for ws in stats.workspaces:
            replica = ws.replica
            if replica is None or (replica.stream_error and attribute != "applied_op_seq"):
                continue
            family.add_metric([ws.name], getattr(replica, attribute))
        yield family
