"""Authentication and authorization of every RPC: one policy table, one interceptor.

`POLICY` says, for each method of each service the broker serves, which roles may call
it (any one of them), and how the caller's pools limit it (`scope`). `AuthInterceptor`
enforces it on every call, the worker stream included:

- who: a bearer token (`authorization: Bearer <secret>` metadata), else a client
  certificate whose subject the tokens file knows; neither is UNAUTHENTICATED;
- may they: a role of the method's rule, and its pools (a pool outside them is
  PERMISSION_DENIED; a task in one is NOT_FOUND, word for word what a task that does not
  exist gets, so a caller learns nothing of what it may not see);
- how much: concurrent calls, connections and workers per identity (RESOURCE_EXHAUSTED).

With `auth = "none"` every caller is an admin, as before; the identity is then a client
certificate's subject if there is one (and without mutual TLS, the broker's own services
are not wrapped at all). A token that is revoked is refused from then on,
and the streams it has open are ended (UNAUTHENTICATED).

The caller of the running call is `current_principal()`: the identity that rate limits,
the config audit and logs use (broker.server.parsing.client_identity).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from opentelemetry import trace

from broker.auth import ADMIN, READ, ROLES, SUBMIT, WORKER, Principal, TokenRegistry
from broker.config import BrokerConfig
from broker.domain import DEFAULT_POOL
from broker.errors import BrokerError

_log = logging.getLogger("taskbroker.auth")

AUTHORIZATION_KEY: Final = "authorization"
_BEARER: Final = "bearer "
ANY_ROLE: Final[tuple[str, ...]] = ()  # any authenticated caller
OPEN: Final = None  # no credentials needed

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "taskbroker_principal", default=None
)
OPEN_ACCESS: Final = Principal("", frozenset(ROLES), kind="open")


def current_principal() -> Principal | None:
    """The authenticated caller of the running call, if the broker authenticated one."""
    return _principal.get()


class Denied(Exception):
    """A call refused: its status code and the message the caller sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the policy table -------------------------------------------------------------------

TaskLookup = Callable[[str], Awaitable[tuple[str, str] | None]]
"""The pool and submitter of a task (by its id as sent), or None if it cannot be told (no
such task, a malformed id): the handler then answers as it would for anyone."""

Scope = Callable[[Principal, Any, TaskLookup], Awaitable[None]]
"""Raises Denied unless the caller's pools allow this request."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method: `roles` (any one; () = any authenticated caller; None =
    anyone, without credentials), and `scope`, which checks the request against the
    caller's pools and, for a caller who may touch only its own tasks, their submitter. A
    method without a scope needs a caller that is not limited to pools (unless roles is
    None or `unscoped_ok`)."""

    roles: tuple[str, ...] | None
    scope: Scope | None = None
    unscoped_ok: bool = False  # a pool-limited caller may call it without a scope check
    # The answer, cut to what the caller may see (its pools, its own tasks).
    cut: Callable[[Principal, Any], Any] | None = None


def _pool(name: str) -> str:
    return name or DEFAULT_POOL


def _check_pool(principal: Principal, pool: str) -> None:
    if not principal.may_use(_pool(pool)):
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"not allowed to use pool {_pool(pool)!r}")


async def _spec_pool(principal: Principal, request: Any, _: TaskLookup) -> None:
    if principal.pools:
        _check_pool(principal, request.task.pool)


async def _specs_pools(principal: Principal, request: Any, _: TaskLookup) -> None:
    if principal.pools:
        for spec in request.tasks:
            _check_pool(principal, spec.pool)


async def _stream_pools(principal: Principal, request: Any, lookup: TaskLookup) -> None:
    await _specs_pools(principal, request, lookup)
    for task_id in request.watch_task_ids:
        await _task_in_scope(principal, task_id, lookup, own=not principal.has(READ))


async def _request_pool(principal: Principal, request: Any, _: TaskLookup) -> None:
    if not principal.pools:
        return
    if not request.pool:  # every pool: more than a limited caller may see
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, "name a pool you are allowed to use")
    _check_pool(principal, request.pool)


async def _register_pool(principal: Principal, request: Any, _: TaskLookup) -> None:
    if principal.pools and request.WhichOneof("kind") == "register":
        _check_pool(principal, request.register.pool)


async def _task_in_scope(
    principal: Principal, task_id: str, lookup: TaskLookup, *, own: bool
) -> None:
    """NOT_FOUND, as for a task that does not exist, for a task outside the caller's pools
    or, with `own`, one it did not submit."""
    if not principal.pools and not own:
        return
    found = await lookup(task_id)
    if found is None:
        return  # the handler answers, as it would for anyone
    pool, submitter = found
    if not principal.may_use(pool) or (own and submitter != principal.name):
        # What a task that does not exist gets (broker.runtime.engine), word for word.
        raise Denied(grpc.StatusCode.NOT_FOUND, f"task {task_id} does not exist")


async def _read_one(principal: Principal, request: Any, lookup: TaskLookup) -> None:
    await _task_in_scope(principal, request.task_id, lookup, own=not principal.has(READ))


async def _read_many(principal: Principal, request: Any, lookup: TaskLookup) -> None:
    for task_id in request.task_ids:
        await _task_in_scope(principal, task_id, lookup, own=not principal.has(READ))


async def _cancel_one(principal: Principal, request: Any, lookup: TaskLookup) -> None:
    await _task_in_scope(principal, request.task_id, lookup, own=not principal.has(ADMIN))


async def _scaled_object_pool(principal: Principal, request: Any, _: TaskLookup) -> None:
    """KEDA's calls name the pool in the ScaledObject's metadata."""
    if not principal.pools:
        return
    ref = request.scaledObjectRef if request.HasField("scaledObjectRef") else request
    _check_pool(principal, ref.scalerMetadata.get("pool", ""))


def _own_pools(principal: Principal, response: Any) -> Any:
    if principal.pools:
        kept = [pool for pool in response.pools if principal.may_use(pool.name)]
        del response.pools[:]
        response.pools.extend(kept)
    return response


def _own_tasks(principal: Principal, response: Any) -> Any:
    if not principal.has(READ):  # a submitter lists the tasks it submitted
        kept = [task for task in response.tasks if task.submitter == principal.name]
        del response.tasks[:]
        response.tasks.extend(kept)
    return response


_TASKS = "taskbroker.v1.TaskService"
_WORKERS = "taskbroker.v1.WorkerService"
_ADMIN = "taskbroker.v1.AdminService"
_AUTH = "taskbroker.v1.AuthService"
_KEDA = "externalscaler.ExternalScaler"
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_FOREIGN = frozenset({_HEALTH, _REFLECTION, _REFLECTION_V1})
_READERS = (READ, SUBMIT)  # a submitter reads the tasks of its pools

POLICY: Final[Mapping[tuple[str, str], Rule]] = {
    (_TASKS, "Submit"): Rule((SUBMIT,), _spec_pool),
    (_TASKS, "SubmitBatch"): Rule((SUBMIT,), _specs_pools),
    (_TASKS, "SubmitStream"): Rule((SUBMIT,), _stream_pools),
    (_TASKS, "Get"): Rule(_READERS, _read_one),
    (_TASKS, "Wait"): Rule(_READERS, _read_many),
    (_TASKS, "List"): Rule(_READERS, _request_pool, cut=_own_tasks),
    (_TASKS, "Cancel"): Rule((SUBMIT,), _cancel_one),  # its own tasks; an admin's: any
    (_TASKS, "Retry"): Rule((ADMIN,)),
    (_WORKERS, "Connect"): Rule((WORKER,), _register_pool),
    (_ADMIN, "ListPools"): Rule((READ,), unscoped_ok=True, cut=_own_pools),
    (_ADMIN, "CreatePool"): Rule((ADMIN,)),
    (_ADMIN, "UpdatePool"): Rule((ADMIN,)),
    (_ADMIN, "ListWorkers"): Rule((READ,), _request_pool),
    (_ADMIN, "DrainWorker"): Rule((ADMIN,)),
    (_ADMIN, "CordonWorker"): Rule((ADMIN,)),
    (_ADMIN, "Stats"): Rule((READ,)),
    (_ADMIN, "MetricsHistory"): Rule((READ,), _request_pool),
    (_ADMIN, "Recommend"): Rule((READ,), _request_pool),
    (_ADMIN, "ReloadConfig"): Rule((ADMIN,)),
    (_ADMIN, "ConfigHistory"): Rule((READ,), _request_pool),
    (_ADMIN, "PurgeTasks"): Rule((ADMIN,)),
    (_AUTH, "CreateToken"): Rule((ADMIN,)),
    (_AUTH, "ListTokens"): Rule((ADMIN,)),
    (_AUTH, "RevokeToken"): Rule((ADMIN,)),
    (_AUTH, "WhoAmI"): Rule(ANY_ROLE, unscoped_ok=True),
    # KEDA's external scaler reads what `pools recommend` reads (KEDA authenticates with a
    # client certificate: give its subject the read role in the tokens file).
    (_KEDA, "IsActive"): Rule((READ,), _scaled_object_pool),
    (_KEDA, "StreamIsActive"): Rule((READ,), _scaled_object_pool),
    (_KEDA, "GetMetricSpec"): Rule((READ,), _scaled_object_pool),
    (_KEDA, "GetMetrics"): Rule((READ,), _scaled_object_pool),
    (_KEDA, "StreamMetricSpec"): Rule((READ,), _scaled_object_pool),
    (_HEALTH, "Check"): Rule(OPEN),
    (_HEALTH, "Watch"): Rule(OPEN),
    (_HEALTH, "List"): Rule(OPEN),
    (_REFLECTION, "ServerReflectionInfo"): Rule((ADMIN,)),
    (_REFLECTION_V1, "ServerReflectionInfo"): Rule((ADMIN,)),
}


def authorize(rule: Rule, principal: Principal) -> None:
    """Raise Denied unless the caller holds a role of the rule, and, when it is limited
    to pools, the rule can check those (its request is checked by `rule.scope`)."""
    if rule.roles is None:
        return
    if rule.roles and not any(principal.has(role) for role in rule.roles):
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.name or 'the caller'} has no role that may do this"
            f" (needs {' or '.join(rule.roles)})",
        )
    if principal.pools and rule.scope is None and not rule.unscoped_ok:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, "not allowed to a caller limited to pools")


# -- the interceptor ---------------------------------------------------------------------


class _Limits:
    """Calls, connections and workers in flight per identity."""

    def __init__(self, config: BrokerConfig) -> None:
        self.max_calls = config.max_streams_per_identity
        self.max_connections = config.max_connections_per_identity
        self.max_workers = config.max_workers_per_identity
        self.calls: dict[str, int] = {}
        self.peers: dict[str, dict[str, int]] = {}  # identity -> peer -> calls
        self.workers: dict[str, int] = {}

    def enter(self, name: str, peer: str, worker: bool) -> None:
        calls = self.calls.get(name, 0)
        if self.max_calls and calls >= self.max_calls:
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name} has {calls} calls open: max_streams_per_identity",
            )
        peers = self.peers.setdefault(name, {})
        if self.max_connections and peer not in peers and len(peers) >= self.max_connections:
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name} has {len(peers)} connections busy: max_connections_per_identity",
            )
        workers = self.workers.get(name, 0)
        if worker and self.max_workers and workers >= self.max_workers:
            raise Denied(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name} has {workers} workers connected: max_workers_per_identity",
            )
        self.calls[name] = calls + 1
        peers[peer] = peers.get(peer, 0) + 1
        if worker:
            self.workers[name] = workers + 1

    def leave(self, name: str, peer: str, worker: bool) -> None:
        _drop(self.calls, name)
        peers = self.peers.get(name, {})
        _drop(peers, peer)
        if not peers:
            self.peers.pop(name, None)
        if worker:
            _drop(self.workers, name)


def _drop(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


_Behavior = Callable[..., Any]
_KINDS: Final = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call, authorizes it by `POLICY`, counts it against the
    caller's limits; see the module docstring."""

    def __init__(self, config: BrokerConfig, registry: TokenRegistry) -> None:
        self._required = config.auth != "none"
        # Nothing to authenticate, authorize or count: the broker's own services go
        # through untouched (every wrapper costs each call and each stream message).
        self._open = not self._required and not config.tls_client_ca_file
        self._registry = registry
        self._limits = _Limits(config)
        self._lookup: TaskLookup = _no_lookup

    def set_task_lookup(self, lookup: TaskLookup) -> None:
        """How the pool of a task is found, once the broker's service exists."""
        self._lookup = lookup

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # UNIMPLEMENTED, as gRPC answers it
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if self._open and service not in _FOREIGN:
            return handler
        rule = POLICY.get((service, method))
        secret = _bearer(handler_call_details.invocation_metadata or ())
        call = _AuthCall(
            self, rule, secret, f"{service}/{method}", method == "Connect" and service == _WORKERS
        )
        deserializer = handler.request_deserializer
        if service in _FOREIGN and deserializer is not None:
            # Not parsed tolerantly (broker.server.parsing): bad bytes would be UNKNOWN.
            deserializer = _marking_unparsable(deserializer)
        for attribute, make in _KINDS:
            behavior: _Behavior | None = getattr(handler, attribute)
            if behavior is None:
                continue
            streaming_in = attribute.startswith("stream_")
            if inspect.isasyncgenfunction(behavior):
                guarded: _Behavior = call.wrap_generator(behavior, streaming_in)
            else:
                guarded = call.wrap_coroutine(behavior, streaming_in)
            return make(
                guarded,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def principal(
        self, secret: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        """Who is calling; Denied (UNAUTHENTICATED) if authentication is on and the
        credentials are missing or unknown."""
        names = _certificate_names(context)
        if not self._required:
            if names:
                return Principal(names[0], frozenset(ROLES), kind="certificate")
            return OPEN_ACCESS
        if secret is not None:
            principal = self._registry.authenticate(secret)
            if principal is None:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid")
            return principal
        if names:
            known = self._registry.certificate(names)
            if known is not None:
                return known
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client certificate {names[0]!r} is not known to the broker",
            )
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "credentials required: a bearer token or a client certificate",
        )


class _Unparsable:
    """A request of a service the broker does not parse itself, whose bytes were bad."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def denied(self) -> Denied:
        return Denied(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {self.reason}")


def _marking_unparsable(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Unparsable(str(exc))

    return parse_or_mark


async def _no_lookup(_task_id: str) -> tuple[str, str] | None:
    return None


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The bearer secret of the call's metadata ("" if malformed), None if it has none."""
    for key, value in metadata:
        if key == AUTHORIZATION_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip()
            return ""
    return None


def _certificate_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """A verified client certificate's names: its SANs, then its subject's common name."""
    auth = context.auth_context()
    names = [n.decode(errors="replace") for n in auth.get("x509_subject_alternative_name", ())]
    names += [n.decode(errors="replace") for n in auth.get("x509_common_name", ()) if n]
    return names


class _AuthCall:
    """One call on its way in: whose it is, whether it may, and its limits' accounting."""

    __slots__ = ("_name", "_rule", "_secret", "_server", "_worker")

    def __init__(
        self,
        server: AuthInterceptor,
        rule: Rule | None,
        secret: str | None,
        name: str,
        worker: bool,
    ) -> None:
        self._server = server
        self._name = name
        self._rule = rule
        self._secret = secret
        self._worker = worker

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self._rule is None:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, "this method has no access policy")
        if self._rule.roles is None:
            return OPEN_ACCESS
        principal = self._server.principal(self._secret, context)
        authorize(self._rule, principal)
        return principal

    def wrap_coroutine(self, behavior: _Behavior, streaming_in: bool) -> _Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with _Guard(self, context) as guard:
                await guard.start(request, streaming_in)
                try:
                    response = await behavior(guard.requests(request, streaming_in), context)
                except asyncio.CancelledError:
                    await guard.cancelled()
                    raise
                return guard.cut(response)

        return guarded

    def wrap_generator(self, behavior: _Behavior, streaming_in: bool) -> _Behavior:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with _Guard(self, context) as guard:
                await guard.start(request, streaming_in)
                try:
                    async for response in behavior(guard.requests(request, streaming_in), context):
                        yield response
                except asyncio.CancelledError:
                    await guard.cancelled()
                    raise

        return guarded


class _Guard:
    """The running call's admission: aborts with the status of a Denied, keeps the
    principal current, watches its token for revocation."""

    def __init__(self, call: _AuthCall, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._call = call
        self._context = context
        self._principal: Principal | None = None
        self._counted = False
        self._peer = ""
        self._unwatch: Callable[[], None] | None = None
        self._task = asyncio.current_task()
        self._stopped: Denied | None = None  # why the call was ended from outside
        self._first: Any = None
        self._peeked = False

    def __enter__(self) -> _Guard:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._unwatch is not None:
            self._unwatch()
        principal = self._principal
        if self._counted and principal is not None:
            self._call._server._limits.leave(principal.name, self._peer, self._call._worker)

    async def start(self, request: Any, streaming_in: bool) -> None:
        context = self._context
        try:
            principal = self._call._admit(context)
            self._principal = principal
            _principal.set(principal)  # the call's own task: no need to reset it
            if principal.kind != "open":
                span = trace.get_current_span()
                if span.is_recording():
                    span.set_attribute("enduser.id", principal.name)
                self._peer = context.peer() or ""
                self._call._server._limits.enter(principal.name, self._peer, self._call._worker)
                self._counted = True
            if principal.token:
                self._unwatch = self._call._server._registry.watch(principal.token, self._revoked)
            if isinstance(request, _Unparsable):
                raise request.denied()
            rule = self._call._rule
            if principal.kind != "open" and rule is not None and rule.scope is not None:
                if not streaming_in:
                    await self._scope(request)
                elif self._call._worker and principal.pools:  # registers: check it now
                    try:
                        self._first = await anext(aiter(request))
                        self._peeked = True
                    except StopAsyncIteration:
                        return
                    await self._scope(self._first)
        except Denied as denied:
            await self._deny(denied)

    async def _scope(self, request: Any) -> None:
        rule = self._call._rule
        principal = self._principal
        if rule is None or rule.scope is None or principal is None:
            return
        if not hasattr(request, "DESCRIPTOR"):
            return  # malformed: the handler says so
        await rule.scope(principal, request, self._call._server._lookup)

    def requests(self, request: Any, streaming_in: bool) -> Any:
        if not streaming_in:
            return request
        principal = self._principal
        needs_scope = principal is not None and (
            bool(principal.pools) or (principal.kind != "open" and not principal.has(READ))
        )
        foreign = self._call._name.rpartition("/")[0] in _FOREIGN
        if not self._peeked and not needs_scope and not foreign:
            return request
        return self._checked(request, needs_scope)

    async def _checked(self, requests: Any, needs_scope: bool) -> AsyncIterator[Any]:
        if self._peeked:
            yield self._first
            self._first = None
        async for request in requests:
            if isinstance(request, _Unparsable):
                self._stop(request.denied())
                return
            if needs_scope:
                try:
                    await self._scope(request)
                except Denied as denied:
                    self._stop(denied)
                    return
            yield request

    def cut(self, response: Any) -> Any:
        rule = self._call._rule
        principal = self._principal
        if rule is None or rule.cut is None or principal is None or principal.kind == "open":
            return response
        return rule.cut(principal, response)

    def _revoked(self) -> None:
        self._stop(Denied(grpc.StatusCode.UNAUTHENTICATED, "the token was revoked"))

    def _stop(self, denied: Denied) -> None:
        """End the call from outside its handler (a revocation, a denied message)."""
        if self._stopped is None and self._task is not None:
            self._stopped = denied
            self._task.cancel()

    async def cancelled(self) -> None:
        """The call's task was cancelled: if we did it, answer why."""
        if self._stopped is not None and self._task is not None:
            self._task.uncancel()
            await self._deny(self._stopped)

    async def _deny(self, denied: Denied) -> None:
        principal = self._principal
        _log.info(
            "%s refused for %s: %s",
            self._call._name,
            principal.name if principal is not None and principal.name else "an anonymous caller",
            denied,
        )
        await self._context.abort(denied.code, str(denied))


async def task_owner(
    lookup: Callable[[int], Awaitable[Any]], task_id: str
) -> tuple[str, str] | None:
    """The pool and submitter of the task with id `task_id`, via `lookup`
    (BrokerService.get); None if there is no such task or the id is malformed."""
    if not task_id.isdigit() or len(task_id) > 19:
        return None
    try:
        task = await lookup(int(task_id))
    except BrokerError:
        return None
    return str(task.spec.pool), str(task.spec.submitter)
