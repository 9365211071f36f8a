// A segsvc client in Node, built from the .proto files alone (no generated code): what a
// team in another language does. Usage: node client.mjs HOST:PORT
// It calls one RPC of every service and prints one JSON line per result, which
// tests/api/test_node_client.py checks.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const protos = path.resolve(here, "../../protos");
// google/rpc/status.proto and error_details.proto (the rich error model) come from the
// google-proto-files package; grpc/health/v1/health.proto from grpc-health-check.
const googleProtos = path.dirname(require.resolve("google-proto-files/package.json"));
const healthProtos = path.join(path.dirname(require.resolve("grpc-health-check/package.json")), "proto");

const loaderOptions = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
const definition = protoLoader.loadSync(
  [
    "segsvc/v1/people.proto",
    "segsvc/v1/segments.proto",
    "segsvc/v1/changes.proto",
    "segsvc/v1/audiences.proto",
    "health/v1/health.proto",
  ],
  { ...loaderOptions, includeDirs: [protos, healthProtos] },
);
const loaded = grpc.loadPackageDefinition(definition);
const v1 = loaded.segsvc.v1;

const address = process.argv[2];
const credentials = grpc.credentials.createInsecure();
// The workspace travels as the `workspace` request header.
const metadata = new grpc.Metadata();
metadata.set("workspace", "node");

const people = new v1.PeopleService(address, credentials);
const segments = new v1.SegmentsService(address, credentials);
const changes = new v1.ChangesService(address, credentials);
const audiences = new v1.AudiencesService(address, credentials);
const health = new loaded.grpc.health.v1.Health(address, credentials);

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function collect(call) {
  return new Promise((resolve, reject) => {
    const items = [];
    call.on("data", (item) => items.push(item));
    call.on("end", () => resolve(items));
    call.on("error", reject);
  });
}

// google.rpc.Status from the grpc-status-details-bin trailer, and the BadRequest inside it.
const rpcTypes = new protobuf.Root().loadSync(
  [
    path.join(googleProtos, "google/rpc/status.proto"),
    path.join(googleProtos, "google/rpc/error_details.proto"),
  ],
  { keepCase: true },
);
const Status = rpcTypes.lookupType("google.rpc.Status");
const BadRequest = rpcTypes.lookupType("google.rpc.BadRequest");

function badRequest(error) {
  const [raw] = error.metadata.get("grpc-status-details-bin");
  const status = Status.decode(raw);
  const detail = status.details.find((any) => any.type_url.endsWith("/google.rpc.BadRequest"));
  return BadRequest.decode(detail.value).field_violations.map((v) => v.field);
}

function print(what, result) {
  console.log(JSON.stringify({ what, ...result }));
}

const upserted = await unary(people, "UpsertPeople", {
  people: [{ id: "ann", email: "Ann@Example.com", attributes: { plan: { string_value: "pro" } } }],
});
print("UpsertPeople", { created: upserted.created });

const created = await unary(segments, "CreateSegment", {
  name: "Pro",
  type: "SEGMENT_TYPE_DYNAMIC",
  conditions: {
    attribute: { attribute: "plan", operator: "OPERATOR_EQUALS", value: { string_value: "pro" } },
  },
});
print("CreateSegment", { id: created.segment.id, members: created.segment.member_count });

const found = await unary(people, "GetPerson", { person: { email: "ann@example.com" } });
print("GetPerson", { id: found.person.id, segment_ids: found.person.segment_ids });

const count = await unary(audiences, "CountAudience", { audience: { include: [created.segment.id] } });
print("CountAudience", { count: count.count });

const feed = await collect(changes.WatchChanges({ no_follow: true }, metadata));
print("WatchChanges", {
  changes: feed.flatMap((r) => r.changes).map((c) => [c.seq, c.person_id, c.kind, c.cause]),
});

const serving = await unary(health, "Check", { service: "segsvc.v1.PeopleService" });
print("Health.Check", { status: serving.status });

try {
  await unary(segments, "CreateSegment", { name: "", type: "SEGMENT_TYPE_MANUAL" });
  print("CreateSegment(bad)", { error: null });
} catch (error) {
  print("CreateSegment(bad)", { code: error.code, fields: badRequest(error) });
}

for (const client of [people, segments, changes, audiences, health]) client.close();
