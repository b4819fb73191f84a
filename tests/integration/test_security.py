"""Security over real TLS on loopback: certificates the tests make (trustme), tokens with
roles and pools, the one policy table, revocation, identity in limits and the audit."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from broker import Broker
from broker.auth import ROLES, digest
from broker.domain import PoolConfig
from broker.errors import BrokerError
from broker.server.auth import POLICY
from broker.server.grpc_server import SERVICE_NAMES
from tests.support.config import make_config
from tests.support.pki import Pki, issue_server_cert, make_pki
from worker_sdk import (
    TLS,
    Client,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    TaskContext,
    Unauthenticated,
    Unavailable,
    Worker,
)
from worker_sdk._channel import open_blocking_channel, open_channel
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

ADMIN_SECRET = "tbk_test-admin-secret"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def tokens_file(tmp_path: Path, certificates: str = "") -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f"""
[[tokens]]
name = "ops"
roles = ["admin"]
sha256 = "{digest(ADMIN_SECRET)}"
{certificates}
"""
    )
    return path


def secure_config(tmp_path: Path, pki: Pki, **overrides: object) -> Any:
    values: dict[str, object] = {
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        "auth": "token",
    }
    values.update(overrides)
    if "tokens_file" not in values:
        values["tokens_file"] = str(tokens_file(tmp_path))
    return make_config(tmp_path, **values)


@pytest.fixture
async def broker(tmp_path: Path, pki: Pki) -> AsyncIterator[Broker]:
    async with Broker(secure_config(tmp_path, pki)) as running:
        yield running


@pytest.fixture
async def admin(broker: Broker, pki: Pki) -> AsyncIterator[Client]:
    async with Client(broker.address, tls=pki.trust(), token=ADMIN_SECRET) as client:
        yield client


async def health(address: str, tls: TLS | None, wait_s: float = 5.0) -> str:
    async with open_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=wait_s)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# -- TLS and mutual TLS ------------------------------------------------------------------


async def test_a_tls_client_reaches_the_broker_and_health_needs_no_token(
    broker: Broker, pki: Pki
) -> None:
    assert await health(broker.address, pki.trust()) == "SERVING"


async def test_a_plaintext_client_is_refused_by_a_tls_broker(broker: Broker) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health(broker.address, None, wait_s=2.0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "stranger")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health(broker.address, stranger.trust(), wait_s=2.0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def mtls_broker(tmp_path: Path, pki: Pki) -> AsyncIterator[Broker]:
    path = tokens_file(
        tmp_path,
        """
[[certificates]]
subject = "worker-1.example"
roles = ["worker", "read"]
pools = ["other"]
""",
    )
    config = secure_config(
        tmp_path, pki, tls_client_ca_file=str(pki.ca_file), tokens_file=str(path)
    )
    async with Broker(config) as running:
        yield running


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_broker: Broker, pki: Pki
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health(mtls_broker.address, pki.trust(), wait_s=2.0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_of_another_ca(
    mtls_broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path / "stranger").client("worker-1.example")
    tls = TLS(ca_file=str(pki.ca_file), cert_file=stranger.cert_file, key_file=stranger.key_file)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health(mtls_broker.address, tls, wait_s=2.0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_is_the_callers_identity(mtls_broker: Broker, pki: Pki) -> None:
    async with Client(mtls_broker.address, tls=pki.client("worker-1.example")) as client:
        me = await client.whoami()
        assert (me.name, me.kind, me.roles, me.pools) == (
            "worker-1.example",
            "certificate",
            ("read", "worker"),
            ("other",),
        )
        assert [p.name for p in await client.list_pools()] == ["other"]  # its pools only
        with pytest.raises(PermissionDenied):
            await client.submit("x", pool="other")
    # A certificate the tokens file does not know gets nothing.
    async with Client(mtls_broker.address, tls=pki.client("nobody.example")) as client:
        with pytest.raises(Unauthenticated, match=r"nobody\.example"):
            await client.whoami()


@pytest.mark.parametrize("how", ["config reload", "SIGHUP"])
async def test_certificates_are_reloaded_without_dropping_connections(
    tmp_path: Path, pki: Pki, how: str
) -> None:
    config_file = tmp_path / "broker.toml"
    config_file.write_text("[pools.default]\n")
    async with (
        Broker(secure_config(tmp_path, pki), config_path=config_file) as broker,
        Client(broker.address, tls=pki.trust(), token=ADMIN_SECRET) as old,
    ):
        await old.list_pools()  # its connection is open
        # Rotate to a certificate of a new CA, then reload.
        rotated = make_pki(tmp_path / "rotated")
        issue_server_cert(rotated, into=pki.folder)
        if how == "config reload":
            await old.reload_config()
        else:  # what `taskbroker serve` does on SIGHUP
            await broker.reload_config(who="sighup")
        assert await health(broker.address, rotated.trust()) == "SERVING"
        with pytest.raises(grpc.aio.AioRpcError):
            await health(broker.address, pki.trust(), wait_s=2.0)  # a new connection
        await old.list_pools()  # the connection made before the reload still works


# -- plaintext beyond loopback ---------------------------------------------------------------


async def test_plaintext_beyond_loopback_needs_allow_insecure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(BrokerError, match="without TLS"):
        await Broker(make_config(tmp_path, host="0.0.0.0")).start()
    with caplog.at_level(logging.WARNING, logger="taskbroker.security"):
        async with Broker(make_config(tmp_path, host="0.0.0.0", allow_insecure=True)):
            pass
    assert any("plaintext" in r.getMessage() for r in caplog.records)


async def test_plaintext_on_loopback_needs_nothing(tmp_path: Path) -> None:
    async with Broker(make_config(tmp_path)) as running, Client(running.address) as client:
        assert (await client.whoami()).kind == "open"


# -- the policy table ---------------------------------------------------------------------


def every_rpc() -> list[tuple[str, str, bool, bool]]:
    """(service, method, client_streaming, server_streaming) of every RPC the broker
    serves, from the service descriptors."""
    from google.protobuf import descriptor_pool
    from grpc_health.v1 import health_pb2 as _health  # noqa: F401  (registers it)

    pool = descriptor_pool.Default()
    names = (*SERVICE_NAMES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
    assert reflection_pb2.DESCRIPTOR is not None
    rpcs = []
    for name in names:
        service = pool.FindServiceByName(name)
        for method in service.methods:
            rpcs.append((name, method.name, method.client_streaming, method.server_streaming))
    return rpcs


def test_every_rpc_has_a_policy_entry() -> None:
    missing = [f"{s}/{m}" for s, m, _, _ in every_rpc() if (s, m) not in POLICY]
    assert missing == []


_SUBMIT = {
    "TaskService/Submit",
    "TaskService/SubmitBatch",
    "TaskService/SubmitStream",
    "TaskService/Get",
    "TaskService/Wait",
    "TaskService/List",
    "TaskService/Cancel",
    "AuthService/WhoAmI",
}
_READ = {
    "TaskService/Get",
    "TaskService/Wait",
    "TaskService/List",
    "AdminService/ListPools",
    "AdminService/ListWorkers",
    "AdminService/Stats",
    "AdminService/MetricsHistory",
    "AdminService/Recommend",
    "AdminService/ConfigHistory",
    "AuthService/WhoAmI",
    "ExternalScaler/IsActive",
    "ExternalScaler/StreamIsActive",
    "ExternalScaler/GetMetricSpec",
    "ExternalScaler/GetMetrics",
    "ExternalScaler/StreamMetricSpec",
}
_OPEN = {"Health/Check", "Health/Watch", "Health/List"}


def short(service: str, method: str) -> str:
    return f"{service.rpartition('.')[2]}/{method}"


# The methods each role may call: what the README's roles table says.
ALLOWED: dict[str, set[str]] = {
    "submit": _SUBMIT | _OPEN,
    "read": _READ | _OPEN,
    "worker": {"WorkerService/Connect", "AuthService/WhoAmI"} | _OPEN,
    "admin": {short(s, m) for s, m, _, _ in every_rpc()},
    "anonymous": _OPEN,
}
_DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _ident(data: bytes) -> bytes:
    return data


def blocking_stream_status(
    channel: grpc.Channel, rpc: tuple[str, str, bool, bool], body: bytes
) -> grpc.StatusCode:
    """As call_status, for a client-streaming RPC, on a blocking channel: an asyncio
    client that writes after the server has answered reports INTERNAL instead of the
    server's status (grpc/grpc#36066); the blocking API reports the server's."""
    service, method, _, server_streaming = rpc
    path = f"/{service}/{method}"
    try:
        if server_streaming:
            for _ in channel.stream_stream(path, _ident, _ident)(iter([body]), timeout=5):
                pass
        else:
            channel.stream_unary(path, _ident, _ident)(iter([body]), timeout=5)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        if isinstance(exc, grpc.Call):
            DETAILS[path] = exc.details() or ""
        return code
    return grpc.StatusCode.OK


async def call_status(
    channel: grpc.aio.Channel,
    rpc: tuple[str, str, bool, bool],
    body: bytes = b"",
    blocking: grpc.Channel | None = None,
) -> grpc.StatusCode:
    """The status of calling the RPC with one message of `body` (none on a stream, unless
    a `blocking` channel is given to send it on)."""
    service, method, client_streaming, server_streaming = rpc
    path = f"/{service}/{method}"
    if client_streaming and body and blocking is not None:
        return await asyncio.to_thread(blocking_stream_status, blocking, rpc, body)
    ident = _ident
    try:
        if not client_streaming and not server_streaming:
            await channel.unary_unary(path, ident, ident)(body, timeout=5)
        elif not client_streaming:
            async for _ in channel.unary_stream(path, ident, ident)(body, timeout=0.5):
                pass
        else:

            async def nothing() -> AsyncIterator[bytes]:
                if body:
                    yield body

            if server_streaming:
                async for _ in channel.stream_stream(path, ident, ident)(nothing(), timeout=5):
                    pass
            else:
                await channel.stream_unary(path, ident, ident)(nothing(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        DETAILS[path] = exc.details() or ""
        return exc.code()
    return grpc.StatusCode.OK


DETAILS: dict[str, str] = {}  # the last details of each method's call, for messages


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
async def test_each_role_may_call_exactly_its_methods(
    broker: Broker, admin: Client, pki: Pki, role: str
) -> None:
    assert set(ALLOWED) == {*ROLES, "anonymous"}
    secret = None
    if role != "anonymous":
        _, secret = await admin.create_token(f"t-{role}", [role])
    async with open_channel(broker.address, tls=pki.trust(), token=secret) as channel:
        for rpc in every_rpc():
            code = await call_status(channel, rpc)
            name = f"{rpc[0]}/{rpc[1]}"
            if short(rpc[0], rpc[1]) in ALLOWED[role]:
                assert code not in _DENIED, f"{role} refused {name}: {code}"
            elif role == "anonymous":
                assert code is grpc.StatusCode.UNAUTHENTICATED, f"{name}: {code}"
            else:
                assert code is grpc.StatusCode.PERMISSION_DENIED, f"{role} {name}: {code}"


async def test_a_bad_token_is_unauthenticated_and_never_echoed(
    broker: Broker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tbk_not-a-token-the-broker-knows"
    with caplog.at_level(logging.DEBUG):
        async with Client(broker.address, tls=pki.trust(), token=secret) as client:
            with pytest.raises(Unauthenticated) as refused:
                await client.list_tasks()
            assert secret not in repr(client.__dict__)
    assert secret not in str(refused.value)
    assert all(secret not in record.getMessage() for record in caplog.records)


# -- pools ----------------------------------------------------------------------------------


async def register(stub: _worker_grpc.WorkerServiceStub, token: str, pool: str) -> Any:
    """A worker stream of `token`, its registration in `pool` sent."""
    call: Any = stub.Connect(metadata=(("authorization", f"Bearer {token}"),))  # type: ignore[call-arg]
    await call.write(
        _worker.WorkerMessage(
            register=_worker.Register(pool=pool, capacity=1, task_types=["x"], sdk_version="t")
        )
    )
    return call


@pytest.fixture
async def tls_channel(broker: Broker, pki: Pki) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(broker.address, tls=pki.trust()) as channel:
        yield channel


async def test_a_pool_scoped_worker_token_cannot_register_in_another_pool(
    admin: Client, tls_channel: grpc.aio.Channel
) -> None:
    _, secret = await admin.create_token("gpu-workers", ["worker"], ["other"])
    stub = _worker_grpc.WorkerServiceStub(tls_channel)
    call = await register(stub, secret, "default")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "pool 'default'" in (refused.value.details() or "")
    allowed = await register(stub, secret, "other")
    ack = await allowed.read()
    assert ack.WhichOneof("kind") == "register_ack"
    allowed.cancel()


async def test_a_pool_scoped_submit_token_submits_and_reads_only_in_its_pools(
    broker: Broker, admin: Client, pki: Pki
) -> None:
    elsewhere = await admin.submit("x", pool="default")
    _, secret = await admin.create_token("tenant-a", ["submit"], ["other"])
    async with Client(broker.address, tls=pki.trust(), token=secret) as tenant:
        mine = await tenant.submit("x", pool="other")
        assert (await tenant.get(mine)).pool == "other"
        with pytest.raises(PermissionDenied, match="pool 'default'"):
            await tenant.submit("x", pool="default")
        with pytest.raises(PermissionDenied, match="pool 'nope'"):
            await tenant.submit("x", pool="nope")  # whether it exists is not told
        # A task of another pool reads as one that does not exist, word for word.
        missing = str(int(mine) + 1000)
        for task_id in (elsewhere, missing):
            with pytest.raises(Exception, match=f"^task {task_id} does not exist$") as raised:
                await tenant.get(task_id)
            assert type(raised.value).__name__ == "NotFound"
        with pytest.raises(Exception, match=f"task {elsewhere} does not exist"):
            await tenant.cancel(elsewhere)
        assert (await admin.get(elsewhere)).state.name == "PENDING"  # not cancelled
        assert [t.id for t in await tenant.list_tasks(pool="other")] == [mine]
        with pytest.raises(PermissionDenied):
            await tenant.list_tasks()  # every pool


# -- revocation -----------------------------------------------------------------------------


async def test_a_revoked_token_stops_working_at_once_open_streams_too(
    broker: Broker, admin: Client, pki: Pki, tls_channel: grpc.aio.Channel
) -> None:
    _, secret = await admin.create_token("w1", ["worker", "read"])
    stream = await register(_worker_grpc.WorkerServiceStub(tls_channel), secret, "default")
    assert (await stream.read()).WhichOneof("kind") == "register_ack"
    async with Client(broker.address, tls=pki.trust(), token=secret) as client:
        await client.list_tasks(pool="default")
        assert [t.name for t in await admin.list_tokens() if t.revoked_at is None] == ["ops", "w1"]
        revoked = await admin.revoke_token("w1")
        assert revoked.revoked_at is not None
        with pytest.raises(Unauthenticated):
            await client.list_tasks(pool="default")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await asyncio.wait_for(stream.read(), 5)
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (ended.value.details() or "")
    for _ in range(100):  # the broker lets go of the worker as the stream ends
        if not broker.service.list_workers(""):
            break
        await asyncio.sleep(0.05)
    assert broker.service.list_workers("") == []


async def test_tokens_are_kept_as_hashes_and_survive_a_restart(tmp_path: Path, pki: Pki) -> None:
    config = secure_config(tmp_path, pki)
    async with (
        Broker(config) as first,
        Client(first.address, tls=pki.trust(), token=ADMIN_SECRET) as admin,
    ):
        _, secret = await admin.create_token("ci", ["read"])
    stored = (tmp_path / "broker.db").read_bytes()
    assert secret.encode() not in stored
    assert digest(secret).encode() in stored
    async with (
        Broker(config) as second,
        Client(second.address, tls=pki.trust(), token=secret) as client,
    ):
        assert (await client.whoami()).name == "ci"


# -- identity in rate limits and the audit ------------------------------------------------


async def test_rotating_the_client_header_does_not_escape_the_per_client_limit(
    tmp_path: Path, pki: Pki
) -> None:
    limited = PoolConfig(name="default", client_rate_per_s=0.001, client_rate_burst=1)
    config = dataclasses.replace(secure_config(tmp_path, pki), pools=(limited,))
    async with Broker(config) as running:
        async with Client(running.address, tls=pki.trust(), token=ADMIN_SECRET) as admin:
            _, secret = await admin.create_token("tenant", ["submit"])
        async with open_channel(running.address, tls=pki.trust(), token=secret) as channel:
            stub = _tasks_grpc.TaskServiceStub(channel)
            request = _tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="x"))
            await stub.Submit(request, metadata=(("x-taskbroker-client", "first"),))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Submit(request, metadata=(("x-taskbroker-client", "second"),))
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_audit_records_the_authenticated_identity(broker: Broker, pki: Pki) -> None:
    async with Client(
        broker.address, tls=pki.trust(), token=ADMIN_SECRET, client_id="someone-else"
    ) as admin:
        await admin.create_pool("gpu")
        (change,) = await admin.config_history(pool="gpu")
    assert change.who == "ops"


# -- limits ---------------------------------------------------------------------------------


async def test_calls_and_workers_per_identity_are_limited(tmp_path: Path, pki: Pki) -> None:
    config = secure_config(tmp_path, pki, max_workers_per_identity=1, max_streams_per_identity=3)
    async with Broker(config) as running:
        async with Client(running.address, tls=pki.trust(), token=ADMIN_SECRET) as admin:
            _, secret = await admin.create_token("pool-a", ["worker", "read"])
        async with open_channel(running.address, tls=pki.trust()) as channel:
            stub = _worker_grpc.WorkerServiceStub(channel)
            first = await register(stub, secret, "default")
            assert (await first.read()).WhichOneof("kind") == "register_ack"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                # Refused as the stream opens: the write of the registration may see it.
                second = await register(stub, secret, "default")
                await second.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_workers_per_identity" in (refused.value.details() or "")
            # Calls: the worker stream is one of three; two long waits fill the rest.
            async with Client(running.address, tls=pki.trust(), token=ADMIN_SECRET) as admin:
                task_id = await admin.submit("nobody-runs-this", pool="other")
            tasks_stub = _tasks_grpc.TaskServiceStub(channel)
            auth = (("authorization", f"Bearer {secret}"),)
            request = _tasks.WaitRequest(task_ids=[task_id], timeout_s=60)
            waits = [tasks_stub.Wait(request, metadata=auth) for _ in range(2)]
            async with Client(running.address, tls=pki.trust(), token=secret) as client:
                with pytest.raises(ResourceExhausted, match="max_streams_per_identity"):
                    async with asyncio.timeout(20):  # until the two waits are in flight
                        while True:
                            # A wait that arrived while a list was in flight was refused
                            # itself: send it again.
                            waits = [
                                tasks_stub.Wait(request, metadata=auth) if wait.done() else wait
                                for wait in waits
                            ]
                            await asyncio.sleep(0.02)
                            await client.list_tasks(pool="default")
            for wait in waits:
                wait.cancel()
            first.cancel()


def test_the_server_enforces_keepalive_and_connection_age(tmp_path: Path) -> None:
    from broker.server.grpc_server import server_options

    options = dict(
        server_options(
            make_config(
                tmp_path,
                keepalive_min_ping_s=20,
                max_connection_age_s=600,
                max_connection_age_grace_s=15,
            )
        )
    )
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 20_000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 15_000


# -- reflection, and fuzzing every RPC it lists ------------------------------------------------


@dataclass(frozen=True)
class _Rpc:
    service: str
    method: str
    client_streaming: bool
    server_streaming: bool

    def as_tuple(self) -> tuple[str, str, bool, bool]:
        return (self.service, self.method, self.client_streaming, self.server_streaming)


def reflected_rpcs(address: str, tls: TLS, token: str) -> list[_Rpc]:
    """Every RPC the broker's reflection service describes (blocking: run in a thread)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with open_blocking_channel(address, tls=tls, token=token) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        rpcs = []
        for name in database.get_services():
            if name.startswith("grpc.reflection"):
                continue
            proto = database.FindFileContainingSymbol(name)
            for service in proto.service:
                if f"{proto.package}.{service.name}" != name:
                    continue
                for method in service.method:
                    rpcs.append(
                        _Rpc(name, method.name, method.client_streaming, method.server_streaming)
                    )
    return rpcs


def _bodies() -> Iterator[bytes]:
    yield b""
    yield b"\xff\xff\xff"  # not a message
    yield b"\x0a\x05hello"  # field 1, a string
    yield b"\x08\x96\x01"  # field 1, a varint
    yield b"\x12\x03abc\x1a\x00"
    yield bytes(range(40))


async def test_fuzzing_every_rpc_with_auth_required_finds_no_unknown_or_internal(
    broker: Broker, pki: Pki, admin: Client
) -> None:
    rpcs = await asyncio.to_thread(reflected_rpcs, broker.address, pki.trust(), ADMIN_SECRET)
    assert {r.service for r in rpcs} >= set(SERVICE_NAMES)
    async with (
        open_channel(broker.address, tls=pki.trust()) as anonymous,
        open_channel(broker.address, tls=pki.trust(), token=ADMIN_SECRET) as as_admin,
    ):
        with (
            open_blocking_channel(broker.address, tls=pki.trust()) as blocking_anonymous,
            open_blocking_channel(
                broker.address, tls=pki.trust(), token=ADMIN_SECRET
            ) as blocking_admin,
        ):
            await _fuzz(rpcs, (anonymous, blocking_anonymous), (as_admin, blocking_admin))


async def _fuzz(
    rpcs: list[_Rpc],
    anonymous_channels: tuple[grpc.aio.Channel, grpc.Channel],
    admin_channels: tuple[grpc.aio.Channel, grpc.Channel],
) -> None:
    bad = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
    anonymous, blocking_anonymous = anonymous_channels
    as_admin, blocking_admin = admin_channels
    for rpc in rpcs:
        for body in _bodies():
            code = await call_status(anonymous, rpc.as_tuple(), body, blocking_anonymous)
            if rpc.service == "grpc.health.v1.Health":
                assert code not in bad, f"{rpc}: {code}"
            else:
                assert code is grpc.StatusCode.UNAUTHENTICATED, (
                    f"{rpc} {body!r}: {code} {DETAILS.get(f'/{rpc.service}/{rpc.method}')}"
                )
            if rpc.method in ("RevokeToken", "ReloadConfig", "PurgeTasks"):
                continue  # no damage to what the other cases use
            code = await call_status(as_admin, rpc.as_tuple(), body, blocking_admin)
            assert code not in bad, f"admin {rpc} {body!r}: {code}"


async def test_reflection_can_be_turned_off(tmp_path: Path, pki: Pki) -> None:
    async with (
        Broker(secure_config(tmp_path, pki, reflection=False)) as running,
        open_channel(running.address, tls=pki.trust(), token=ADMIN_SECRET) as channel,
    ):
        rpc = ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", True, True)
        assert await call_status(channel, rpc) is grpc.StatusCode.UNIMPLEMENTED


async def test_unavailable_is_what_a_client_sees_without_a_broker(pki: Pki) -> None:
    async with Client("127.0.0.1:1", tls=pki.trust(), token=ADMIN_SECRET) as client:
        with pytest.raises(Unavailable) as raised:
            await client.list_pools()
    assert ADMIN_SECRET not in str(raised.value)


# -- the submitter ------------------------------------------------------------------------------


async def test_a_task_records_its_submitter_who_alone_reads_and_cancels_it(
    broker: Broker, admin: Client, pki: Pki
) -> None:
    _, alice_secret = await admin.create_token("alice", ["submit"])
    _, bob_secret = await admin.create_token("bob", ["submit"])
    async with (
        Client(broker.address, tls=pki.trust(), token=alice_secret, client_id="label") as alice,
        Client(broker.address, tls=pki.trust(), token=bob_secret) as bob,
    ):
        mine = await alice.submit("x")
        theirs = await bob.submit("x")
        assert (await alice.get(mine)).submitter == "alice"  # not the client header
        assert (await admin.get(theirs)).submitter == "bob"
        assert [t.id for t in await alice.list_tasks(pool="default")] == [mine]
        with pytest.raises(Exception, match=f"^task {theirs} does not exist$"):
            await alice.get(theirs)
        with pytest.raises(Exception, match=f"^task {theirs} does not exist$"):
            await alice.cancel(theirs)
        assert (await alice.cancel(mine)).state.name == "CANCELLED"
        assert (await admin.get(theirs)).state.name == "PENDING"


async def test_without_authentication_no_submitter_is_recorded(tmp_path: Path) -> None:
    async with Broker(make_config(tmp_path)) as running, Client(running.address) as client:
        task_id = await client.submit("x")
        assert (await client.get(task_id)).submitter is None


async def test_spans_carry_the_identity_and_never_the_token(tmp_path: Path, pki: Pki) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with (
            Broker(secure_config(tmp_path, pki), tracer_provider=provider) as running,
            Client(running.address, tls=pki.trust(), token=ADMIN_SECRET) as admin,
        ):
            await admin.list_pools()
            with pytest.raises(Unauthenticated):
                async with Client(running.address, tls=pki.trust(), token="tbk_wrong") as bad:
                    await bad.list_pools()
    finally:
        provider.shutdown()
    spans = exporter.get_finished_spans()
    (listed, refused) = [s for s in spans if s.name.endswith("AdminService/ListPools")]
    assert (listed.attributes or {})["enduser.id"] == "ops"
    assert (refused.attributes or {})["rpc.grpc.status_code"] == 16
    text = repr([(s.name, dict(s.attributes or {}), s.events, s.status) for s in spans])
    assert ADMIN_SECRET not in text
    assert "tbk_wrong" not in text


async def test_tokens_on_a_plaintext_loopback_broker_reach_every_kind_of_call(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, auth="token", tokens_file=str(tokens_file(tmp_path)))
    async with Broker(config) as running:
        async with Client(running.address, token=ADMIN_SECRET) as admin:
            _, worker_secret = await admin.create_token("w", ["worker"])
        worker = Worker(broker=running.address, token=worker_secret, capacity=1)

        @worker.task("echo")
        async def echo(ctx: TaskContext) -> bytes:
            return ctx.payload

        serving = asyncio.create_task(worker.run())
        try:
            async with Client(running.address, token=ADMIN_SECRET) as admin:
                task_id = await admin.submit("echo", b"hi")  # the submit stream
                done = await admin.wait(task_id, timeout=10)  # and its completions
                assert done.result == b"hi"
                (listed,) = await admin.list_workers()
                assert listed.pool == "default"
        finally:
            await worker.shutdown(1)
            await serving


async def test_a_worker_refused_for_its_pool_stops_with_permission_denied(
    broker: Broker, admin: Client, pki: Pki
) -> None:
    _, secret = await admin.create_token("other-workers", ["worker"], ["other"])
    worker = Worker("default", broker=broker.address, tls=pki.trust(), token=secret)

    @worker.task("x")
    async def handle(ctx: TaskContext) -> None:
        return None

    with pytest.raises(PermissionDenied, match="pool 'default'"):
        await asyncio.wait_for(worker.run(), 10)  # not retried: it would never help


async def test_connections_per_identity_are_limited(tmp_path: Path, pki: Pki) -> None:
    config = secure_config(tmp_path, pki, max_connections_per_identity=1)
    async with Broker(config) as running:
        async with Client(running.address, tls=pki.trust(), token=ADMIN_SECRET) as admin:
            task_id = await admin.submit("nobody-runs-this")
        auth = (("authorization", f"Bearer {ADMIN_SECRET}"),)
        request = _tasks.WaitRequest(task_ids=[task_id], timeout_s=5)
        # Two connections: channels with the same target and arguments may share one
        # (gRPC's global subchannel pool) unless each has a pool of its own.
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with (
            open_channel(running.address, tls=pki.trust(), extra_options=own) as first,
            open_channel(running.address, tls=pki.trust(), extra_options=own) as second,
        ):
            waits = _tasks_grpc.TaskServiceStub(first)
            waiting = waits.Wait(request, metadata=auth)
            stub = _tasks_grpc.TaskServiceStub(second)
            refused: grpc.aio.AioRpcError | None = None
            # Until the first connection's wait is in flight: nothing tells the client when
            # it is, and if a List holds the one place first, the wait is the call refused
            # (then it waits again), so poll, bounded in time.
            async with asyncio.timeout(20):
                while refused is None:
                    if waiting.done():
                        waiting = waits.Wait(request, metadata=auth)
                    try:
                        await stub.List(_tasks.ListTasksRequest(), metadata=auth)
                    except grpc.aio.AioRpcError as exc:
                        refused = exc
                    await asyncio.sleep(0.01)
            assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_connections_per_identity" in (refused.details() or "")
            waiting.cancel()  # its end frees its connection's place
            assert await _eventually_listed(stub, auth)


async def _eventually_listed(
    stub: _tasks_grpc.TaskServiceAsyncStub, auth: tuple[tuple[str, str], ...]
) -> bool:
    for _ in range(250):
        try:
            await stub.List(_tasks.ListTasksRequest(), metadata=auth)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.02)  # polling: nothing tells the client the place is free
        else:
            return True
    return False


@pytest.mark.parametrize(
    ("name", "roles", "pools", "message"),
    [
        ("", ["read"], [], "a token name is"),
        ("ops\n", ["read"], [], "a token name is"),
        ("x" * 65, ["read"], [], "a token name is"),
        ("ci", [], [], "at least one role"),
        ("ci", ["root"], [], "unknown role 'root'"),
        ("ci", ["read"] * 17, [], "roles holds more than 16"),
        ("ci", ["read"], [""], "must not be empty"),
        ("ci", ["read"], ["p" * 201], "longer than 200"),
        ("ci", ["read"], [f"p{n}" for n in range(101)], "pools holds more than 100"),
    ],
)
async def test_a_bad_token_request_is_invalid_argument_and_creates_nothing(
    admin: Client, name: str, roles: list[str], pools: list[str], message: str
) -> None:
    before = await admin.list_tokens()
    with pytest.raises(InvalidArgument, match=message):
        await admin.create_token(name, roles, pools)
    assert await admin.list_tokens() == before
