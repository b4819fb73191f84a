"""Taskbroker broker: the gRPC server, scheduler and SQLite store."""
