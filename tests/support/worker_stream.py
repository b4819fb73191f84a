"""A worker stream driven message by message, as a worker written from the .proto files
alone would drive it: for tests of the wire contract against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

READ_TIMEOUT_S = 10.0


class RawWorker:
    """One Connect call: `send` queues a message, `read` takes the broker's next one."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outbox: asyncio.Queue[_worker.WorkerMessage | None] = asyncio.Queue()
        self.call = _worker_grpc.WorkerServiceStub(channel).Connect(self._requests())

    async def _requests(self) -> AsyncIterator[_worker.WorkerMessage]:
        while (message := await self._outbox.get()) is not None:
            yield message

    def send(self, message: _worker.WorkerMessage) -> None:
        self._outbox.put_nowait(message)

    def close(self) -> None:
        """Half-close: the worker has nothing more to say."""
        self._outbox.put_nowait(None)

    async def register(self, **fields: object) -> _worker.RegisterAck:
        values: dict[str, object] = {"pool": "default", "capacity": 1, "task_types": ["t"]}
        values.update(fields)
        self.send(_worker.WorkerMessage(register=_worker.Register(**values)))  # type: ignore[arg-type]
        message = await self.read()
        assert message.WhichOneof("kind") == "register_ack", message
        return message.register_ack

    async def read(self) -> _worker.BrokerMessage:
        """The broker's next message; AssertionError if the stream ended instead."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            message = await self.call.read()
        assert isinstance(message, _worker.BrokerMessage), "the broker ended the stream"
        return message

    async def next_of(self, kind: str) -> _worker.BrokerMessage:
        """The broker's next message of this kind, skipping others."""
        while True:
            message = await self.read()
            if message.WhichOneof("kind") == kind:
                return message

    async def ended(self) -> grpc.StatusCode:
        """Read to the end of the stream (skipping what comes first); its status code."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            try:
                while isinstance(await self.call.read(), _worker.BrokerMessage):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            code = await self.call.code()
        return code

    async def assignment(self) -> _worker.Assignment:
        message = await self.next_of("assignments")
        (assignment,) = message.assignments.assignments
        return assignment

    def result(self, assignment: _worker.Assignment, **fields: object) -> None:
        values: dict[str, object] = {
            "task_id": assignment.task_id,
            "attempt": assignment.attempt,
            "success": True,
        }
        values.update(fields)
        self.send(
            _worker.WorkerMessage(
                results=_worker.Results(results=[_worker.TaskResult(**values)])  # type: ignore[arg-type]
            )
        )

    def heartbeat(self, *held: str, seen: int = 0) -> None:
        self.send(
            _worker.WorkerMessage(
                heartbeat=_worker.Heartbeat(
                    in_flight=len(held), held_task_ids=held, assignments_seen=seen
                )
            )
        )
