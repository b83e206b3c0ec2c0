#!/usr/bin/env node
// A Node.js client of the lookalike.v1 contract, for the cross-language e2e test
// (tests/e2e/test_node_client.py). It loads the .proto at run time with @grpc/proto-loader, so
// it shares nothing with the Python stubs: if the contract works here, it works from any
// language that reads the .proto.
//
// Usage: node client.js TARGET KEY_PREFIX IMAGE...
//   Calls ListModels (unary), then sends one query per IMAGE on a single bidirectional
//   SearchStream (request ids "node-0", "node-1", ...; hits filtered to KEY_PREFIX), and prints
//   one JSON object on stdout: {"models": [...], "answers": [...]}.
// Exits non-zero, with the error on stderr, when a call fails as a whole.
//
// TLS and tokens come from the environment, as for the Python client: LOOKALIKE_CA (PEM file of the
// CA to trust; set = TLS), LOOKALIKE_CERT/LOOKALIKE_KEY (client certificate for mTLS) and
// LOOKALIKE_TOKEN (sent as "authorization: Bearer <token>" metadata on every call).
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "..", "protos");
const DEADLINE_MS = 120000;

function loadService() {
  const definition = protoLoader.loadSync("lookalike/v1/lookalike.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: false, // camelCase field names, as protobuf's JSON mapping has them
    longs: String, // int64 ids beyond 2^53 stay exact
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).lookalike.v1.Lookalike;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function listModels(client) {
  return new Promise((resolve, reject) => {
    client.listModels({}, { deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp.models)));
  });
}

// Writes every query, half-closes, and collects the answers: responses come as each query is
// ready, not necessarily in request order, which is why each one carries its request id.
function searchStream(client, images, keyPrefix) {
  return new Promise((resolve, reject) => {
    const answers = [];
    const call = client.searchStream({ deadline: deadline() });
    call.on("data", (resp) => answers.push(resp));
    call.on("error", reject);
    call.on("end", () => resolve(answers));
    images.forEach((file, i) => {
      call.write({
        requestId: `node-${i}`,
        query: { image: fs.readFileSync(file), topK: 3, filter: { keyPrefix } },
      });
    });
    call.end();
  });
}

function credentials(env) {
  const read = (name) => (env[name] ? fs.readFileSync(env[name]) : null);
  if (!env.LOOKALIKE_CA) {
    return grpc.credentials.createInsecure();
  }
  const channel = grpc.credentials.createSsl(read("LOOKALIKE_CA"), read("LOOKALIKE_KEY"), read("LOOKALIKE_CERT"));
  if (!env.LOOKALIKE_TOKEN) {
    return channel;
  }
  const token = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${env.LOOKALIKE_TOKEN}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(channel, token);
}

async function main(argv) {
  const [target, keyPrefix, ...images] = argv;
  if (!target || keyPrefix === undefined || images.length === 0) {
    throw new Error("usage: node client.js TARGET KEY_PREFIX IMAGE...");
  }
  const Lookalike = loadService();
  const client = new Lookalike(target, credentials(process.env), {
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  try {
    const models = await listModels(client);
    const answers = await searchStream(client, images, keyPrefix);
    const out = {
      models: models.map((m) => ({ name: m.name, version: m.version, dim: m.dim, providers: m.providers })),
      answers: answers.map((a) => ({
        requestId: a.requestId,
        error: a.error ? { code: a.error.codeName, message: a.error.message } : null,
        results: a.result
          ? a.result.results.map((mh) => ({
              model: mh.model,
              hits: mh.hits.map((h) => ({ id: h.id, key: h.key, distance: h.distance })),
            }))
          : null,
      })),
    };
    process.stdout.write(JSON.stringify(out) + "\n");
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`node client failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
