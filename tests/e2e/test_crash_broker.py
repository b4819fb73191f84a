"""A broker killed with SIGKILL mid-stream loses no task it acknowledged.

Real processes: `taskbroker serve` on a SQLite file, two workers (tests/support/crash_worker.py)
that journal every execution, and this test submitting batches. Part-way through, the
broker is killed with SIGKILL while submits are in flight and tasks and results stream to
and from the workers; it is started again on the same file and port, the workers reconnect
by themselves, and the test submits the rest. Every acknowledged task must then succeed,
and a task may run twice only if it was in flight at the kill (handed to a worker, its
success not yet durable). `pytest -s` prints the figures.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker.domain import TaskFilter
from broker.domain import TaskState as StoredState
from broker.storage.sqlite import SQLiteStore
from tests.support.crash_worker import TASK_TYPE
from tests.support.processes import Deadline, Process, child_env, logs, spawn, stop_all
from worker_sdk import Client, TaskbrokerError, TaskRequest, TaskState

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).parent.parent / "support" / "crash_worker.py"
SLOW_BROKER_SCRIPT = Path(__file__).parent.parent / "support" / "slow_commit_broker.py"
LISTENING = re.compile(r"taskbroker listening on (\S+)")

TOTAL_TASKS = 3000
BATCH_SIZE = 100
KILL_AFTER = 1000  # acknowledged tasks before the kill
LANES = 4  # concurrent submit_many calls, so that some are in flight at the kill
# Before the kill, submits wait for the workers to keep up, so that the kill finds a steady
# flow: most of what was acknowledged has run, and results stream back as tasks go out.
MAX_BACKLOG = 300
# From the acknowledgement that reaches KILL_AFTER to the kill: time for the next batches
# to leave, not for the broker to commit them (a commit waits for an fsync).
KILL_DELAY_S = 0.003
WORKERS = 2
CAPACITY = 4  # per worker
# Every wait of the test comes out of this, so it fails (and cleans up) before pytest's 60 s.
BUDGET_S = 45.0

BROKER_ENV = {
    # Heartbeats play no part in noticing a dead broker: the workers see their stream break
    # (the kernel resets the connection) and reconnect with their own backoff. The timeout
    # is kept well above the interval, so that a worker starved of CPU on a loaded machine
    # is not reaped; that would requeue its tasks and add duplicates the kill did not cause.
    "TASKBROKER_HEARTBEAT_INTERVAL_S": "0.2",
    "TASKBROKER_HEARTBEAT_TIMEOUT_S": "5",
    "TASKBROKER_SHUTDOWN_GRACE_S": "1",
}


async def start_broker(
    name: str, workdir: Path, db: Path, port: int, deadline: Deadline, commit_delay_s: float = 0.0
) -> tuple[Process, str]:
    """Start `taskbroker serve` and return it with the address it printed; with a
    `commit_delay_s`, each of its commits takes that much longer (a slow disk)."""
    serve = ["-m", "cli.main"]
    if commit_delay_s:
        serve = [str(SLOW_BROKER_SCRIPT), str(commit_delay_s)]
    argv = [sys.executable, *serve, "serve", "--port", str(port), "--db", str(db)]
    broker = spawn(name, argv, workdir, child_env(BROKER_ENV))
    while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
        assert broker.popen.poll() is None, broker.output()
        deadline.left(f"{name} listens")
        await asyncio.sleep(0.02)
    return broker, match.group(1)


@dataclass
class Submissions:
    """What the test submitted: every id acknowledged, and the calls that failed."""

    accepted: list[str] = field(default_factory=list)
    in_flight: int = 0  # submit_many calls started and not yet returned
    failed: int = 0  # calls that raised: none of their tasks counts as accepted


async def submit_lane(
    client: Client,
    submissions: Submissions,
    stop: Callable[[], bool],
    *,
    after_ack: Callable[[], None] = lambda: None,
    pace_until: int = 0,
) -> None:
    """Submit batches one after another until `stop()`; return at the first failure.

    Until `pace_until` tasks are acknowledged, a batch waits for the backlog (acknowledged,
    not yet durably succeeded) to fall under MAX_BACKLOG, so that the workers keep up.
    """
    batch = [TaskRequest(TASK_TYPE) for _ in range(BATCH_SIZE)]
    while not stop():
        if len(submissions.accepted) < pace_until:
            try:
                await backlog_below(client, submissions, MAX_BACKLOG)
            except TaskbrokerError:  # the broker died meanwhile: this batch was never sent
                return
            if stop():
                return
        submissions.in_flight += 1
        try:
            ids = await client.submit_many(batch)
        except TaskbrokerError:
            submissions.failed += 1
            return
        finally:
            submissions.in_flight -= 1
        submissions.accepted.extend(ids)
        after_ack()


async def backlog_below(client: Client, submissions: Submissions, limit: int) -> None:
    """Wait until fewer than `limit` acknowledged tasks are still to succeed durably."""
    while True:
        stats = await client.stats()
        succeeded = sum(pool.succeeded for pool in stats.pools)
        if len(submissions.accepted) - succeeded < limit:
            return
        await asyncio.sleep(0.01)


async def durably_succeeded(db: Path) -> set[str]:
    """The ids of the tasks the store holds as succeeded: what a restarted broker will see."""
    async with await SQLiteStore.open(db) as store:
        tasks = await store.list_tasks(
            TaskFilter(states=frozenset({StoredState.SUCCEEDED}), limit=10 * TOTAL_TASKS)
        )
    return {str(task.id) for task in tasks}


@dataclass
class Session:
    """What one worker did between two registrations: what one broker process handed it."""

    registered_at: float
    started: list[tuple[str, float]] = field(default_factory=list)
    done: dict[str, float] = field(default_factory=dict)


def read_journal(path: Path) -> list[Session]:
    """A worker's journal (see crash_worker.py), cut into sessions at each registration."""
    sessions: list[Session] = []
    for line in path.read_text().splitlines():
        kind, *fields = line.split()
        if kind == "registered":
            sessions.append(Session(float(fields[0])))
        elif kind == "start":
            sessions[-1].started.append((fields[0], float(fields[1])))
        else:
            assert kind == "done", f"{path}: unexpected line {line!r}"
            sessions[-1].done[fields[0]] = float(fields[1])
    return sessions


# Commits as they come (an fsync each), and commits that take 20 ms more, where results
# would pile up while a commit runs unless the broker held the workers back (fewer tasks:
# the slow commits pace the workers).
@pytest.mark.parametrize(
    ("commit_delay_s", "total_tasks", "kill_after"),
    [(0.0, TOTAL_TASKS, KILL_AFTER), (0.02, 1200, 700)],
    ids=["fsync", "slow-commit"],
)
async def test_broker_killed_mid_stream_loses_no_accepted_task(
    tmp_path: Path, commit_delay_s: float, total_tasks: int, kill_after: int
) -> None:
    began = time.monotonic()
    deadline = Deadline(BUDGET_S)
    db = tmp_path / "broker.db"
    journal_paths = [tmp_path / f"worker-{i}.journal" for i in range(WORKERS)]
    processes: list[Process] = []
    submissions = Submissions()
    try:
        broker, address = await start_broker("broker-1", tmp_path, db, 0, deadline, commit_delay_s)
        processes.append(broker)
        port = int(address.rsplit(":", 1)[1])
        for i, path in enumerate(journal_paths):
            argv = [sys.executable, str(WORKER_SCRIPT), address, str(path), str(CAPACITY)]
            processes.append(spawn(f"worker-{i}", argv, tmp_path, child_env()))

        # Phase 1: submit, at the workers' pace, until kill_after tasks are acknowledged;
        # then, a moment after the next batches went out, SIGKILL the broker. Submits still
        # in flight then count if the broker acknowledged them, and not if they failed.
        killed_at: float | None = None
        kill_due = False
        in_flight_at_kill = 0

        def kill() -> None:
            nonlocal killed_at, in_flight_at_kill
            os.kill(broker.popen.pid, signal.SIGKILL)
            # The broker dies within microseconds of kill(2) returning: far less than the
            # round trip that would hand a worker one more task.
            killed_at = time.monotonic()
            in_flight_at_kill = submissions.in_flight
            broker.popen.wait(10)  # blocks the loop a few ms; the test is all that waits

        def kill_when_due() -> None:
            nonlocal kill_due
            if not kill_due and len(submissions.accepted) >= kill_after:
                kill_due = True
                asyncio.get_running_loop().call_later(KILL_DELAY_S, kill)

        async with Client(address) as client:
            while len(await client.list_workers()) < WORKERS:
                for process in processes:
                    assert process.popen.poll() is None, process.output()
                deadline.left("the workers registered")
                await asyncio.sleep(0.02)
            submitting_at = time.monotonic()
            lanes = [
                submit_lane(
                    client,
                    submissions,
                    lambda: killed_at is not None,
                    after_ack=kill_when_due,
                    pace_until=kill_after,
                )
                for _ in range(LANES)
            ]
            await asyncio.wait_for(asyncio.gather(*lanes), deadline.left("the kill"))
        assert killed_at is not None, f"no kill: {submissions}"
        assert broker.popen.returncode == -signal.SIGKILL
        accepted_before_kill = len(submissions.accepted)
        failed_at_kill = submissions.failed
        # What the kill left on disk: exactly what the restarted broker starts from.
        durable_done = await durably_succeeded(db)

        # Phase 2: the same file and port again; the workers find their way back alone.
        broker, address_again = await start_broker(
            "broker-2", tmp_path, db, port, deadline, commit_delay_s
        )
        processes.append(broker)
        assert address_again == address
        broker_back = time.monotonic() - killed_at
        async with Client(address) as client:

            def enough() -> bool:
                pending = BATCH_SIZE * submissions.in_flight
                return len(submissions.accepted) + pending >= total_tasks

            lanes = [submit_lane(client, submissions, enough) for _ in range(LANES)]
            await asyncio.wait_for(asyncio.gather(*lanes), deadline.left("the second phase"))
            assert submissions.failed == failed_at_kill, "a submit failed after the restart"
            infos = await client.wait_many(
                submissions.accepted, timeout=deadline.left("every task finished")
            )
        states = Counter(info.state for info in infos)
        assert states == {TaskState.SUCCEEDED: len(submissions.accepted)}, states
    except BaseException:
        stop_all(processes)
        print(logs(processes))  # pytest shows it with the failure
        raise
    finally:
        stop_all(processes)

    # --- What the workers did ---------------------------------------------------------
    journals = [read_journal(path) for path in journal_paths]
    for sessions, path in zip(journals, journal_paths, strict=True):
        # One session per broker process: no reconnect other than the one the kill caused.
        registered = [session.registered_at for session in sessions]
        assert len(registered) == 2, f"{path}: registered at {registered}\n{logs(processes)}"
    executions = Counter(
        task_id for sessions in journals for session in sessions for task_id, _ in session.started
    )
    done = {task_id for sessions in journals for session in sessions for task_id in session.done}
    accepted = set(submissions.accepted)
    assert len(accepted) == len(submissions.accepted), "an id was acknowledged twice"
    assert not accepted - done, f"{len(accepted - done)} acknowledged tasks never ran to the end"

    # In flight at the kill: the tasks the first broker handed out whose success it had not
    # committed. Only these can run again: the restarted broker requeues the unfinished
    # tasks of the store, and nothing else requeues a task here. Each runs again at most
    # once. They are of two kinds, which bound their number:
    #  - held by a worker at the kill (running, assigned but not started, or finished with
    #    the result not yet received): at most CAPACITY per worker, as the broker never
    #    lends a worker more credit than its capacity. Those not finished at the kill are
    #    counted below, and checked against the capacity;
    #  - finished before the kill, but in no committed transaction: in the worker's outbox,
    #    on the wire, or received but not yet committed. They are read from the store the
    #    kill left behind.
    # Hence duplicates <= in flight <= WORKERS * CAPACITY + finished_not_durable.
    # Tighter: the broker sends a worker no new task while the results it received from
    # it before the latest ones are not durable, so what one worker was sent and is not
    # durably done never exceeds its capacity plus one commit's worth of its results (at
    # most its capacity again), however slow the commits: duplicates <= twice the slots.
    first_sessions = [sessions[0] for sessions in journals]
    finished = {i: t for s in first_sessions for i, t in s.done.items() if t <= killed_at}
    held_unfinished = [{i for i, _ in s.started} - finished.keys() for s in first_sessions]
    assert all(len(held) <= CAPACITY for held in held_unfinished), held_unfinished
    finished_not_durable = finished.keys() - durable_done
    in_flight = {i for s in first_sessions for i, _ in s.started} - durable_done
    bound = WORKERS * CAPACITY + len(finished_not_durable)

    duplicates = executions.total() - len(executions)
    twice = {task_id for task_id, n in executions.items() if n > 1}
    assert max(executions.values()) <= 2, executions.most_common(3)
    assert not twice & durable_done, f"durably finished tasks ran again: {sorted(twice)[:10]}"
    assert twice <= in_flight, f"ran twice, not in flight: {sorted(twice - in_flight)[:10]}"
    assert duplicates <= len(in_flight) <= bound, (duplicates, len(in_flight), bound)
    sent_not_durable = [{i for i, _ in s.started} - durable_done for s in first_sessions]
    assert all(len(sent) <= 2 * CAPACITY for sent in sent_not_durable), sent_not_durable
    assert duplicates <= 2 * WORKERS * CAPACITY, (duplicates, len(in_flight))
    # Results are committed as they come: most of what finished before the kill is durable
    # (a commit takes milliseconds, and the first phase lasts many of them).
    assert len(finished_not_durable) < len(finished) / 2, (len(finished_not_durable), finished)

    oldest_ms = 1000 * max((killed_at - finished[i] for i in finished_not_durable), default=0)
    workers_back = max(sessions[1].registered_at for sessions in journals) - killed_at
    print(
        f"\nbroker killed {killed_at - submitting_at:.2f} s into the submits: "
        f"accepted {len(accepted)} ({accepted_before_kill} before the kill, when "
        f"{in_flight_at_kill} submit_many calls were in flight, of which {failed_at_kill} "
        f"failed); executed {executions.total()} times over {len(executions)} tasks "
        f"({len(executions.keys() - accepted)} stored but unacknowledged); duplicates "
        f"{duplicates}; in flight at the kill {len(in_flight)}: "
        f"{sum(map(len, held_unfinished))} unfinished on the workers, "
        f"{len(finished_not_durable)} of the {len(finished)} finished not durable (the "
        f"oldest for {oldest_ms:.0f} ms); bound {bound}, slots {WORKERS * CAPACITY}; "
        f"commit delay {commit_delay_s:g} s; broker back after "
        f"{broker_back:.2f} s, workers after {workers_back:.2f} s; "
        f"test {time.monotonic() - began:.1f} s"
    )
