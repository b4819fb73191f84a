"""The gRPC edge: the only part of the broker that knows gRPC and the generated code.

Servicers (`tasks`, `admin`, `workers`) parse requests, call one method of the service
layer (broker.service) and convert the answer (`convert`); `status` maps broker errors to
status codes, `parsing` turns undecodable requests into INVALID_ARGUMENT, `interceptors`
holds the server interceptors, and `grpc_server.build_server` puts the server together
with its options, interceptors, credentials, health and reflection.
"""
