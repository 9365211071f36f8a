"""Server settings, built once (from the CLI or a test) and passed down."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA = Path("data")
DEFAULT_WORKSPACE = "default"

# What a workspace (and a token) may be called: safe in paths, metrics labels and log lines.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def name_problem(what: str, name: str) -> str | None:
    """Why `name` cannot name a `what` ("workspace", "token"), or None when it can. Here,
    with no dependencies, so the engine and the client-side tokens tooling judge alike."""
    # fullmatch: `$` would also accept a name that ends in a newline.
    if _NAME.fullmatch(name):
        return None
    return (
        f"{what} name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit"
    )


@dataclass(frozen=True)
class Limits:
    """Bounds on every request, so no single call can exhaust the server."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_batch_items: int = 10_000
    max_tree_depth: int = 12
    max_tree_nodes: int = 200
    # A request carrying a condition tree (create, update, preview): within the node limit a
    # definition is a few KiB; this is checked on the bytes, before anything is parsed.
    max_definition_bytes: int = 1024 * 1024
    max_string_length: int = 4096
    max_attributes_per_person: int = 500
    max_tags_per_person: int = 1000
    max_devices_per_person: int = 100
    max_csv_bytes: int = 4 * 1024 * 1024 * 1024
    max_page_size: int = 10_000


@dataclass(frozen=True)
class Replication:
    """The operation log on NATS JetStream (`serve --nats`): where NATS is, how to
    authenticate, and the stream every workspace's log lives in."""

    servers: tuple[str, ...]
    replicas: int = 1
    stream: str = "SEGSVC_OPS"
    # How this node names itself to NATS (connection name); the host name by default.
    node_name: str = ""
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    # Seconds a NATS request may take before the call is answered UNAVAILABLE.
    timeout: float = 5.0
    # Health is NOT_SERVING while this node is more records than this behind the log.
    max_lag_records: int = 1000


@dataclass(frozen=True)
class Config:
    data_dir: Path = DEFAULT_DATA
    listen: str = DEFAULT_LISTEN
    # LMDB reserves this much address space; the file only grows as data is written.
    map_size: int = 64 * 1024**3
    # Seconds between re-checks of time-dependent segments.
    tick_seconds: float = 60.0
    # How long the change feed keeps entries.
    change_retention_seconds: int = 30 * 24 * 3600
    # How long event data is kept.
    event_retention_seconds: int = 180 * 24 * 3600
    # How long an audience snapshot can be resumed.
    snapshot_retention_seconds: int = 24 * 3600
    # Write a checkpoint after this many operations have been logged since the last one.
    checkpoint_every_ops: int = 20_000
    # Seconds given to calls in flight on shutdown.
    grace_seconds: float = 10.0
    # gRPC worker threads.
    workers: int = 16
    # Phones written without a country code are numbers of this region (ISO 3166 code, as
    # phonenumbers knows it); None refuses them. US, as Braze does with 10-digit numbers.
    default_region: str | None = "US"
    # Bearer tokens: empty means no authentication, and then only loopback listening is allowed.
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # HOST:PORT of the Prometheus /metrics endpoint; None: no metrics.
    metrics_listen: str | None = None
    # One log line per call on the `segsvc.access` logger.
    access_log: bool = True
    limits: Limits = field(default_factory=Limits)
    # None: the embedded operation log in LMDB (one machine).
    replication: Replication | None = None
