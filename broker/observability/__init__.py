"""What the broker tells about itself: traces, metrics, the metrics history, logs.

The runtime calls observers (`observe`) as tasks move; `tracing` records spans, `metrics`
reports OpenTelemetry instruments (each collection reading one snapshot of the engine,
`snapshots`; exported by `exporters`, Prometheus included), `rollups` keeps the
per-minute history in the store, `recommend` turns that history into worker counts, and
`logs` formats structured log lines. Nothing here knows gRPC.
"""
