// A campaign trigger in Node reading segsvc's change feed from NATS JetStream, as
// `segsvc relay-changes` publishes it: durable consumers with a subject filter, the payload
// decoded with protobufjs from protos/ alone. Usage:
//   node consumer.mjs NATS_URL STREAM SUBJECT_TOKEN SEGMENT_ID
// It drains two durable consumers, one of all the workspace's segments and one of
// SEGMENT_ID, and prints one JSON line per change (tests/relay/test_node_consumer.py
// compares them with WatchChanges).
import path from "node:path";
import { fileURLToPath } from "node:url";

import { AckPolicy, connect } from "nats";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = new protobuf.Root();
root.resolvePath = (_origin, target) =>
  target.startsWith("google/protobuf/") ? target : path.resolve(here, "../../protos", target);
await root.load("segsvc/v1/changes.proto", { keepCase: true });
// google/protobuf/timestamp.proto comes with protobufjs ("common" types).
const Change = root.lookupType("segsvc.v1.Change");

const [url, stream, workspaceToken, segmentId] = process.argv.slice(2);
const nc = await connect({ servers: url });
const jsm = await nc.jetstreamManager();
const js = nc.jetstream();

// Everything the consumer has not been given yet, acknowledged one by one; a restarted
// trigger with the same durable name goes on after the last acknowledged change.
async function drain(durable, filterSubject) {
  await jsm.consumers.add(stream, {
    durable_name: durable,
    filter_subject: filterSubject,
    ack_policy: AckPolicy.Explicit,
  });
  const consumer = await js.consumers.get(stream, durable);
  const changes = [];
  while ((await consumer.info()).num_pending > 0) {
    const batch = await consumer.fetch({ max_messages: 200, expires: 2000 });
    for await (const message of batch) {
      const change = Change.toObject(Change.decode(message.data), { enums: String, longs: Number });
      changes.push({
        seq: change.seq,
        segment_id: change.segment_id,
        person_id: change.person_id,
        kind: change.kind,
        cause: change.cause,
        header_seq: Number(message.headers.get("Segsvc-Seq")),
        header_kind: message.headers.get("Segsvc-Kind"),
        msg_id: message.headers.get("Nats-Msg-Id"),
      });
      await message.ackAck();
    }
  }
  return changes;
}

const all = await drain("node-all", `segsvc.changes.${workspaceToken}.>`);
const one = await drain("node-one", `segsvc.changes.${workspaceToken}.${segmentId}`);
for (const [consumer, changes] of [["all", all], ["one", one]]) {
  for (const change of changes) console.log(JSON.stringify({ consumer, ...change }));
}
await nc.close();
