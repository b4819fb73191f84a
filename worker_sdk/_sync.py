"""SyncClient: the async Client behind blocking methods, on an event loop of its own.

Each blocking method is the Client's coroutine method run to completion on that loop: the
same arguments, defaults and docs (help() and inspect show them), and mypy checks them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from worker_sdk._channel import TLSSetting, Token
from worker_sdk._client import Client
from worker_sdk._types import DEFAULT_ADDRESS

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _blocking(
    method: Callable[Concatenate[Client, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SyncClient, _P], _T]:
    """`Client.method` as a blocking method of SyncClient."""

    @functools.wraps(method)
    def blocking(self: SyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._run(method(self._client, *args, **kwargs))

    blocking.__qualname__ = f"SyncClient.{method.__name__}"
    return blocking


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _refuse_in_event_loop() -> None:
    """A clear error in place of asyncio's, for a SyncClient called from a running loop."""
    if _in_event_loop():
        raise RuntimeError(
            "SyncClient cannot be used inside a running event loop (in an async function, "
            "or in Jupyter): use worker_sdk.Client there, with `await client.submit(...)`"
        )


class SyncClient:
    """A blocking client for scripts and threads without an event loop.

    It keeps one event loop (an asyncio.Runner) for its whole life, so the channel and the
    submit stream are reused across calls. Not for use from inside a running event loop
    (an async function, Jupyter): its calls raise RuntimeError there; use `Client`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        batch_size: int = 500,
        client_id: str | None = None,
        max_submit_retries: int = 5,
        max_submit_backoff_s: float = 10.0,
        tls: TLSSetting = None,
        token: str | Token | None = None,
    ) -> None:
        """The arguments are `Client`'s."""
        self._client = Client(
            address,
            batch_size=batch_size,
            client_id=client_id,
            max_submit_retries=max_submit_retries,
            max_submit_backoff_s=max_submit_backoff_s,
            tls=tls,
            token=token,
        )
        self._runner = asyncio.Runner()
        self._started = False  # whether the runner has run anything (and has a loop)
        self._closed = False

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def client_id(self) -> str:
        """The identity this client sends with every call (`x-taskbroker-client`)."""
        return self._client.client_id

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and its event loop. Idempotent."""
        if self._closed:
            return
        if not self._started and _in_event_loop():
            # Every call was refused (see _run): there is no loop or channel to close,
            # and leaving a `with` block must not hide the error that explained why.
            self._closed = True
            self._runner.close()
            return
        _refuse_in_event_loop()
        self._closed = True
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        try:
            _refuse_in_event_loop()
        except RuntimeError:
            coro.close()
            raise
        self._started = True
        return self._runner.run(coro)

    submit = _blocking(Client.submit)
    submit_many = _blocking(Client.submit_many)
    get = _blocking(Client.get)
    run = _blocking(Client.run)
    wait = _blocking(Client.wait)
    wait_many = _blocking(Client.wait_many)
    result = _blocking(Client.result)
    cancel = _blocking(Client.cancel)
    retry = _blocking(Client.retry)
    list_tasks = _blocking(Client.list_tasks)
    list_pools = _blocking(Client.list_pools)
    create_pool = _blocking(Client.create_pool)
    update_pool = _blocking(Client.update_pool)
    list_workers = _blocking(Client.list_workers)
    drain_worker = _blocking(Client.drain_worker)
    cordon_worker = _blocking(Client.cordon_worker)
    uncordon_worker = _blocking(Client.uncordon_worker)
    stats = _blocking(Client.stats)
    metrics_history = _blocking(Client.metrics_history)
    recommend = _blocking(Client.recommend)
    reload_config = _blocking(Client.reload_config)
    config_history = _blocking(Client.config_history)
    purge_tasks = _blocking(Client.purge_tasks)
    create_token = _blocking(Client.create_token)
    list_tokens = _blocking(Client.list_tokens)
    revoke_token = _blocking(Client.revoke_token)
    whoami = _blocking(Client.whoami)
