"""The broker's gRPC server, built in one place: its options, interceptors, credentials,
servicers, health and reflection.

TLS, tokens and the limits against abuse come from a `Security` (broker.server.security);
the composition root (broker.app) calls `bind_server` and `add_services` and owns the
server's lifecycle.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as _reflection
from opentelemetry.trace import Tracer

from broker.clock import SystemClock
from broker.config import BrokerConfig
from broker.errors import BrokerError
from broker.server.admin import AdminService
from broker.server.auth import task_owner
from broker.server.interceptors import server_interceptors
from broker.server.keda import ExternalScalerService
from broker.server.parsing import TolerantRegistrar
from broker.server.security import Security, limit_options
from broker.server.tasks import TaskService
from broker.server.tokens import AuthService
from broker.server.workers import WorkerService
from broker.service import BrokerService
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import auth_pb2 as _auth
from worker_sdk._pb import auth_pb2_grpc as _auth_grpc
from worker_sdk._pb import externalscaler_pb2 as _keda
from worker_sdk._pb import externalscaler_pb2_grpc as _keda_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

SERVICE_NAMES = (
    _tasks.DESCRIPTOR.services_by_name["TaskService"].full_name,
    _worker.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    _admin.DESCRIPTOR.services_by_name["AdminService"].full_name,
    _keda.DESCRIPTOR.services_by_name["ExternalScaler"].full_name,  # for KEDA
    _auth.DESCRIPTOR.services_by_name["AuthService"].full_name,
)


# Server reflection's stable name. Its messages are v1alpha's, field for field (the
# protocol was renamed, not changed), and grpcio-reflection serves only v1alpha, so the
# one servicer answers at both names.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def server_options(config: BrokerConfig) -> list[tuple[str, Any]]:
    """Channel arguments of the server: messages big enough for a full batch, no bigger;
    keepalive enforcement and connection age (broker.server.security.limit_options)."""
    limit = config.max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
        *limit_options(config),
    ]


def health_servicer() -> Any:
    """The standard gRPC health service, for `set_serving` and, at shutdown, its
    `enter_graceful_shutdown()`. (grpc_health's asyncio servicer has no type stubs.)"""
    return health.aio.HealthServicer()  # type: ignore[attr-defined]


async def set_serving(health_service: Any, serving: bool = True) -> None:
    """Report the server and each of the broker's services as SERVING (or NOT_SERVING:
    a broker that lost its database or its leases, broker.cluster)."""
    status = health_pb2.HealthCheckResponse.SERVING
    if not serving:
        status = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health_service.set(name, status)


def bind_server(
    config: BrokerConfig, *, tracer: Tracer | None = None, security: Security | None = None
) -> tuple[grpc.aio.Server, int]:
    """A server bound to config.host:config.port, with no services yet and not started
    (see `add_services`); returns it and the port it was bound to (config.port, or the one
    chosen for port 0). The broker binds first, so that a port in use fails before the
    database is opened.

    Raises BrokerError ("cannot listen on HOST:PORT: address already in use") if the
    address cannot be bound, or if it would be plaintext beyond loopback without
    `allow_insecure`. Without `security`, one is made from the config.
    """
    address = f"{config.host}:{config.port}"
    if security is None:
        security = Security(config, SystemClock())
    if config.port:
        _check_free(config.host, config.port, address)
    server = grpc.aio.server(
        interceptors=[*server_interceptors(config, tracer), security.interceptor],
        options=server_options(config),
    )
    credentials = security.credentials()
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        # gRPC's message ends in a hint about GRPC_VERBOSITY; keep the first sentence.
        reason = str(exc).split(";")[0].strip() or "cannot bind"
        raise BrokerError(f"cannot listen on {address}: {reason}") from None
    return server, port


def _check_free(host: str, port: int, address: str) -> None:
    """Raise BrokerError if `port` is taken on (any address of) `host`, by binding it
    once ourselves (as gRPC would, with SO_REUSEADDR): gRPC's own failure prints a log
    line of the C core on stderr that no Python setting silences."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BrokerError(f"cannot listen on {address}: {exc.strerror}") from None
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BrokerError(
                        f"cannot listen on {address}: address already in use"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. an IPv6 address on a host without IPv6: gRPC says
                raise BrokerError(f"cannot listen on {address}: {exc.strerror}") from None


def add_services(
    server: grpc.aio.Server,
    service: BrokerService,
    *,
    health_service: Any,
    security: Security | None = None,
) -> None:
    """Register the broker's services (plus `health_service` and, unless the config
    turns it off, reflection) on a server from `bind_server`, before it starts;
    `security` is the one the server was bound with."""
    # Requests are parsed tolerantly: bad bytes become INVALID_ARGUMENT, not UNKNOWN.
    registrar: Any = TolerantRegistrar(server)
    _tasks_grpc.add_TaskServiceServicer_to_server(TaskService(service), registrar)
    _worker_grpc.add_WorkerServiceServicer_to_server(WorkerService(service), registrar)
    _admin_grpc.add_AdminServiceServicer_to_server(AdminService(service), registrar)
    _keda_grpc.add_ExternalScalerServicer_to_server(ExternalScalerService(service), registrar)
    if security is not None:
        _auth_grpc.add_AuthServiceServicer_to_server(AuthService(security.registry), registrar)
        security.interceptor.set_task_lookup(lambda task_id: task_owner(service.get, task_id))
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    if security is None or security.config.reflection:
        add_reflection(server)


def add_reflection(server: grpc.aio.Server) -> None:
    """Serve server reflection as grpc.reflection.v1 and v1alpha, for tools (grpcurl,
    Postman) of either generation."""
    names = (*SERVICE_NAMES, health.SERVICE_NAME, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=_reflection.ServerReflectionRequest.FromString,
            response_serializer=_reflection.ServerReflectionResponse.SerializeToString,
        )
    }
    for service_name in (REFLECTION_V1, reflection.SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service_name, handlers),)
        )
        server.add_registered_method_handlers(service_name, handlers)  # type: ignore[attr-defined]


def build_server(
    config: BrokerConfig,
    service: BrokerService,
    *,
    health_service: Any,
    tracer: Tracer | None = None,
    security: Security | None = None,
) -> tuple[grpc.aio.Server, int]:
    """`bind_server`, then `add_services`: a server for the broker's services, bound but
    not started, and its port. Raises BrokerError if the address cannot be bound."""
    security = security or Security(config, SystemClock())
    server, port = bind_server(config, tracer=tracer, security=security)
    add_services(server, service, health_service=health_service, security=security)
    return server, port
