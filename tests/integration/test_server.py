"""The broker's standard services: gRPC health and server reflection; its lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker import Broker
from broker.core.states import BrokerState
from broker.errors import BrokerError, InvalidTransition
from tests.support.config import make_config


async def test_health_is_serving_for_every_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "taskbroker.v1.TaskService", "taskbroker.v1.WorkerService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(ask()):
        names.update(s.name for s in reply.list_services_response.service)
    assert {
        "taskbroker.v1.TaskService",
        "taskbroker.v1.WorkerService",
        "taskbroker.v1.AdminService",
        "grpc.health.v1.Health",
    } <= names


async def test_lifecycle_moves_in_order(tmp_path: Path) -> None:
    broker = Broker(make_config(tmp_path))
    seen = [broker.state]
    await broker.start()
    seen.append(broker.state)
    with pytest.raises(InvalidTransition):
        await broker.start()
    await broker.shutdown()
    seen.append(broker.state)
    await broker.shutdown()  # idempotent
    assert seen == [BrokerState.CREATED, BrokerState.RUNNING, BrokerState.STOPPED]


async def test_a_port_in_use_is_a_clear_error(broker: Broker, tmp_path: Path) -> None:
    other = Broker(make_config(tmp_path / "other", port=broker.port))
    (tmp_path / "other").mkdir()
    with pytest.raises(BrokerError, match="cannot listen on"):
        await other.start()
    assert other.state is BrokerState.STOPPED
