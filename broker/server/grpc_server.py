"""The broker's gRPC server, built in one place: its options, interceptors, credentials,
servicers, health and reflection.

`server_interceptors` and `server_credentials` are where authentication and TLS go;
the composition root (broker.app) calls `build_server` and owns the server's lifecycle.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from broker.config import BrokerConfig
from broker.errors import BrokerError
from broker.server.admin import AdminService
from broker.server.interceptors import server_interceptors
from broker.server.parsing import TolerantRegistrar
from broker.server.tasks import TaskService
from broker.server.workers import WorkerService
from broker.service import BrokerService
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

SERVICE_NAMES = (
    _tasks.DESCRIPTOR.services_by_name["TaskService"].full_name,
    _worker.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    _admin.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def server_options(config: BrokerConfig) -> list[tuple[str, Any]]:
    """Channel arguments of the server: messages big enough for a full batch."""
    message_limit = max(64 * 1024 * 1024, 2 * config.max_payload_bytes + 1024 * 1024)
    return [
        ("grpc.max_receive_message_length", message_limit),
        ("grpc.max_send_message_length", message_limit),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(config: BrokerConfig) -> grpc.ServerCredentials | None:
    """The credentials the port is bound with; None: a plaintext port (all there is today)."""
    return None


def health_servicer() -> Any:
    """The standard gRPC health service, for `set_serving` and, at shutdown, its
    `enter_graceful_shutdown()`. (grpc_health's asyncio servicer has no type stubs.)"""
    return health.aio.HealthServicer()  # type: ignore[attr-defined]


async def set_serving(health_service: Any) -> None:
    """Report the server and each of the broker's services as SERVING."""
    for name in ("", *SERVICE_NAMES):
        await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)


def build_server(
    config: BrokerConfig,
    service: BrokerService,
    *,
    health_service: Any,
    tracer: Tracer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server for the broker's services (plus `health_service` and reflection), bound
    to config.host:config.port but not started; returns it and the port it was bound to
    (config.port, or the one chosen for port 0).

    Raises BrokerError if the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=server_interceptors(config, tracer),
        options=server_options(config),
    )
    # Requests are parsed tolerantly: bad bytes become INVALID_ARGUMENT, not UNKNOWN.
    registrar: Any = TolerantRegistrar(server)
    _tasks_grpc.add_TaskServiceServicer_to_server(TaskService(service), registrar)
    _worker_grpc.add_WorkerServiceServicer_to_server(WorkerService(service), registrar)
    _admin_grpc.add_AdminServiceServicer_to_server(AdminService(service), registrar)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise BrokerError(f"cannot listen on {address}: {exc}") from None
    return server, port
