"""The scheduling core: pure decisions on one clock, with no I/O.

Pools' queues (priority, fairness keys, anti-starvation), placement strategies, admission
(queue bounds and rate limits), circuit breakers, token buckets, the one heap of timers,
the task and broker state machines and the learned run times. Everything here takes the
time from a `Clock` it is given and returns decisions for broker.runtime to carry out, so
tests and the simulator (broker.sim) drive it without a network, a store or an event loop.
It imports no asyncio, gRPC, protobuf, storage or telemetry (an import contract checks).
"""
