// The parts of gRPC's and Google's published contracts the error model and reflection use:
// google.rpc.Status and its details (from the trailer `grpc-status-details-bin`), and the
// server reflection service. The messages below are the published ones, cut down to the
// fields read here (field numbers as published).
"use strict";

const protobuf = require("protobufjs");
const { grpc, callMetadata } = require("./api");

const SCHEMA = `
syntax = "proto3";
package google.rpc;
message Any { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
message BadRequest {
  message FieldViolation { string field = 1; string description = 2; }
  repeated FieldViolation field_violations = 1;
}
message Duration { int64 seconds = 1; int32 nanos = 2; }
message RetryInfo { Duration retry_delay = 1; }
`;

const REFLECTION = `
syntax = "proto3";
package grpc.reflection.v1;
message ServerReflectionRequest { string host = 1; oneof message_request { string list_services = 7; } }
message ServiceResponse { string name = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  oneof message_response { ListServiceResponse list_services_response = 6; ErrorResponse error_response = 7; }
}
`;

const rpc = protobuf.parse(SCHEMA, { keepCase: true }).root;
const reflection = protobuf.parse(REFLECTION, { keepCase: true }).root;
const DETAILS = { "type.googleapis.com/google.rpc.ErrorInfo": "ErrorInfo", "type.googleapis.com/google.rpc.BadRequest": "BadRequest", "type.googleapis.com/google.rpc.RetryInfo": "RetryInfo" };

// What a failed call says beyond its code: { status, errorInfo, badRequest, retryInfo,
// pushbackMs } (each undefined when absent; pushbackMs a number, -1 = do not retry).
function errorDetails(err) {
  const out = {};
  const metadata = err.metadata || new grpc.Metadata();
  const [bin] = metadata.get("grpc-status-details-bin");
  if (bin) {
    const Status = rpc.lookupType("google.rpc.Status");
    out.status = Status.toObject(Status.decode(bin), { longs: String, defaults: true });
    for (const any of out.status.details) {
      const name = DETAILS[any.type_url];
      if (!name) continue;
      const type = rpc.lookupType(`google.rpc.${name}`);
      const key = name[0].toLowerCase() + name.slice(1);
      out[key] = type.toObject(type.decode(any.value), { longs: String, defaults: true });
    }
  }
  const [pushback] = metadata.get("grpc-retry-pushback-ms");
  if (pushback !== undefined) out.pushbackMs = Number(pushback);
  return out;
}

// The services a server lists through grpc.reflection.v1 (or the given version).
function listServices(address, version = "v1", timeoutMs = 5000) {
  const Request = reflection.lookupType("grpc.reflection.v1.ServerReflectionRequest");
  const Response = reflection.lookupType("grpc.reflection.v1.ServerReflectionResponse");
  const method = `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`;
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.makeBidiStreamRequest(
      method,
      (message) => Buffer.from(Request.encode(Request.fromObject(message)).finish()),
      (bytes) => Response.toObject(Response.decode(bytes), { oneofs: true, defaults: true }),
      callMetadata(),
      { deadline: new Date(Date.now() + timeoutMs) },
    );
    call.on("data", (response) => {
      call.end();
      if (response.message_response !== "list_services_response") reject(new Error(`reflection answered ${JSON.stringify(response)}`));
      else resolve(response.list_services_response.service.map((s) => s.name));
    });
    call.on("error", reject);
    call.on("end", () => client.close());
    call.write({ list_services: "" });
  });
}

module.exports = { errorDetails, listServices };
