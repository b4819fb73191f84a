"""`taskbroker health`: ask the broker's standard gRPC health service (for Docker HEALTHCHECK)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2 as _health_pb
from grpc_health.v1 import health_pb2_grpc as _health_grpc

from cli._common import connection_settings
from cli._errors import CliError
from worker_sdk._channel import open_blocking_channel


def check(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The serving status name ("SERVING", "NOT_SERVING", ...) of `service` at `address`."""
    tls, token = connection_settings()
    # A small answer: no options. The health service needs no token, but takes one.
    with open_blocking_channel(address, options=(), tls=tls, token=token) as channel:
        stub = _health_grpc.HealthStub(channel)
        try:
            response = stub.Check(_health_pb.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.NOT_FOUND:
                raise CliError(
                    f"the broker at {address} has no health status for {service!r}"
                ) from None
            name = code.name if code is not None else "error"
            raise CliError(f"broker at {address} is not healthy: {name}") from None
    return str(_health_pb.HealthCheckResponse.ServingStatus.Name(response.status))
