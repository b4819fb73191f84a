"""The gRPC AdminService: pools, workers, configuration and statistics for operators.

Each handler converts the request to domain types, calls one BrokerService method and
converts the answer back; a BrokerError becomes its status code (broker.server.status).
"""

from __future__ import annotations

from broker.core.validation import MAX_TASK_IDS
from broker.errors import InvalidArgument
from broker.server import convert, paging
from broker.server.parsing import client_identity
from broker.server.status import Context, edge
from broker.service import DEFAULT_HORIZON_S, DEFAULT_TARGET_WAIT_S, BrokerService
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc

MAX_HISTORY = 10_000  # audited changes one ConfigHistory call reaches back, over its pages


class AdminService(_admin_grpc.AdminServiceServicer):
    """Pools, workers and statistics for operators."""

    def __init__(self, service: BrokerService) -> None:
        self._service = service

    @edge
    async def ListPools(
        self, request: _admin.ListPoolsRequest, context: Context
    ) -> _admin.ListPoolsResponse:
        size = paging.page_size(request.page_size, paging.MAX_PAGE_SIZE)
        after = paging.read_token(request.page_token, "pools", "")
        pools = sorted(self._service.list_pools(), key=lambda p: p.name)
        if after is not None:
            pools = [p for p in pools if p.name > str(after)]
        if not request.page_size:  # a v1 client: every pool
            size = len(pools)
        page, more = pools[:size], len(pools) > size
        token = paging.make_token("pools", "", page[-1].name) if more and page else ""
        return _admin.ListPoolsResponse(
            pools=[convert.pool_to_pb(p) for p in page], next_page_token=token
        )

    @edge
    async def CreatePool(self, request: _admin.CreatePoolRequest, context: Context) -> _admin.Pool:
        pool = await self._service.create_pool(
            convert.pool_from_pb(request.pool, update=True), who=client_identity(context)
        )
        return convert.pool_to_pb(pool)

    @edge
    async def UpdatePool(self, request: _admin.UpdatePoolRequest, context: Context) -> _admin.Pool:
        name, changes, etag = convert.pool_update_from_pb(request)
        pool = await self._service.change_pool(name, changes, etag, who=client_identity(context))
        return convert.pool_to_pb(pool)

    @edge
    async def ListWorkers(
        self, request: _admin.ListWorkersRequest, context: Context
    ) -> _admin.ListWorkersResponse:
        size = paging.page_size(request.page_size, paging.MAX_PAGE_SIZE)
        after = paging.read_token(request.page_token, "workers", paging.fingerprint(request.pool))
        workers = sorted(self._service.list_workers(request.pool), key=lambda w: w.spec.worker_id)
        if after is not None:
            workers = [w for w in workers if w.spec.worker_id > str(after)]
        if not request.page_size:  # a v1 client: every worker
            size = len(workers)
        page, more = workers[:size], len(workers) > size
        token = (
            paging.make_token("workers", paging.fingerprint(request.pool), page[-1].spec.worker_id)
            if more and page
            else ""
        )
        return _admin.ListWorkersResponse(
            workers=[convert.worker_status_to_pb(w) for w in page], next_page_token=token
        )

    @edge
    async def DrainWorker(
        self, request: _admin.DrainWorkerRequest, context: Context
    ) -> _admin.DrainWorkerResponse:
        status = self._service.drain_worker(request.worker_id)
        return _admin.DrainWorkerResponse(worker=convert.worker_status_to_pb(status))

    @edge
    async def CordonWorker(
        self, request: _admin.CordonWorkerRequest, context: Context
    ) -> _admin.WorkerStatus:
        status = self._service.cordon_worker(request.worker_id, request.cordon)
        return convert.worker_status_to_pb(status)

    @edge
    async def ReloadConfig(
        self, request: _admin.ReloadConfigRequest, context: Context
    ) -> _admin.ReloadConfigResponse:
        changes = await self._service.reload_config(client_identity(context))
        return _admin.ReloadConfigResponse(
            changes=[convert.config_change_to_pb(c) for c in changes]
        )

    @edge
    async def ConfigHistory(
        self, request: _admin.ConfigHistoryRequest, context: Context
    ) -> _admin.ConfigHistoryResponse:
        # The page token holds how many changes (newest first) earlier pages had: a change
        # made while a client pages can show once more at the top of its next page.
        filters = paging.fingerprint(request.pool)
        skip = paging.read_token(request.page_token, "config_history", filters) or 0
        if not isinstance(skip, int) or skip < 0:
            raise InvalidArgument("page_token is not a page token of this listing")
        size = request.limit or 100
        if size > MAX_HISTORY:
            raise InvalidArgument(f"limit must be 1..{MAX_HISTORY}, got {size}", field="limit")
        changes = await self._service.config_history(
            request.pool, min(skip + size + 1, MAX_HISTORY)
        )
        page = changes[skip : skip + size]
        more = len(changes) > skip + size
        token = paging.make_token("config_history", filters, skip + size) if more else ""
        return _admin.ConfigHistoryResponse(
            changes=[convert.config_change_to_pb(c) for c in page], next_page_token=token
        )

    @edge
    async def PurgeTasks(
        self, request: _admin.PurgeTasksRequest, context: Context
    ) -> _admin.PurgeTasksResponse:
        deleted = await self._service.purge_tasks(
            convert.pool_name_from_pb(request.pool),
            request.older_than_s,
            convert.purge_states_from_pb(request.states),
        )
        return _admin.PurgeTasksResponse(deleted=deleted)

    @edge
    async def Stats(self, request: _admin.StatsRequest, context: Context) -> _admin.StatsResponse:
        response = convert.stats_to_pb(await self._service.stats())
        config = self._service.config
        response.limits.CopyFrom(
            _admin.BrokerLimits(
                max_payload_bytes=config.max_payload_bytes,
                max_result_bytes=config.max_result_bytes,
                max_response_bytes=config.max_response_bytes,
                max_batch_size=config.max_batch_size,
                max_wait_s=config.max_wait_s,
                max_task_ids=MAX_TASK_IDS,
                max_page_size=paging.MAX_PAGE_SIZE,
            )
        )
        return response

    @edge
    async def MetricsHistory(
        self, request: _admin.MetricsHistoryRequest, context: Context
    ) -> _admin.MetricsHistoryResponse:
        points = await self._service.metrics_history(
            request.pool,
            request.task_type,
            request.worker_id,
            since=request.since_ms / 1000 or None,
            until=request.until_ms / 1000 or None,
            bucket_s=request.bucket_s,
        )
        return _admin.MetricsHistoryResponse(points=[convert.metric_point_to_pb(p) for p in points])

    @edge
    async def Recommend(
        self, request: _admin.RecommendRequest, context: Context
    ) -> _admin.RecommendResponse:
        recommendations = await self._service.recommend(
            request.pool,
            target_wait_s=request.target_wait_s or DEFAULT_TARGET_WAIT_S,
            horizon_s=request.horizon_s or DEFAULT_HORIZON_S,
        )
        return _admin.RecommendResponse(
            pools=[convert.recommendation_to_pb(r) for r in recommendations]
        )
