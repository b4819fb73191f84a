// The Taskbroker v1 API, loaded at run time from a directory of .proto files, and the one
// place that opens channels to the broker.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const FILES = ["taskbroker/v1/tasks.proto", "taskbroker/v1/worker.proto", "taskbroker/v1/admin.proto"];

// How messages look in JavaScript: field names as written in the .proto files, 64-bit
// integers and enum values as strings, every field present (proto3 defaults), and the
// name of the set member of each oneof in a property named after the oneof.
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadApi(protoDir) {
  const definition = protoLoader.loadSync(FILES, { ...LOAD_OPTIONS, includeDirs: [path.resolve(protoDir)] });
  const v1 = grpc.loadPackageDefinition(definition).taskbroker.v1;
  return {
    protoDir,
    v1,
    // Whether the loaded contract has a message ("taskbroker.v1.Task"), a field
    // ("taskbroker.v1.Task.state"), an enum value ("taskbroker.v1.TaskState.TASK_STATE_PENDING")
    // or an RPC ("taskbroker.v1.TaskService.Get"): checks of newer parts of the contract
    // are skipped when the .proto files they are built from lack them.
    has(name) {
      if (definition[name]) return true;
      const dot = name.lastIndexOf(".");
      const parent = definition[name.slice(0, dot)];
      const member = name.slice(dot + 1);
      if (!parent) return false;
      if (parent.type && parent.type.field) return parent.type.field.some((f) => f.name === member);
      if (parent.type && parent.type.value) return parent.type.value.some((v) => v.name === member);
      return Object.prototype.hasOwnProperty.call(parent, member); // a service's methods
    },
  };
}

// Credentials and per-call metadata for every call and stream. A broker that wants a
// bearer token gets it from TASKBROKER_TOKEN; TLS would be set up here as well.
function channelCredentials() {
  return grpc.credentials.createInsecure();
}

function callMetadata() {
  const metadata = new grpc.Metadata();
  if (process.env.TASKBROKER_TOKEN) metadata.set("authorization", `Bearer ${process.env.TASKBROKER_TOKEN}`);
  return metadata;
}

function connect(api, address) {
  const credentials = channelCredentials();
  return {
    tasks: new api.v1.TaskService(address, credentials),
    admin: new api.v1.AdminService(address, credentials),
    workers: new api.v1.WorkerService(address, credentials),
    close() {
      this.tasks.close();
      this.admin.close();
      this.workers.close();
    },
  };
}

// A unary call as a promise, with a deadline; a failure rejects with the gRPC error
// (its .code is a grpc.status value, .details the message).
function unary(client, method, request, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, callMetadata(), { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

module.exports = { loadApi, connect, unary, callMetadata, grpc };
