"""Taskbroker SDK: workers and clients."""
