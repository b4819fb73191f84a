"""Where the broker's metrics go: a MeterProvider for the configured readers, and the
Prometheus scrape endpoint that `prometheus_port` asks for."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from broker.config import BrokerConfig
from broker.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class ServingMeterProvider(SdkMeterProvider):
    """A MeterProvider that also serves a Prometheus scrape endpoint; `shutdown()` stops
    both."""

    def __init__(
        self,
        readers: Sequence[MetricReader],
        *,
        resource: Resource,
        server: WSGIServer | None = None,
    ) -> None:
        super().__init__(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        self._server = server
        self._closed = False

    @property
    def scrape_address(self) -> tuple[str, int] | None:
        """(host, port) of the Prometheus endpoint, or None without one."""
        if self._server is None:
            return None
        return self._server.server_name, self._server.server_port

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stop the scrape endpoint, then the readers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        super().shutdown(timeout_millis)


def meter_provider(
    config: BrokerConfig, readers: Sequence[MetricReader] = ()
) -> ServingMeterProvider | None:
    """The MeterProvider for this configuration, or None when nothing reads metrics.

    With ``prometheus_port`` set, it serves ``/metrics`` on ``host:prometheus_port``
    (ConfigError if the ``prometheus`` extra is not installed; BrokerError if the port
    cannot be bound). `readers` are added as they are (an OTLP or in-memory reader).
    The caller owns it: `shutdown()` it when the broker stops.
    """
    all_readers = list(readers)
    server = None
    if config.prometheus_port:
        reader, server = _serve_prometheus(config.host, config.prometheus_port)
        all_readers.append(reader)
    if not all_readers:
        return None
    resource = Resource.create({SERVICE_NAME: "taskbroker"})
    return ServingMeterProvider(all_readers, resource=resource, server=server)


def _serve_prometheus(host: str, port: int) -> tuple[MetricReader, WSGIServer]:
    # Imported by name, as tracing.py does the OTLP exporter: an optional package that
    # neither the import of this module nor the type check may need.
    try:
        exporter = importlib.import_module("opentelemetry.exporter.prometheus")
        client = importlib.import_module("prometheus_client")
    except ImportError:
        raise ConfigError(
            "prometheus_port: serving Prometheus metrics needs the prometheus extra "
            "(pip install 'taskbroker[prometheus]'), or set it to 0"
        ) from None
    # A registry of its own: not the process-wide default, which other code may fill
    # and where a second broker in the process would collide.
    registry = client.CollectorRegistry(auto_describe=True)
    reader: MetricReader = exporter.PrometheusMetricReader(registry=registry)
    try:
        server: WSGIServer = client.start_http_server(port, addr=host, registry=registry)[0]
    except OSError as exc:
        raise BrokerError(f"cannot serve Prometheus metrics on {host}:{port}: {exc}") from None
    return reader, server
