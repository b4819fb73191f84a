"""The broker's KEDA external scaler, called as KEDA calls it: over gRPC on loopback,
while a recorded workload runs on a FakeClock, its answers compared with `Recommend`
(AdminService) at the same moment, from zero to busy and back to zero."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from broker.clock import FakeClock
from broker.server.keda import ExternalScalerService
from tests.support.config import make_config
from worker_sdk import Client, TaskContext, Worker
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import externalscaler_pb2 as _keda
from worker_sdk._pb import externalscaler_pb2_grpc as _keda_grpc

# Arrivals per minute, as recorded from a pool's morning ramp.
RECORDED_MINUTES = (4, 8, 12, 16, 20, 20)
POOL = "default"
REF = _keda.ScaledObjectRef(name="workers", namespace="jobs", scalerMetadata={"pool": POOL})


class Keda:
    """KEDA's side of the protocol, and an operator's `pools recommend`, on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.scaler = _keda_grpc.ExternalScalerStub(channel)
        self.admin = _admin_grpc.AdminServiceStub(channel)

    async def is_active(self) -> bool:
        return (await self.scaler.IsActive(REF)).result

    async def metric(self) -> float:
        spec = await self.scaler.GetMetricSpec(REF)
        (metric,) = spec.metricSpecs
        answer = await self.scaler.GetMetrics(
            _keda.GetMetricsRequest(scaledObjectRef=REF, metricName=metric.metricName)
        )
        (value,) = answer.metricValues
        assert value.metricName == metric.metricName
        assert value.metricValue == value.metricValueFloat
        return value.metricValueFloat

    async def replicas(self) -> int:
        """What the HPA would ask for: ceil(metric / target per replica)."""
        (spec,) = (await self.scaler.GetMetricSpec(REF)).metricSpecs
        return math.ceil(await self.metric() / spec.targetSizeFloat)

    async def recommended(self) -> int:
        answer = await self.admin.Recommend(_admin.RecommendRequest(pool=POOL))
        (rec,) = answer.pools
        return rec.recommended_workers


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=math.floor(time.time() / 60) * 60.0)


@pytest.fixture
async def broker(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Broker]:
    # The clock moves a minute at a time under a connected worker: its heartbeats must
    # not time out in between, or the worker count would change under the comparisons.
    config = make_config(tmp_path, heartbeat_timeout_s=600.0)
    async with Broker(config, clock=clock) as running:
        yield running


async def next_activity(stream: AsyncIterator[_keda.IsActiveResponse]) -> bool:
    """The stream's next push; the stream must push on its own, well within 10 s."""
    return (await asyncio.wait_for(anext(stream), 10)).result


async def test_keda_scales_a_pool_from_zero_with_the_recommendation_and_back_to_zero(
    broker: Broker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream's periodic re-read is out of reach: every push below is event-driven.
    monkeypatch.setattr(ExternalScalerService, "recheck_s", 3600.0)
    worker = Worker(capacity=2, worker_id="w1")

    @worker.task("work")
    async def work(ctx: TaskContext) -> None:
        await asyncio.sleep(0.01)

    async with (
        grpc.aio.insecure_channel(broker.address) as channel,
        Client(broker.address) as client,
    ):
        keda = Keda(channel)
        stream = aiter(keda.scaler.StreamIsActive(REF))

        # An idle pool with no history: inactive, zero replicas, as recommended.
        assert await next_activity(stream) is False
        assert not await keda.is_active()
        assert await keda.replicas() == 0 == await keda.recommended()

        # Scale from zero: the first task is pushed as it is submitted.
        first = await client.submit("work", pool=POOL)
        assert await next_activity(stream) is True
        assert await keda.is_active()
        assert await keda.replicas() == await keda.recommended() == 1

        # KEDA starts a worker; the recorded minutes run, the clock moving minute by minute.
        run = asyncio.create_task(worker.run(broker.address))
        await client.wait(first, timeout=10)
        answers = []
        for arrivals in RECORDED_MINUTES:
            ids = [await client.submit("work", pool=POOL) for _ in range(arrivals)]
            await client.wait_many(ids, timeout=20)
            clock.advance(60)
            answers.append(
                (await keda.is_active(), await keda.replicas(), await keda.recommended())
            )
        for active, replicas, recommended in answers:
            assert active
            assert replicas == recommended >= 1

        # The queue is empty and nothing runs, but arrivals are forecast: still active.
        assert await keda.is_active()
        assert await keda.replicas() == await keda.recommended() >= 1

        # Hours later, with no arrivals since, nothing is forecast; the worker leaving
        # (after the clock moved) wakes the stream, which pushes the pool inactive: KEDA
        # scales it to zero.
        clock.advance(7 * 3600)
        await worker.shutdown(grace=2)
        await run
        assert await next_activity(stream) is False
        assert not await keda.is_active()
        assert await keda.replicas() == 0 == await keda.recommended()

        # And from zero again, at once.
        await client.submit("work", pool=POOL)
        assert await next_activity(stream) is True
        assert await keda.replicas() == await keda.recommended() == 1


async def test_a_forecast_that_fades_turns_the_stream_inactive_by_itself(
    broker: Broker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ExternalScalerService, "recheck_s", 0.02)
    worker = Worker(capacity=2, worker_id="w1")

    @worker.task("work")
    async def work(ctx: TaskContext) -> None:
        pass

    async with (
        grpc.aio.insecure_channel(broker.address) as channel,
        Client(broker.address) as client,
    ):
        keda = Keda(channel)
        run = asyncio.create_task(worker.run(broker.address))
        for arrivals in RECORDED_MINUTES:
            await client.wait_many(
                [await client.submit("work", pool=POOL) for _ in range(arrivals)], timeout=20
            )
            clock.advance(60)
        await worker.shutdown(grace=2)
        await run
        stream = aiter(keda.scaler.StreamIsActive(REF))
        assert await next_activity(stream) is True  # the forecast alone keeps it active
        clock.advance(7 * 3600)  # no event at all: the stream's re-read sees the change
        assert await next_activity(stream) is False
        assert await keda.replicas() == 0 == await keda.recommended()


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"pool": "nope"}, grpc.StatusCode.NOT_FOUND),
        ({"pool": POOL, "targetWaitSeconds": "soon"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"pool": POOL, "horizonSeconds": "1"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"pool": "x" * 300}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_scaled_object_with_bad_metadata_gets_a_clear_status(
    broker: Broker, metadata: dict[str, str], code: grpc.StatusCode
) -> None:
    ref = _keda.ScaledObjectRef(name="w", namespace="n", scalerMetadata=metadata)
    async with grpc.aio.insecure_channel(broker.address) as channel:
        scaler = _keda_grpc.ExternalScalerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await scaler.IsActive(ref)
        assert unary.value.code() is code
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in scaler.StreamIsActive(ref):
                pass
        assert streamed.value.code() is code
        with pytest.raises(grpc.aio.AioRpcError) as spec_stream:
            async for _ in scaler.StreamMetricSpec(ref):
                pass
        assert spec_stream.value.code() is grpc.StatusCode.UNIMPLEMENTED
