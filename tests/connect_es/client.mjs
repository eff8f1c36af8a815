// Connect-ES, the TypeScript runtime osqueue's own client is built on, calling a trioq
// broker the way osqueue's Connect transport does (packages/client/src/transports/
// connect.ts in osqueue). The service comes from trioq's descriptor set, not from
// generated code: what the broker serves is what this client speaks.
//
//   node client.mjs BROKER_URL DESCRIPTORS binary|json
//   (TRIOQ_TOKEN: a bearer token; HTTP_VERSION: "1.1", the default, or "2", cleartext)
//
// Prints one JSON report of every answer and error; tests/test_connect_es.py checks it.

import { readFileSync } from "node:fs";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

const [baseUrl, descriptors, codec] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const service = registry.getService("osqueue.v1.QueueService");
const errorInfo = registry.getMessage("google.rpc.ErrorInfo");
const message = (name, init) => create(registry.getMessage(`osqueue.v1.${name}`), init);

const token = process.env.TRIOQ_TOKEN;
const transport = createConnectTransport({
  baseUrl,
  httpVersion: process.env.HTTP_VERSION ?? "1.1",
  useBinaryFormat: codec === "binary",
  interceptors: token
    ? [(next) => (req) => { req.header.set("Authorization", `Bearer ${token}`); return next(req); }]
    : [],
});
const client = createClient(service, transport);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const json = (value) => encoder.encode(JSON.stringify(value));

async function failure(call) {
  try {
    await call();
    return null;
  } catch (error) {
    const connectError = ConnectError.from(error);
    const [info] = connectError.findDetails(errorInfo);
    return { code: Code[connectError.code], message: connectError.rawMessage, reason: info?.reason, metadata: info?.metadata };
  }
}

const report = {};
const a = await client.submitJob(message("SubmitJobRequest", { payload: json({ to: "a@b.c" }), type: "email", maxAttempts: 2 }));
const b = await client.submitJob(message("SubmitJobRequest", { payload: json([1, 2]) }));
report.submitted = [a.jobId, b.jobId];
const stats = await client.getStats(message("GetStatsRequest", {}));
report.stats = { total: stats.total, unclaimed: stats.unclaimed, inProgress: stats.inProgress, brokerAddress: stats.brokerAddress };
const claimed = await client.claimJob(message("ClaimJobRequest", { workerId: "ts-1", types: ["email"] }));
report.claimed = { jobId: claimed.jobId, type: claimed.type, payload: JSON.parse(decoder.decode(claimed.payload)) };
await client.heartbeat(message("HeartbeatRequest", { jobId: a.jobId, workerId: "ts-1" }));
const listed = await client.listJobs(message("ListJobsRequest", {}));
report.listed = {
  total: listed.total, unclaimed: listed.unclaimed, inProgress: listed.inProgress, completedTotal: listed.completedTotal,
  jobs: listed.jobs.map((j) => ({
    id: j.id, status: j.status, type: j.type, workerId: j.workerId, attempts: j.attempts, maxAttempts: j.maxAttempts,
    payload: JSON.parse(decoder.decode(j.payload)), createdAt: String(j.createdAt), heartbeat: String(j.heartbeat),
  })),
};
await client.completeJob(message("CompleteJobRequest", { jobId: a.jobId, workerId: "ts-1" }));
const next = await client.claimJob(message("ClaimJobRequest", { workerId: "ts-1" }));
report.next = next.jobId;
const empty = await client.claimJob(message("ClaimJobRequest", { workerId: "ts-1" }));
report.empty = { jobId: empty.jobId ?? null, payload: empty.payload ?? null, type: empty.type };
report.errors = {
  unknownJob: await failure(() => client.heartbeat(message("HeartbeatRequest", { jobId: "nope", workerId: "ts-1" }))),
  notHeld: await failure(() => client.completeJob(message("CompleteJobRequest", { jobId: b.jobId, workerId: "ts-2" }))),
  badPayload: await failure(() => client.submitJob(message("SubmitJobRequest", { payload: encoder.encode("{nope") }))),
};
process.stdout.write(JSON.stringify(report));
