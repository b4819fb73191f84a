"""Generated protobuf and gRPC modules; run `make protos`."""
