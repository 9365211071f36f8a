"""The server around the services: health, reflection, authentication, limits, internal
errors, TLS and restarts."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import threading

import grpc
import pytest
from api_harness import (
    add_members,
    by_id,
    dynamic_segment,
    equals,
    manual_segment,
    members_of,
    person,
    status_of,
    stored_changes,
    upsert,
)
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import Stubs

from segsvc.api.server import ServerConfigError, build_server, check_listen_address
from segsvc.config import Limits
from segsvc.engine.workspace import Workspace
from segsvc.storage.errors import StoreDamagedError
from segsvc.tokens_file import TokensFileError, hash_token, load_tokens
from segsvc.v1 import changes_pb2, people_pb2, segments_pb2

S = segments_pb2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_serving_then_not_serving_on_shutdown(api):
    for service in ("", "segsvc.v1.SegmentsService", "segsvc.v1.PeopleService"):
        reply = api.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == SERVING
    watch = api.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == SERVING
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(r.status for r in _until_end(watch)))
    reader.start()
    api.server.stop(grace=2).wait(5)
    reader.join(5)
    assert NOT_SERVING in seen


def _until_end(stream):
    try:
        yield from stream
    except grpc.RpcError:
        return


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_every_service(api, version):
    # v1 and v1alpha are the same messages on the wire: v1alpha's classes speak both.
    info = api.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    def ask(**request: str) -> reflection_pb2.ServerReflectionResponse:
        return next(info(iter([reflection_pb2.ServerReflectionRequest(**request)])))

    names = {s.name for s in ask(list_services="").list_services_response.service}
    assert names == {
        "segsvc.v1.PeopleService",
        "segsvc.v1.SegmentsService",
        "segsvc.v1.ChangesService",
        "segsvc.v1.AudiencesService",
        "segsvc.v1.WorkspacesService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    for name in names:
        reply = ask(file_containing_symbol=name)
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]
        package, _, service = name.rpartition(".")
        assert any(
            f.package == package and service in {s.name for s in f.service} for f in files
        ), name
    missing = ask(file_containing_symbol="segsvc.v1.NoSuchService")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_restart_keeps_everything(api_servers):
    api = api_servers.start()
    upsert(api, person("u1", plan="pro"), person("u2", plan="free"), person("u3", plan="pro"))
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u2", "u3")
    api.segments.ArchiveSegments(S.ArchiveSegmentsRequest(segment_ids=[vip]))
    before_changes = stored_changes(api)
    before_segments = api.segments.ListSegments(
        S.ListSegmentsRequest(archived=S.ARCHIVED_FILTER_ALL)
    )
    before_person = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u3"))).person

    api = api_servers.restart(api)
    assert (
        api.segments.ListSegments(S.ListSegmentsRequest(archived=S.ARCHIVED_FILTER_ALL))
        == before_segments
    )
    assert (
        api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u3"))).person
        == before_person
    )
    assert members_of(api, pro) == {"u1", "u3"}
    assert members_of(api, vip) == {"u2", "u3"}
    assert stored_changes(api) == before_changes
    # The dynamic segment still follows data after the restart.
    upsert(api, person("u2", plan="pro"))
    assert members_of(api, pro) == {"u1", "u2", "u3"}


def test_restart_with_a_single_person_without_email(api_servers):
    api = api_servers.start()
    upsert(api, person("u1"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u1")
    api = api_servers.restart(api)
    assert members_of(api, vip) == {"u1"}


def test_oversize_message_is_resource_exhausted(api_servers):
    api = api_servers.start(api_servers.config(limits=Limits(max_message_bytes=64 * 1024)))
    huge = people_pb2.UpsertPeopleRequest(people=[person("u1", blob="x" * 100_000)])
    code, _ = status_of(lambda: api.people.UpsertPeople(huge))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    upsert(api, person("u1", small="ok"))  # the server is fine


def test_unexpected_errors_are_internal_with_an_id_and_logged(api, monkeypatch, caplog):
    def explode(self, *args, **kwargs):
        raise RuntimeError("secret detail of the bug")

    monkeypatch.setattr(Workspace, "get_segment", explode)
    monkeypatch.setattr(Workspace, "watch", explode)
    caplog.set_level(logging.ERROR, logger="segsvc.api.errors")
    for call in (
        lambda: api.segments.GetSegment(S.GetSegmentRequest(segment_id=1)),
        lambda: list(api.changes.WatchChanges(changes_pb2.WatchChangesRequest(no_follow=True))),
    ):
        code, message = status_of(call)
        assert code == grpc.StatusCode.INTERNAL
        assert message.startswith("internal error; see the server log (error id ")
        assert "secret" not in message
        error_id = message.rsplit(" ", 1)[-1].rstrip(")")
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert logged and logged[0].exc_info is not None
        assert "secret detail" in str(logged[0].exc_info[1])


# -- authentication ------------------------------------------------------------------------------

TOKENS = {"reader": ("acme", "read"), "writer": ("acme", "write"), "root": ("ops", "admin")}


@pytest.fixture
def secured(api_servers, tmp_path):
    path = tmp_path / "tokens.jsonl"
    lines = ["# segsvc tokens", ""]
    lines += [
        json.dumps({"token_sha256": hash_token(token), "workspace": ws, "role": role})
        for token, (ws, role) in TOKENS.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return api_servers.start(api_servers.config(tokens_file=path))


def _as(token, workspace=None):
    metadata = [("authorization", f"Bearer {token}")]
    if workspace:
        metadata.append(("workspace", workspace))
    return metadata


def test_tokens_authenticate_and_authorize(secured):
    api = secured

    def create(name, metadata):
        request = S.CreateSegmentRequest(name=name, type=S.SEGMENT_TYPE_MANUAL)
        return api.segments.CreateSegment(request, metadata=metadata).segment

    def names(metadata):
        page = api.segments.ListSegments(S.ListSegmentsRequest(), metadata=metadata)
        return [s.name for s in page.segments]

    code, message = status_of(lambda: names(None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in message
    code, _ = status_of(lambda: names(_as("wrong")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = status_of(lambda: names([("authorization", "Basic cm9vdA==")]))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    code, message = status_of(lambda: create("x", _as("reader")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "CreateSegment needs a write token" in message
    # Streams are guarded too.
    code, _ = status_of(
        lambda: api.people.StreamUpsertPeople(
            iter([people_pb2.StreamUpsertPeopleRequest(people=[person("u1")])]),
            metadata=_as("reader"),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED

    create("Acme list", _as("writer"))
    assert names(_as("reader")) == ["Acme list"]
    code, message = status_of(lambda: names(_as("reader", "ops")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'acme'" in message
    # An admin token works in its own workspace, or in any one it names.
    assert names(_as("root")) == []
    assert names(_as("root", "acme")) == ["Acme list"]
    changes = list(
        api.changes.WatchChanges(
            changes_pb2.WatchChangesRequest(no_follow=True), metadata=_as("reader")
        )
    )
    assert changes == []


def test_only_admin_tokens_list_workspaces(secured):
    from segsvc.v1 import workspaces_pb2 as W

    secured.segments.CreateSegment(
        S.CreateSegmentRequest(name="Acme list", type=S.SEGMENT_TYPE_MANUAL),
        metadata=_as("writer"),
    )
    request = W.ListWorkspacesRequest()
    for token in ("reader", "writer"):
        code, message = status_of(
            lambda t=token: secured.workspaces.ListWorkspaces(request, metadata=_as(t))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        role = TOKENS[token][1]
        assert message == f"this token is {role}-only: ListWorkspaces needs an admin token"
    listed = secured.workspaces.ListWorkspaces(request, metadata=_as("root"))
    assert [(w.name, w.segments) for w in listed.workspaces] == [("acme", 1)]


def test_health_and_reflection_need_no_token(secured):
    reply = secured.health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    assert next(replies).list_services_response.service


def test_workspaces_without_tokens_come_from_metadata(api):
    manual_segment(api, "in default")
    request = S.CreateSegmentRequest(name="in acme", type=S.SEGMENT_TYPE_MANUAL)
    api.segments.CreateSegment(request, metadata=[("workspace", "acme")])
    page = api.segments.ListSegments(S.ListSegmentsRequest(), metadata=[("workspace", "acme")])
    assert [s.name for s in page.segments] == ["in acme"]
    page = api.segments.ListSegments(S.ListSegmentsRequest())
    assert [s.name for s in page.segments] == ["in default"]
    code, _ = status_of(
        lambda: api.segments.ListSegments(S.ListSegmentsRequest(), metadata=[("workspace", "../x")])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_tokens_file_errors_name_the_line(tmp_path):
    path = tmp_path / "tokens"
    path.write_text('# comment\n{"token_sha256": "abcd", "workspace": "w", "role": "read"}\n')
    with pytest.raises(TokensFileError, match="tokens:2: token_sha256 must be 64 hex"):
        load_tokens(path)
    path.write_text("not json\n")
    with pytest.raises(TokensFileError, match="tokens:1: expected"):
        load_tokens(path)
    path.write_text("# nothing\n")
    with pytest.raises(TokensFileError, match="holds no tokens"):
        load_tokens(path)
    good = json.dumps({"token_sha256": hash_token("t"), "workspace": "w", "role": "owner"})
    path.write_text(good + "\n")
    with pytest.raises(TokensFileError, match="role must be read, write or admin"):
        load_tokens(path)


def test_open_listening_needs_tokens(api_servers):
    check_listen_address("127.0.0.1:0", authenticated=False)
    check_listen_address("[::1]:50051", authenticated=False)
    check_listen_address("localhost:1", authenticated=False)
    check_listen_address("0.0.0.0:50051", authenticated=True)
    for address in ("0.0.0.0:50051", "[::]:1", "db.example.com:1"):
        with pytest.raises(ServerConfigError, match="without authentication"):
            check_listen_address(address, authenticated=False)
    with pytest.raises(ServerConfigError, match=re.escape("refusing to listen on 0.0.0.0:0")):
        build_server(api_servers.config(listen="0.0.0.0:0"))


def test_a_taken_port_is_a_clear_error(api, api_servers, tmp_path):
    config = api_servers.config(listen=api.address, data_dir=tmp_path / "other")
    with pytest.raises(ServerConfigError, match="cannot listen on"):
        build_server(config)
    # The port is taken before the data directory is created.
    assert not (tmp_path / "other").exists()


def test_a_store_that_cannot_open_after_the_bind_frees_the_port(api_servers, tmp_path):
    data = tmp_path / "lost"
    data.mkdir()
    (data / "segsvc.lock").write_text("")  # a store was here; its data file is gone
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = api_servers.config(listen=f"127.0.0.1:{port}", data_dir=data)
    with pytest.raises(StoreDamagedError, match="is missing"):
        build_server(config)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(api_servers, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    api = api_servers.start(api_servers.config(tls_cert=cert, tls_key=key))
    assert api.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    manual_segment(api, "over TLS")
    # A client that does not speak TLS gets nowhere.
    with grpc.insecure_channel(f"127.0.0.1:{api.server.port}") as channel:
        code, _ = status_of(
            lambda: Stubs(channel).health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
    assert code == grpc.StatusCode.UNAVAILABLE
