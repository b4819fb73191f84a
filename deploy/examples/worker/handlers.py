"""An example worker module for an image built on taskbroker-worker: one handler.

`taskbroker worker run handlers:worker` runs it; the broker's address comes from
TASKBROKER_ADDR (set in the image and in the Kubernetes manifests).
"""

from __future__ import annotations

import hashlib

from worker_sdk import TaskContext, Worker

worker = Worker(pool="reports", capacity=4)


@worker.task("checksum")
async def checksum(ctx: TaskContext) -> str:
    """The SHA-256 of the payload, in hex."""
    return hashlib.sha256(ctx.payload).hexdigest()
