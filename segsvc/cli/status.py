"""`segsvc status`: what an operator checks first about a running server (admin token when
the server has tokens): version, uptime, memory, the LMDB map, and each workspace's size,
log position, checkpoint age and change-feed followers; with --nats, the node's name and
where it stands in each workspace's log on JetStream (applied, the stream's last, the lag)."""

from __future__ import annotations

import click
from google.protobuf import duration_pb2

from segsvc.cli.common import Session, pass_session
from segsvc.cli.output import to_dict
from segsvc.v1 import workspaces_pb2

_MIB = 1024 * 1024


@click.command()
@pass_session
def status(session: Session) -> None:
    """Show the server's version, uptime and memory, and the state of every workspace.

    \b
    Example:
      segsvc --server 10.0.0.5:50051 --token "$ADMIN_TOKEN" status
    """
    found = session.client.workspaces.GetServerStatus(workspaces_pb2.GetServerStatusRequest())
    if session.out.json:
        session.out.document(to_dict(found))
        return
    node = [("node", found.node_name)] if found.node_name else []
    session.out.fields(
        [
            *node,
            ("version", found.version),
            ("uptime", format_duration(found.uptime)),
            (
                "memory",
                f"{found.rss_bytes / _MIB:.0f} MiB resident, "
                f"{found.rss_anon_bytes / _MIB:.0f} MiB own (RssAnon)",
            ),
            (
                "LMDB map",
                f"{found.map_used_bytes / _MIB:.1f} MiB used "
                f"of {found.map_size_bytes / _MIB:.0f} MiB",
            ),
        ]
    )
    for ws in found.workspaces:
        checkpoint = (
            f"{format_duration(ws.last_checkpoint_age)} ago"
            if ws.HasField("last_checkpoint_age")
            else "never"
        )
        session.out.text("")
        session.out.text(f"workspace {ws.name}")
        session.out.fields(
            [
                ("  people", str(ws.people)),
                ("  segments", str(ws.segments)),
                ("  events", str(ws.events)),
                ("  last change seq", str(ws.last_change_seq)),
                ("  last op seq", str(ws.last_op_seq)),
                ("  last checkpoint", checkpoint),
                ("  since checkpoint", f"{ws.records_since_checkpoint} records"),
                (
                    "  change feed",
                    f"{ws.change_feed_followers} followers, "
                    f"furthest {ws.max_follower_lag} changes behind",
                ),
                ("  audience snapshots", str(ws.audience_snapshots)),
                *replica_fields(ws),
            ]
        )


def replica_fields(ws: workspaces_pb2.WorkspaceStatus) -> list[tuple[str, str]]:
    """Where the node stands in the workspace's log on JetStream (nothing without one)."""
    if not ws.HasField("replica"):
        return []
    replica = ws.replica
    if replica.stream_error:
        stream = f"unknown ({replica.stream_error})"
        lag = "unknown"
    else:
        stream = f"op {replica.stream_last_op_seq} (stream seq {replica.stream_last_seq})"
        lag = f"{replica.lag_ops} ops"
    return [
        ("  applied op seq", str(replica.applied_op_seq)),
        ("  stream last", stream),
        ("  replica lag", lag),
    ]


def format_duration(duration: duration_pb2.Duration) -> str:
    """`2d 3h 4m 5s`, largest unit first, zero units left out (`0s` for nothing)."""
    left = duration.seconds
    parts: list[str] = []
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= seconds or (unit == "s" and not parts):
            parts.append(f"{left // seconds}{unit}")
            left %= seconds
    return " ".join(parts)
