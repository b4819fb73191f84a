"""`taskbroker serve` over TLS: SIGHUP reads the certificate files again, new connections
get the new certificate, and a connection made before keeps working."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.cli_processes import LISTENING, start, wait_for
from tests.support.pki import issue_server_cert, make_pki
from worker_sdk import TLS
from worker_sdk._channel import open_blocking_channel


def _check(channel: grpc.Channel) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _health(address: str, tls: TLS) -> str:
    with open_blocking_channel(address, tls=tls, options=()) as channel:
        return _check(channel)


def test_sighup_rotates_the_certificate_without_dropping_connections(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = tmp_path / "taskbroker.toml"
    config.write_text(
        f'[broker]\ntls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
    )
    broker = start(
        ["serve", "--config", str(config), "--port", "0", "--db", str(tmp_path / "b.db")],
        tmp_path,
        "broker",
    )
    try:
        match = wait_for(lambda: LISTENING.search(broker.stdout.read_text()), "listening", broker)
        address = match.group(1)
        with open_blocking_channel(address, tls=pki.trust(), options=()) as before:
            assert _check(before) == "SERVING"
            rotated = make_pki(tmp_path / "rotated")
            issue_server_cert(rotated, into=pki.folder)
            broker.process.send_signal(signal.SIGHUP)
            wait_for(
                lambda: "TLS certificates reloaded" in broker.stderr.read_text(),
                "the reload",
                broker,
            )
            assert _health(address, rotated.trust()) == "SERVING"
            with pytest.raises(grpc.RpcError):
                _health(address, pki.trust())  # the old CA: a new handshake fails
            assert _check(before) == "SERVING"  # the connection made before the reload
    finally:
        broker.stop()
