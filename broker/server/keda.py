"""KEDA's external scaler (`externalscaler.ExternalScaler`), served by the broker.

A KEDA ScaledObject names a pool in its metadata (`pool`, and optionally
`targetWaitSeconds` and `horizonSeconds`, the `pools recommend` options); KEDA then asks:

- `GetMetricSpec`: one metric, `workers-<pool>`, with a target of 1 per replica;
- `GetMetrics`: the pool's recommended worker count (`BrokerService.scaling`), so that
  the HPA's desired replicas, ceil(value / target), is the recommendation itself. The
  recommendation already turns the forecast into slots with the queueing model and
  divides by the workers' capacity; a metric of forecast concurrent work with a target of
  the capacity would size the pool at its offered load, with no room for the wait target;
- `IsActive`: whether the pool needs any worker (work waits or runs, or is forecast);
  KEDA scales the Deployment to zero and back on it;
- `StreamIsActive`: the same, pushed as it changes: the broker's engine wakes the stream
  when the pool's work changes, and the stream re-reads every `recheck_s` seconds, since
  a forecast changes with time alone.

Each handler parses, calls the service layer, converts; nothing else here decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc

from broker.errors import BrokerError, InvalidArgument
from broker.server.parsing import Malformed
from broker.server.status import Context, edge, status_of
from broker.service import DEFAULT_HORIZON_S, DEFAULT_TARGET_WAIT_S, BrokerService, ScalingSignal
from worker_sdk._pb import externalscaler_pb2 as _keda
from worker_sdk._pb import externalscaler_pb2_grpc as _keda_grpc

METRIC_PREFIX = "workers-"
TARGET_PER_REPLICA = 1.0
_MAX_METADATA = 16
_MAX_VALUE = 256


@dataclass(frozen=True, slots=True)
class ScalerQuery:
    """What a ScaledObject's metadata asks about."""

    pool: str
    target_wait_s: float
    horizon_s: float

    @property
    def metric_name(self) -> str:
        return METRIC_PREFIX + self.pool


def parse_metadata(metadata: Mapping[str, str]) -> ScalerQuery:
    """The pool and the recommendation's options from a ScaledObject's metadata;
    InvalidArgument for a missing pool or a bad number. Other keys (KEDA passes the
    trigger's whole metadata, scalerAddress and TLS settings included) are ignored."""
    if len(metadata) > _MAX_METADATA:
        raise InvalidArgument(f"scalerMetadata has more than {_MAX_METADATA} keys")
    for key, value in metadata.items():
        if len(key) > _MAX_VALUE or len(value) > _MAX_VALUE:
            raise InvalidArgument(f"scalerMetadata {key[:40]!r}: longer than {_MAX_VALUE}")
    pool = metadata.get("pool", "")
    if not pool:
        raise InvalidArgument("scalerMetadata must name the pool: pool: <name>")
    return ScalerQuery(
        pool=pool,
        target_wait_s=_number(metadata, "targetWaitSeconds", DEFAULT_TARGET_WAIT_S),
        horizon_s=_number(metadata, "horizonSeconds", DEFAULT_HORIZON_S),
    )


def _number(metadata: Mapping[str, str], key: str, default: float) -> float:
    text = metadata.get(key, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"scalerMetadata {key}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InvalidArgument(f"scalerMetadata {key}: not a finite number: {text!r}")
    return value


class ExternalScalerService(_keda_grpc.ExternalScalerServicer):
    """The pool's recommendation and activity, for KEDA."""

    recheck_s: float = 15.0  # how often StreamIsActive re-reads a quiet pool

    def __init__(self, service: BrokerService) -> None:
        self._service = service

    async def _signal(self, query: ScalerQuery) -> ScalingSignal:
        return await self._service.scaling(
            query.pool, target_wait_s=query.target_wait_s, horizon_s=query.horizon_s
        )

    @edge
    async def IsActive(
        self, request: _keda.ScaledObjectRef, context: Context
    ) -> _keda.IsActiveResponse:
        signal = await self._signal(parse_metadata(request.scalerMetadata))
        return _keda.IsActiveResponse(result=signal.active)

    async def StreamIsActive(
        self, request: _keda.ScaledObjectRef, context: Context
    ) -> AsyncIterator[_keda.IsActiveResponse]:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            query = parse_metadata(request.scalerMetadata)
            last: bool | None = None
            while True:
                changed = self._service.next_activity(query.pool)
                signal = await self._signal(query)
                if signal.active != last:
                    last = signal.active
                    yield _keda.IsActiveResponse(result=signal.active)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.recheck_s)
        except BrokerError as exc:
            await context.abort(status_of(exc), str(exc))

    @edge
    async def GetMetricSpec(
        self, request: _keda.ScaledObjectRef, context: Context
    ) -> _keda.GetMetricSpecResponse:
        query = parse_metadata(request.scalerMetadata)
        spec = _keda.MetricSpec(
            metricName=query.metric_name,
            targetSize=int(TARGET_PER_REPLICA),
            targetSizeFloat=TARGET_PER_REPLICA,
        )
        return _keda.GetMetricSpecResponse(metricSpecs=[spec])

    @edge
    async def GetMetrics(
        self, request: _keda.GetMetricsRequest, context: Context
    ) -> _keda.GetMetricsResponse:
        query = parse_metadata(request.scaledObjectRef.scalerMetadata)
        signal = await self._signal(query)
        value = _keda.MetricValue(
            metricName=request.metricName or query.metric_name,
            metricValue=signal.desired_workers,
            metricValueFloat=float(signal.desired_workers),
        )
        return _keda.GetMetricsResponse(metricValues=[value])

    async def StreamMetricSpec(
        self, request: _keda.ScaledObjectRef, context: Context
    ) -> AsyncIterator[_keda.GetMetricSpecResponse]:
        """The target is always 1 per replica, so there is nothing to push: KEDA falls
        back to GetMetricSpec on UNIMPLEMENTED, as its interface says."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "the metric spec never changes: use GetMetricSpec"
        )
        yield _keda.GetMetricSpecResponse()  # never reached; makes this a stream handler
