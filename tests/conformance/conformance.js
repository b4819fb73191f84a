// A conformance run against a live broker: a client and workers written from the
// taskbroker/v1 .proto files alone, as a team in another language would write them.
// Usage: node conformance.js <proto dir> <broker address> [check name...]
//        node conformance.js --plan <proto dir>   (what a run would do, without a broker)
// Prints `PASS name`, `FAIL name: reason` or `SKIP name: reason` per check, then
// `conformance: P passed, F failed, S skipped`; exits 1 if any check failed.
// Checks of newer parts of the contract name what they need (`requires`) and are skipped
// when built from .proto files that lack it, such as the frozen copy of the first v1.
"use strict";

const { spawn } = require("node:child_process");
const path = require("node:path");
const readline = require("node:readline");
const fs = require("node:fs");
const os = require("node:os");
const { loadApi, connect, unary, callMetadata, grpc } = require("./lib/api");
const { Worker } = require("./lib/worker");
const { errorDetails, listServices } = require("./lib/wellknown");

const TERMINAL = ["TASK_STATE_SUCCEEDED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED", "TASK_STATE_DEAD_LETTER"];
// The broker's defaults (config, not the wire: the first v1 does not advertise them).
const MAX_PAYLOAD_BYTES = 1024 * 1024;
const MAX_BATCH_SIZE = 1000; // tasks in a SubmitBatch, ids in a Wait
const WAIT_MS = 15_000;
// Task types, worker ids and idempotency keys carry this run's tag, so that runs can share
// a broker.
const RUN = Date.now().toString(36);

// The first v1 as published (a client built from it does not know later fields).
const FROZEN_DIR = path.join(__dirname, "frozen_v1");

class CheckFailed extends Error {}

// The contract of a client older still: the frozen v1 files without some lines (fields).
async function olderContract(ctx, lines) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "taskbroker-older-"));
  ctx.tempDirs.push(dir);
  fs.cpSync(path.join(FROZEN_DIR, "taskbroker"), path.join(dir, "taskbroker"), { recursive: true });
  const file = path.join(dir, "taskbroker", "v1", "admin.proto");
  let text = fs.readFileSync(file, "utf8");
  for (const line of lines) {
    check(text.includes(line), `the frozen admin.proto has no line ${JSON.stringify(line)}`);
    text = text.replace(line, "");
  }
  fs.writeFileSync(file, text);
  return loadApi(dir);
}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

async function until(what, probe, timeoutMs = WAIT_MS) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) throw new CheckFailed(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function expectStatus(promise, codes, what) {
  try {
    await promise;
  } catch (err) {
    const names = codes.map((code) => grpc.status[code]);
    check(names.includes(err.code), `${what}: expected ${codes.join(" or ")}, got ${grpc.status[err.code]} (${err.details})`);
    return err;
  }
  throw new CheckFailed(`${what}: expected ${codes.join(" or ")}, got OK`);
}

// A handler that runs until the test releases it (or the broker cancels it).
function gate() {
  const waiting = [];
  return {
    handler: (assignment, { signal }) =>
      new Promise((resolve) => {
        waiting.push({ assignment, resolve });
        signal.addEventListener("abort", () => resolve({ error: { type: "Aborted", message: "cancelled" } }));
      }),
    waiting,
    releaseAll() {
      for (const { assignment, resolve } of waiting.splice(0)) resolve({ result: Buffer.from(`done ${assignment.task_id}`) });
    },
  };
}

const echo = (assignment) => ({ result: assignment.payload });

class Context {
  constructor(api, address, name) {
    this.api = api;
    this.address = address;
    this.name = name;
    this.clients = connect(api, address);
    this.workers = [];
    this.processes = [];
    this.tempDirs = [];
  }

  type(suffix) {
    return `conf_${RUN}_${this.name}_${suffix}`;
  }

  workerId(n) {
    return `${this.name}-${RUN}-${n}`;
  }

  async worker(options) {
    const worker = new Worker(this.api, this.address, { workerId: this.workerId(this.workers.length), ...options });
    this.workers.push(worker);
    await worker.start();
    return worker;
  }

  call(method, request, timeoutMs) {
    const service = method in this.clients.tasks ? this.clients.tasks : this.clients.admin;
    return unary(service, method, request, timeoutMs);
  }

  submit(spec) {
    return this.call("Submit", { task: spec }).then((response) => response.task_id);
  }

  async wait(ids, timeoutS = 15) {
    const response = await this.call("Wait", { task_ids: ids, timeout_s: timeoutS }, (timeoutS + 5) * 1000);
    return response.tasks;
  }

  async finished(ids) {
    const tasks = await this.wait(ids);
    for (const task of tasks) check(TERMINAL.includes(task.state), `task ${task.id} not finished: ${task.state}`);
    return tasks;
  }

  async workerStatus(workerId) {
    const { workers } = await this.call("ListWorkers", {});
    return workers.find((w) => w.worker_id === workerId);
  }

  async cleanup() {
    for (const child of this.processes) if (child.exitCode === null) child.kill("SIGKILL");
    await Promise.all(this.workers.map((worker) => worker.kill()));
    this.clients.close();
    for (const dir of this.tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}

const CHECKS = [
  {
    name: "register",
    async run(ctx) {
      const worker = await ctx.worker({ capacity: 3, labels: { lang: "js" }, handlers: { [ctx.type("echo")]: echo } });
      equal(worker.ack.worker_id, ctx.workerId(0), "RegisterAck.worker_id");
      check(worker.ack.heartbeat_interval_s > 0, `heartbeat_interval_s ${worker.ack.heartbeat_interval_s}`);
      const status = await ctx.workerStatus(ctx.workerId(0));
      check(status, "ListWorkers does not list the worker");
      equal([status.pool, status.capacity, status.task_types, status.labels], ["default", 3, [ctx.type("echo")], { lang: "js" }], "WorkerStatus");
      const unnamed = await ctx.worker({ workerId: "", handlers: { [ctx.type("echo")]: echo } });
      check(unnamed.ack.worker_id !== "", "an empty worker_id gets none assigned");
    },
  },
  {
    name: "register_ack_liveness",
    requires: ["taskbroker.v1.RegisterAck.lease_s", "taskbroker.v1.RegisterAck.heartbeat_timeout_s"],
    async run(ctx) {
      const worker = await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      const { heartbeat_interval_s: interval, heartbeat_timeout_s: timeout, lease_s: lease } = worker.ack;
      check(timeout > interval, `heartbeat_timeout_s ${timeout} is not above heartbeat_interval_s ${interval}`);
      check(lease >= 2 * interval, `lease_s ${lease} is below twice heartbeat_interval_s ${interval}`);
    },
  },
  {
    name: "register_must_come_first",
    async run(ctx) {
      const clients = ctx.clients;
      const stream = clients.workers.Connect();
      const ended = new Promise((resolve) => {
        stream.on("error", resolve);
        stream.on("data", () => {});
        stream.on("end", () => resolve(null));
      });
      stream.write({ heartbeat: { in_flight: 0, load: 0, held_task_ids: [], assignments_seen: "0" } });
      const err = await ended;
      check(err, "the stream ended without an error");
      equal(grpc.status[err.code], "FAILED_PRECONDITION", "status of a stream that starts with a heartbeat");
    },
  },
  {
    name: "submit_result",
    async run(ctx) {
      await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      const id = await ctx.submit({ task_type: ctx.type("echo"), payload: Buffer.from("hello") });
      const [task] = await ctx.finished([id]);
      equal([task.state, task.result.toString(), task.attempts, task.worker_id], ["TASK_STATE_SUCCEEDED", "hello", 1, ctx.workerId(0)], "task");
      check(Number(task.finished_at_ms) >= Number(task.created_at_ms) && Number(task.created_at_ms) > 0, "timestamps");
      const got = await ctx.call("Get", { task_id: id });
      equal([got.id, got.spec.task_type, got.spec.payload.toString()], [id, ctx.type("echo"), "hello"], "Get");
      const listed = await ctx.call("List", { task_type: ctx.type("echo") });
      equal(listed.tasks.map((t) => t.id), [id], "List by task type");
      await expectStatus(ctx.call("Get", { task_id: "999999999" }), ["NOT_FOUND"], "Get of an unknown id");
      const again = await ctx.call("Submit", { task: { task_type: ctx.type("echo"), idempotency_key: RUN } });
      const same = await ctx.call("Submit", { task: { task_type: ctx.type("echo"), idempotency_key: RUN } });
      equal([same.task_id, same.existing], [again.task_id, true], "a second submit with one idempotency key");
    },
  },
  {
    name: "credit",
    async run(ctx) {
      const block = gate();
      const type = ctx.type("block");
      const worker = await ctx.worker({ capacity: 1, handlers: { [type]: block.handler } });
      const ids = await Promise.all([1, 2, 3].map(() => ctx.submit({ task_type: type })));
      await until("the first task to run", () => block.waiting.length === 1);
      // Credit sets how many tasks the worker runs at once; it is not a grant added to
      // what it had.
      worker.credit(3);
      await until("capacity 3 in ListWorkers", async () => (await ctx.workerStatus(worker.register.worker_id)).capacity === 3);
      await until("all three to run", () => block.waiting.length === 3);
      worker.credit(3);
      await until("capacity still 3", async () => (await ctx.workerStatus(worker.register.worker_id)).capacity === 3);
      worker.credit(0);
      await until("capacity 0", async () => (await ctx.workerStatus(worker.register.worker_id)).capacity === 0);
      block.releaseAll();
      await ctx.finished(ids);
      const paused = await ctx.submit({ task_type: type });
      const [waited] = await ctx.wait([paused], 0.5);
      equal(waited.state, "TASK_STATE_PENDING", "a task for a worker with credit 0");
      worker.credit(1);
      await until("the paused task to run", () => block.waiting.length === 1);
      block.releaseAll();
      await ctx.finished([paused]);
      check(worker.maxHeld === 3, `the worker held up to ${worker.maxHeld} tasks at once, not 3`);
    },
  },
  {
    name: "submit_batch",
    async run(ctx) {
      await ctx.worker({ capacity: 4, handlers: { [ctx.type("echo")]: echo } });
      const tasks = Array.from({ length: 25 }, (_, i) => ({ task_type: ctx.type("echo"), payload: Buffer.from(`item ${i}`) }));
      const { task_ids: ids } = await ctx.call("SubmitBatch", { tasks });
      equal(ids.length, 25, "task ids");
      const finished = await ctx.finished(ids);
      equal(finished.map((t) => t.result.toString()), tasks.map((t) => t.payload.toString()), "results in request order");
      // All or none: one bad task refuses the batch.
      const bad = [...tasks.slice(0, 3), { task_type: "" }];
      await expectStatus(ctx.call("SubmitBatch", { tasks: bad }), ["INVALID_ARGUMENT"], "a batch with a task without a type");
      const listed = await ctx.call("List", { task_type: ctx.type("echo"), limit: 1000 });
      equal(listed.tasks.length, 25, "tasks after a refused batch");
    },
  },
  {
    name: "submit_stream",
    async run(ctx) {
      await ctx.worker({ capacity: 4, handlers: { [ctx.type("echo")]: echo } });
      const stream = ctx.clients.tasks.SubmitStream();
      const acks = new Map();
      const completed = new Map();
      const notFound = [];
      stream.on("data", (message) => {
        if (message.kind === "ack") acks.set(message.ack.batch_id, message.ack);
        else {
          for (const task of message.completions.tasks) completed.set(task.id, task);
          notFound.push(...message.completions.not_found);
        }
      });
      const errored = new Promise((resolve) => stream.on("error", resolve));
      for (const batch of [1, 2, 3]) {
        const tasks = [0, 1, 2].map((i) => ({ task_type: ctx.type("echo"), payload: Buffer.from(`${batch}.${i}`) }));
        stream.write({ batch_id: String(batch), tasks, watch: true });
      }
      await until("three acks", () => acks.size === 3);
      for (const batch of ["1", "2", "3"]) {
        const ack = acks.get(batch);
        check(ack && ack.error_code === 0 && ack.task_ids.length === 3, `ack of batch ${batch}: ${JSON.stringify(ack)}`);
      }
      const ids = [...acks.values()].flatMap((ack) => ack.task_ids);
      await until("nine completion notices", () => ids.every((id) => completed.has(id)));
      for (const id of ids) equal(completed.get(id).state, "TASK_STATE_SUCCEEDED", `notice of ${id}`);
      // A refused batch is acked with its error, and the stream goes on.
      stream.write({ batch_id: "4", tasks: [{ task_type: ctx.type("echo"), priority: 5000 }] });
      await until("the ack of a bad batch", () => acks.has("4"));
      equal(grpc.status[acks.get("4").error_code], "INVALID_ARGUMENT", "error_code of a bad batch");
      // Watching ids submitted elsewhere, and ids the broker does not know.
      const other = await ctx.submit({ task_type: ctx.type("echo"), payload: Buffer.from("other") });
      stream.write({ batch_id: "5", watch_task_ids: [other, "987654321"] });
      await until("the other task's notice", () => completed.has(other));
      await until("not_found", () => notFound.includes("987654321"));
      stream.end();
      await Promise.race([errored, new Promise((resolve) => stream.on("end", resolve))]);
    },
  },
  {
    name: "failure",
    async run(ctx) {
      const type = ctx.type("fail");
      await ctx.worker({ handlers: { [type]: () => ({ error: { type: "ValueError", message: "bad input" } }) } });
      const id = await ctx.submit({ task_type: type, retry: { max_attempts: 1 } });
      const [task] = await ctx.finished([id]);
      // With a single attempt the task ends FAILED, not DEAD_LETTER.
      equal([task.state, task.error.type, task.error.message, task.attempts], ["TASK_STATE_FAILED", "ValueError", "bad input", 1], "a failed task");
      // A thrown handler error is reported the same way.
      const thrown = ctx.type("throw");
      await ctx.worker({ handlers: { [thrown]: () => { throw new TypeError("no"); } } });
      const [other] = await ctx.finished([await ctx.submit({ task_type: thrown })]);
      equal([other.state, other.error.type, other.error.message], ["TASK_STATE_FAILED", "TypeError", "no"], "a task whose handler threw (no retry policy)");
    },
  },
  {
    name: "retry_policy",
    async run(ctx) {
      const type = ctx.type("flaky");
      const handler = (a) => {
        const kind = a.payload.toString();
        if (kind === "fatal") return { error: { type: "Fatal", message: "give up" } };
        if (kind === "always") return { error: { type: "Flaky", message: `attempt ${a.attempt}` } };
        return a.attempt < 3 ? { error: { type: "Flaky", message: `attempt ${a.attempt}` } } : { result: Buffer.from(`ok on ${a.attempt}`) };
      };
      // Handler errors open a worker's circuit breaker (admin.proto, Pool.breaker_failures)
      // only when it serves that task type alone; this worker serves two.
      const worker = await ctx.worker({ capacity: 3, handlers: { [type]: handler, [ctx.type("echo")]: echo } });
      const retry = { max_attempts: 3, initial_backoff_s: 0.01, max_backoff_s: 0.05, backoff_multiplier: 1, non_retryable_errors: ["Fatal"] };
      const ids = await Promise.all(["flaky", "always", "fatal"].map((p) => ctx.submit({ task_type: type, payload: Buffer.from(p), retry })));
      const [flaky, always, fatal] = await ctx.finished(ids);
      equal([flaky.state, flaky.attempts, flaky.result.toString()], ["TASK_STATE_SUCCEEDED", 3, "ok on 3"], "a task that succeeds on its third attempt");
      equal([always.state, always.attempts, always.error.message], ["TASK_STATE_DEAD_LETTER", 3, "attempt 3"], "a task that fails every attempt");
      // A non-retryable error ends the task FAILED at once; exhausted attempts end it DEAD_LETTER.
      equal([fatal.state, fatal.attempts, fatal.error.type], ["TASK_STATE_FAILED", 1, "Fatal"], "a non-retryable failure");
      // Retry requeues a dead-lettered task with a fresh set of attempts.
      const { tasks } = await ctx.call("Retry", { task_ids: [always.id] });
      equal(tasks.map((t) => t.id), [always.id], "Retry");
      const [again] = await ctx.finished([always.id]);
      equal(again.state, "TASK_STATE_DEAD_LETTER", "the retried task");
      equal(again.attempts, 3, "attempts of the retried task (counted afresh)");
      equal(worker.assignments.filter((a) => a.task_id === always.id).map((a) => a.attempt), [1, 2, 3, 1, 2, 3], "attempts run");
    },
  },
  {
    name: "cancel",
    async run(ctx) {
      const block = gate();
      const type = ctx.type("block");
      const worker = await ctx.worker({ capacity: 1, handlers: { [type]: block.handler, [ctx.type("echo")]: echo } });
      const running = await ctx.submit({ task_type: type });
      await until("the task to run", () => block.waiting.length === 1);
      await until("state RUNNING", async () => (await ctx.call("Get", { task_id: running })).state === "TASK_STATE_RUNNING");
      const { task } = await ctx.call("Cancel", { task_id: running });
      equal(task.state, "TASK_STATE_CANCELLED", "Cancel of a running task");
      await until("CancelTasks on the worker", () => worker.cancels.includes(running));
      // The cancelled task's slot is free again: the next task runs.
      const [next] = await ctx.finished([await ctx.submit({ task_type: ctx.type("echo"), payload: Buffer.from("x") })]);
      equal(next.state, "TASK_STATE_SUCCEEDED", "the task after a cancel");
      // A pending (delayed) task is cancelled before any worker sees it.
      const later = await ctx.submit({ task_type: type, not_before_ms: String(Date.now() + 3_600_000) });
      equal((await ctx.call("Cancel", { task_id: later })).task.state, "TASK_STATE_CANCELLED", "Cancel of a pending task");
      const [final] = await ctx.wait([running, later], 0);
      equal(final.state, "TASK_STATE_CANCELLED", "state after Cancel");
      check(!worker.assignments.some((a) => a.task_id === later), "the cancelled pending task was assigned");
    },
  },
  {
    name: "lease_renewed_by_heartbeats",
    requires: ["taskbroker.v1.RegisterAck.lease_s"],
    async run(ctx) {
      // A task held for longer than the lease stays with its worker while heartbeats list it.
      const type = ctx.type("slow");
      let lease = 0;
      const worker = await ctx.worker({
        handlers: { [type]: () => new Promise((resolve) => setTimeout(() => resolve({ result: Buffer.from("slow") }), lease * 1500)) },
      });
      lease = worker.ack.lease_s;
      check(lease > 0 && lease <= 5, `lease_s ${lease}: the broker under test should have a short lease`);
      const [task] = await ctx.finished([await ctx.submit({ task_type: type })]);
      equal([task.state, task.attempts], ["TASK_STATE_SUCCEEDED", 1], "a task held past its lease");
    },
  },
  {
    name: "heartbeat_reconcile",
    async run(ctx) {
      // A task the worker was sent (up to assignments_seen) and no longer lists, with no
      // result, is requeued; a task it lists but should not hold is cancelled.
      const type = ctx.type("lost");
      const handler = (a) => (a.attempt === 1 ? new Promise(() => {}) : { result: Buffer.from(`attempt ${a.attempt}`) });
      const worker = await ctx.worker({ handlers: { [type]: handler } });
      const id = await ctx.submit({ task_type: type });
      await until("the assignment", () => worker.assignments.some((a) => a.task_id === id));
      worker.forget(id);
      const [task] = await ctx.finished([id]);
      equal([task.state, task.attempts, task.result.toString()], ["TASK_STATE_SUCCEEDED", 2, "attempt 2"], "a task the worker forgot");
      const stranger = await ctx.submit({ task_type: ctx.type("other"), not_before_ms: String(Date.now() + 3_600_000) });
      worker.claimed.push(stranger);
      await until("CancelTasks for a task the worker does not hold", () => worker.cancels.includes(stranger));
      // Only the worker's claim is cancelled, not the task.
      equal((await ctx.call("Get", { task_id: stranger })).state, "TASK_STATE_PENDING", "the task claimed by mistake");
      worker.claimed.length = 0;
      await ctx.call("Cancel", { task_id: stranger });
    },
  },
  {
    name: "admin_reads",
    async run(ctx) {
      const { pools } = await ctx.call("ListPools", {});
      check(pools.some((pool) => pool.name === "default"), "ListPools has no default pool");
      const stats = await ctx.call("Stats", {});
      check(stats.pools.some((pool) => pool.pool === "default"), "Stats has no default pool");
      equal(stats.broker_state, "running", "Stats.broker_state");
      await expectStatus(ctx.call("DrainWorker", { worker_id: ctx.workerId("absent") }), ["NOT_FOUND"], "DrainWorker of an unknown worker");
    },
  },
  {
    name: "drain",
    async run(ctx) {
      const block = gate();
      const type = ctx.type("block");
      const draining = await ctx.worker({ capacity: 2, handlers: { [type]: block.handler } });
      const held = await ctx.submit({ task_type: type });
      await until("the task to run", () => block.waiting.length === 1);
      const { worker: status } = await ctx.call("DrainWorker", { worker_id: draining.register.worker_id });
      check(status.draining, "DrainWorker's answer does not say draining");
      const reason = await draining.drained;
      check(typeof reason === "string", "Drain message");
      // No new work reaches a draining worker: the next task goes to another one.
      const other = await ctx.worker({ handlers: { [type]: () => ({ result: Buffer.from("other") }) } });
      const [next] = await ctx.finished([await ctx.submit({ task_type: type })]);
      equal(next.worker_id, other.register.worker_id, "worker of a task submitted during a drain");
      // What it held finishes, and is accepted; then it disconnects by itself.
      block.releaseAll();
      const [done] = await ctx.finished([held]);
      equal([done.state, done.worker_id], ["TASK_STATE_SUCCEEDED", draining.register.worker_id], "the held task");
      await draining.ended;
      await until("the drained worker to leave", async () => !(await ctx.workerStatus(draining.register.worker_id)));
    },
  },
  {
    name: "crash_recovery",
    async run(ctx) {
      const type = ctx.type("hang");
      const doomed = ctx.workerId("doomed");
      const child = spawn(process.execPath, [path.join(__dirname, "worker.js"), ctx.api.protoDir, ctx.address, doomed, type], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      ctx.processes.push(child);
      const lines = [];
      readline.createInterface({ input: child.stdout }).on("line", (line) => lines.push(line));
      await until("the worker process to register", () => lines.includes(`registered ${doomed}`));
      const id = await ctx.submit({ task_type: type });
      await until("the task to run in the worker process", () => lines.includes(`running ${id} 1`));
      child.kill("SIGKILL");
      const rescuer = await ctx.worker({ handlers: { [type]: (a) => ({ result: Buffer.from(`attempt ${a.attempt}`) }) } });
      const [task] = await ctx.finished([id]);
      equal([task.state, task.attempts, task.worker_id, task.result.toString()], ["TASK_STATE_SUCCEEDED", 2, rescuer.register.worker_id, "attempt 2"], "the task after the crash");
    },
  },
  {
    name: "limits",
    async run(ctx) {
      const type = ctx.type("echo");
      const big = Buffer.alloc(MAX_PAYLOAD_BYTES + 1, 120);
      const err = await expectStatus(ctx.call("Submit", { task: { task_type: type, payload: big } }), ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"], "an over-size payload");
      check(/payload/.test(err.details), `the refusal does not name the payload: ${err.details}`);
      await expectStatus(ctx.call("SubmitBatch", { tasks: [{ task_type: type }, { task_type: type, payload: big }] }), ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"], "a batch with an over-size payload");
      const fits = Buffer.alloc(MAX_PAYLOAD_BYTES, 121);
      await ctx.worker({ handlers: { [type]: echo } });
      const [task] = await ctx.finished([await ctx.submit({ task_type: type, payload: fits })]);
      equal([task.state, task.result.length], ["TASK_STATE_SUCCEEDED", MAX_PAYLOAD_BYTES], "a payload of exactly the limit");
      const ids = Array.from({ length: MAX_BATCH_SIZE + 1 }, (_, i) => String(i + 1));
      const waitErr = await expectStatus(ctx.call("Wait", { task_ids: ids, timeout_s: 1 }), ["INVALID_ARGUMENT"], "Wait with too many ids");
      check(waitErr.details.includes(String(MAX_BATCH_SIZE)), `the refusal does not state the limit: ${waitErr.details}`);
      const tooMany = ids.map(() => ({ task_type: type }));
      const batchErr = await expectStatus(ctx.call("SubmitBatch", { tasks: tooMany }), ["INVALID_ARGUMENT"], "a batch over the limit");
      check(batchErr.details.includes(String(MAX_BATCH_SIZE)), `the refusal does not state the limit: ${batchErr.details}`);
      // A result over the broker's limit fails the task instead of being stored.
      const huge = ctx.type("huge");
      await ctx.worker({ handlers: { [huge]: () => ({ result: Buffer.alloc(MAX_PAYLOAD_BYTES + 1) }) } });
      const [tooLarge] = await ctx.finished([await ctx.submit({ task_type: huge, retry: { max_attempts: 1 } })]);
      equal([tooLarge.state, tooLarge.error.type], ["TASK_STATE_FAILED", "ResultTooLarge"], "a task with an over-size result");
    },
  },
  // The read and admin side of the contract as it grew after the first v1.
  {
    name: "read_views",
    requires: ["taskbroker.v1.Task.view", "taskbroker.v1.GetTaskRequest.view", "taskbroker.v1.ListTasksRequest.view", "taskbroker.v1.WaitRequest.view"],
    async run(ctx) {
      await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      const id = await ctx.submit({ task_type: ctx.type("echo"), payload: Buffer.from("payload") });
      await ctx.finished([id]);
      const basic = await ctx.call("Get", { task_id: id, view: "TASK_VIEW_BASIC" });
      equal([basic.view, basic.spec.payload.length, basic.result.length, basic.spec.task_type, basic.state], ["TASK_VIEW_BASIC", 0, 0, ctx.type("echo"), "TASK_STATE_SUCCEEDED"], "Get, basic view");
      const full = await ctx.call("Get", { task_id: id, view: "TASK_VIEW_FULL" });
      equal([full.view, full.spec.payload.toString(), full.result.toString()], ["TASK_VIEW_FULL", "payload", "payload"], "Get, full view");
      const plain = await ctx.call("Get", { task_id: id });
      equal([plain.view, plain.result.toString()], ["TASK_VIEW_FULL", "payload"], "Get, no view asked for");
      const [waited] = (await ctx.call("Wait", { task_ids: [id], timeout_s: 1, view: "TASK_VIEW_BASIC" })).tasks;
      equal([waited.view, waited.result.length], ["TASK_VIEW_BASIC", 0], "Wait, basic view");
      const { tasks } = await ctx.call("List", { task_type: ctx.type("echo"), view: "TASK_VIEW_BASIC" });
      equal(tasks.map((t) => [t.id, t.view, t.spec.payload.length]), [[id, "TASK_VIEW_BASIC", 0]], "List, basic view");
    },
  },
  {
    name: "answers_within_max_response_bytes",
    requires: ["taskbroker.v1.BrokerLimits.max_response_bytes", "taskbroker.v1.Task.view"],
    async run(ctx) {
      // Six tasks of 1 MiB each are more than gRPC's usual 4 MiB receive limit (this
      // client's too): Wait and List answer within max_response_bytes, the tasks that do
      // not fit in the basic view, and Get reads each in full.
      const { limits } = await ctx.call("Stats", {});
      const max = Number(limits.max_response_bytes);
      check(max > 0 && max <= 4 * 1024 * 1024, `max_response_bytes ${max}: over what this client receives`);
      const type = ctx.type("big");
      const size = Number(limits.max_payload_bytes);
      const later = String(Date.now() + 3_600_000);
      const ids = [];
      for (let i = 0; i < 6; i += 1) ids.push(await ctx.submit({ task_type: type, payload: Buffer.alloc(size, 97 + i), not_before_ms: later }));
      const waited = await ctx.wait(ids, 0.1);
      equal(waited.map((t) => t.id), ids, "Wait's tasks, in request order");
      const full = waited.filter((t) => t.view !== "TASK_VIEW_BASIC");
      check(full.length >= 1 && full.length < 6, `${full.length} of 6 tasks of ${size} bytes came whole from Wait`);
      equal(waited.slice(0, full.length).map((t) => t.view), full.map(() => "TASK_VIEW_FULL"), "Wait's whole tasks come first");
      for (const task of waited.slice(full.length)) equal([task.view, task.spec.payload.length], ["TASK_VIEW_BASIC", 0], `task ${task.id} left out of Wait for size`);
      const seen = [];
      let token = "";
      do {
        const page = await ctx.call("List", { task_type: type, page_size: 6, page_token: token });
        const bytes = page.tasks.reduce((sum, t) => sum + t.spec.payload.length, 0);
        check(bytes <= max, `a List page carries ${bytes} bytes of payloads`);
        seen.push(...page.tasks.map((t) => t.id));
        token = page.next_page_token;
      } while (token);
      equal(seen.sort(), [...ids].sort(), "the tasks across List's pages");
      for (const id of ids) equal((await ctx.call("Get", { task_id: id })).spec.payload.length, size, `Get(${id})`);
      for (const id of ids) await ctx.call("Cancel", { task_id: id });
    },
  },
  {
    name: "page_tokens",
    requires: ["taskbroker.v1.ListTasksRequest.page_token", "taskbroker.v1.ListPoolsRequest.page_token", "taskbroker.v1.ListWorkersRequest.page_token"],
    async run(ctx) {
      const type = ctx.type("paged");
      const ids = [];
      for (let i = 0; i < 5; i += 1) ids.push(await ctx.submit({ task_type: type, not_before_ms: String(Date.now() + 3_600_000) }));
      const seen = [];
      let token = "";
      let pages = 0;
      do {
        const page = await ctx.call("List", { task_type: type, page_size: 2, page_token: token });
        check(page.tasks.length <= 2, `a page of ${page.tasks.length} tasks for page_size 2`);
        seen.push(...page.tasks.map((t) => t.id));
        token = page.next_page_token;
        pages += 1;
        check(pages <= 5, "the pages never end");
      } while (token);
      equal(seen, [...ids].reverse(), "every task once, newest first, across the pages");
      const first = await ctx.call("List", { task_type: type, page_size: 2 });
      await expectStatus(ctx.call("List", { task_type: ctx.type("other"), page_size: 2, page_token: first.next_page_token }), ["INVALID_ARGUMENT"], "a page token with other filters");
      await expectStatus(ctx.call("List", { task_type: type, page_token: "not a token" }), ["INVALID_ARGUMENT"], "a page token the broker never made");
      for (const id of ids) await ctx.call("Cancel", { task_id: id });
      // Pools and workers page the same way.
      await ctx.call("CreatePool", { pool: { name: `${ctx.type("pool")}` } });
      const pools = [];
      token = "";
      do {
        const page = await ctx.call("ListPools", { page_size: 1, page_token: token });
        equal(page.pools.length, 1, "pools in a page of size 1");
        pools.push(page.pools[0].name);
        token = page.next_page_token;
      } while (token);
      check(pools.includes("default") && pools.includes(ctx.type("pool")), `pools across pages: ${pools}`);
      equal(pools, [...pools].sort(), "pools in name order");
      await ctx.worker({ handlers: { [type]: echo } });
      await ctx.worker({ handlers: { [type]: echo } });
      const page = await ctx.call("ListWorkers", { page_size: 1 });
      check(page.workers.length === 1 && page.next_page_token !== "", "ListWorkers with page_size 1 has a next page");
    },
  },
  {
    name: "update_pool_mask_and_etag",
    requires: ["taskbroker.v1.UpdatePoolRequest.update_mask", "taskbroker.v1.UpdatePoolRequest.etag", "taskbroker.v1.Pool.etag"],
    async run(ctx) {
      const name = ctx.type("pool");
      const created = await ctx.call("CreatePool", { pool: { name, rate_per_s: 50, rate_burst: 10, max_queue: 100 } });
      check(created.etag !== "", "a created pool has no etag");
      // A mask changes exactly the fields it names, to 0 if the request says 0.
      const masked = await ctx.call("UpdatePool", { pool: { name, max_queue: 7, rate_per_s: 0 }, update_mask: { paths: ["rate_per_s"] } });
      equal([masked.rate_per_s, masked.rate_burst, masked.max_queue], [0, 10, 100], "rate_per_s masked to 0, the rest kept");
      check(masked.etag !== created.etag, "the etag did not change with the settings");
      // Without a mask, only fields the request sets change.
      const unmasked = await ctx.call("UpdatePool", { pool: { name, max_inflight: 3 } });
      equal([unmasked.max_inflight, unmasked.rate_burst, unmasked.max_queue], [3, 10, 100], "an update without a mask");
      // A stale etag loses: ABORTED, ErrorInfo ETAG_MISMATCH; the current one wins.
      const err = await expectStatus(ctx.call("UpdatePool", { pool: { name, max_queue: 9 }, etag: masked.etag }), ["ABORTED"], "UpdatePool with a stale etag");
      equal(errorDetails(err).errorInfo?.reason, "ETAG_MISMATCH", "ErrorInfo.reason of a stale etag");
      const fresh = await ctx.call("UpdatePool", { pool: { name, max_queue: 9 }, etag: unmasked.etag });
      equal(fresh.max_queue, 9, "UpdatePool with the current etag");
      await expectStatus(ctx.call("UpdatePool", { pool: { name }, update_mask: { paths: ["no_such_field"] } }), ["INVALID_ARGUMENT"], "a mask naming no Pool field");
      await expectStatus(ctx.call("UpdatePool", { pool: { name }, update_mask: { paths: ["etag"] } }), ["INVALID_ARGUMENT"], "a mask naming etag");
    },
  },
  {
    name: "old_client_read_modify_write",
    requires: ["taskbroker.v1.UpdatePoolRequest.update_mask", "taskbroker.v1.Pool.strategy_kind"],
    async run(ctx) {
      // A current client sets settings; clients built from older .proto files read the
      // pool, change the strategy alone and send the pool back, without a mask.
      const name = ctx.type("pool");
      await ctx.call("CreatePool", { pool: { name, strategy: "round_robin", rate_per_s: 50, rate_burst: 5, rate_mode: "queue" } });
      const older = await olderContract(ctx, ["  double rate_per_s = 18;\n", "  uint32 rate_burst = 19;\n"]);
      for (const [api, strategy] of [[older, "consistent_hash"], [loadApi(FROZEN_DIR), "least_loaded"]]) {
        const clients = connect(api, ctx.address);
        try {
          const { pools } = await unary(clients.admin, "ListPools", {});
          const pool = pools.find((p) => p.name === name);
          pool.strategy = strategy;
          const written = await unary(clients.admin, "UpdatePool", { pool });
          equal(written.strategy, strategy, "the strategy the older client set");
        } finally {
          clients.close();
        }
        const { pools } = await ctx.call("ListPools", {});
        const now = pools.find((p) => p.name === name);
        equal([now.strategy, now.strategy_kind, now.rate_per_s, now.rate_burst, now.rate_mode, now.rate_mode_kind], [strategy, `STRATEGY_${strategy.toUpperCase()}`, 50, 5, "queue", "RATE_MODE_QUEUE"], `the pool after an older client's update (${api === older ? "without rate_per_s" : "frozen v1"})`);
      }
    },
  },
  {
    name: "error_details",
    requires: ["taskbroker.v1.StatsResponse.limits", "taskbroker.v1.BrokerLimits.max_payload_bytes"],
    async run(ctx) {
      const { limits } = await ctx.call("Stats", {});
      const big = Buffer.alloc(Number(limits.max_payload_bytes) + 1);
      const err = await expectStatus(ctx.call("Submit", { task: { task_type: ctx.type("echo"), payload: big } }), ["INVALID_ARGUMENT"], "an over-size payload");
      const details = errorDetails(err);
      check(details.status, "no google.rpc.Status in grpc-status-details-bin");
      equal([details.status.code, details.errorInfo?.domain, details.errorInfo?.reason], [grpc.status.INVALID_ARGUMENT, "taskbroker", "OVER_LIMIT"], "Status and ErrorInfo");
      check(details.badRequest?.field_violations.some((v) => /payload/.test(v.field)), `BadRequest names no payload field: ${JSON.stringify(details.badRequest)}`);
      equal(details.pushbackMs, -1, "grpc-retry-pushback-ms of a request never to retry");
      // BadRequest names the request field where the broker knows it (tasks.proto).
      for (const [method, request, field] of [["Get", { task_id: "013" }, "task_id"], ["List", { page_token: "not a token" }, "page_token"], ["List", { page_size: 100_000 }, "page_size"]]) {
        const refused = await expectStatus(ctx.call(method, request), ["INVALID_ARGUMENT"], `${method}(${JSON.stringify(request)})`);
        equal(errorDetails(refused).badRequest?.field_violations.map((v) => v.field), [field], `BadRequest of ${method}(${JSON.stringify(request)})`);
      }
      // Every failure has an ErrorInfo of the taskbroker domain, even without a field.
      const bad = await expectStatus(ctx.call("Submit", { task: { task_type: ctx.type("echo"), priority: 5000 } }), ["INVALID_ARGUMENT"], "an out-of-range priority");
      equal(errorDetails(bad).errorInfo?.domain, "taskbroker", "ErrorInfo.domain of an out-of-range priority");
      const missing = await expectStatus(ctx.call("Get", { task_id: "999999999" }), ["NOT_FOUND"], "an unknown task");
      equal(errorDetails(missing).errorInfo?.reason, "NOT_FOUND", "ErrorInfo.reason of an unknown task");
    },
  },
  {
    name: "overload_pushback",
    requires: ["taskbroker.v1.StatsResponse.limits"],
    async run(ctx) {
      // A full queue is transient: RESOURCE_EXHAUSTED with a pushback and RetryInfo. A
      // batch bigger than the queue can ever take is not: INVALID_ARGUMENT, do not retry.
      const pool = ctx.type("pool");
      await ctx.call("CreatePool", { pool: { name: pool, max_queue: 2 } });
      const spec = { task_type: ctx.type("queued"), pool };
      await ctx.call("SubmitBatch", { tasks: [spec, spec] });
      const full = await expectStatus(ctx.call("Submit", { task: spec }), ["RESOURCE_EXHAUSTED"], "a submit to a full queue");
      const details = errorDetails(full);
      equal(details.errorInfo?.reason, "QUEUE_FULL", "ErrorInfo.reason of a full queue");
      check(details.pushbackMs >= 0, `grpc-retry-pushback-ms of a full queue: ${details.pushbackMs}`);
      check(details.retryInfo && details.retryInfo.retry_delay, "no RetryInfo for a full queue");
      const never = await expectStatus(ctx.call("SubmitBatch", { tasks: [spec, spec, spec] }), ["INVALID_ARGUMENT"], "a batch bigger than the queue");
      equal([errorDetails(never).errorInfo?.reason, errorDetails(never).pushbackMs], ["OVER_LIMIT", -1], "a batch bigger than the queue: reason and pushback");
    },
  },
  {
    name: "strict_ids",
    requires: ["taskbroker.v1.GetTaskRequest.view"],
    async run(ctx) {
      const id = await ctx.submit({ task_type: ctx.type("idle"), not_before_ms: String(Date.now() + 3_600_000) });
      equal((await ctx.call("Get", { task_id: id })).id, id, "Get of the id as given");
      for (const text of [`0${id}`, `+${id}`, ` ${id}`, `${id}.0`, "0", "-1", "abc", "", "99999999999999999999"]) {
        await expectStatus(ctx.call("Get", { task_id: text }), ["INVALID_ARGUMENT"], `Get(${JSON.stringify(text)})`);
      }
      await expectStatus(ctx.call("Wait", { task_ids: [id, `0${id}`], timeout_s: 0.1 }), ["INVALID_ARGUMENT"], "Wait with a loosely written id");
      await ctx.call("Cancel", { task_id: id });
    },
  },
  {
    name: "idempotency_conflict",
    requires: ["taskbroker.v1.Task.terminal"],
    async run(ctx) {
      const key = `${RUN}-conflict`;
      const spec = { task_type: ctx.type("idle"), payload: Buffer.from("one"), idempotency_key: key, not_before_ms: String(Date.now() + 3_600_000) };
      const first = await ctx.call("Submit", { task: spec });
      const again = await ctx.call("Submit", { task: spec });
      equal([again.task_id, again.existing], [first.task_id, true], "the same task again");
      const err = await expectStatus(ctx.call("Submit", { task: { ...spec, payload: Buffer.from("two") } }), ["ALREADY_EXISTS"], "the key with another payload");
      equal(errorDetails(err).errorInfo?.reason, "IDEMPOTENCY_KEY_REUSED", "ErrorInfo.reason");
      await expectStatus(ctx.call("SubmitBatch", { tasks: [{ task_type: ctx.type("idle") }, { ...spec, task_type: ctx.type("other") }] }), ["ALREADY_EXISTS"], "a batch reusing the key for another type");
      await ctx.call("Cancel", { task_id: first.task_id });
    },
  },
  {
    name: "terminal",
    requires: ["taskbroker.v1.Task.terminal"],
    async run(ctx) {
      const type = ctx.type("mixed");
      const handler = (a) => (a.payload.toString() === "ok" ? { result: Buffer.from("ok") } : { error: { type: "Bad", message: "no" } });
      await ctx.worker({ handlers: { [type]: handler } });
      const pending = await ctx.submit({ task_type: type, not_before_ms: String(Date.now() + 3_600_000) });
      const [waiting] = await ctx.wait([pending], 0.1);
      equal([waiting.state, waiting.terminal], ["TASK_STATE_PENDING", false], "a pending task");
      await ctx.call("Cancel", { task_id: pending });
      const ids = await Promise.all([
        ctx.submit({ task_type: type, payload: Buffer.from("ok") }),
        ctx.submit({ task_type: type, payload: Buffer.from("bad"), retry: { max_attempts: 1 } }),
        ctx.submit({ task_type: type, payload: Buffer.from("bad"), retry: { max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.01 } }),
      ]);
      const tasks = await ctx.wait([pending, ...ids]);
      equal(tasks.map((t) => [t.state, t.terminal]), [["TASK_STATE_CANCELLED", true], ["TASK_STATE_SUCCEEDED", true], ["TASK_STATE_FAILED", true], ["TASK_STATE_DEAD_LETTER", true]], "terminal states");
    },
  },
  {
    name: "reflection_v1",
    requires: ["taskbroker.v1.Task.terminal"],
    async run(ctx) {
      for (const version of ["v1", "v1alpha"]) {
        const services = await listServices(ctx.address, version);
        for (const service of ["taskbroker.v1.TaskService", "taskbroker.v1.WorkerService", "taskbroker.v1.AdminService"]) {
          check(services.includes(service), `reflection ${version} does not list ${service}: ${services}`);
        }
      }
    },
  },
  {
    name: "submit_stream_acks_every_message",
    requires: ["taskbroker.v1.SubmitStreamRequest.completion_view"],
    async run(ctx) {
      await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      const stream = ctx.clients.tasks.SubmitStream(callMetadata());
      const acks = new Map();
      const completed = new Map();
      stream.on("data", (message) => {
        if (message.kind === "ack") acks.set(message.ack.batch_id, message.ack);
        else for (const task of message.completions.tasks) completed.set(task.id, task);
      });
      stream.on("error", () => {});
      const id = await ctx.submit({ task_type: ctx.type("echo"), payload: Buffer.from("big enough") });
      // A message with no tasks, only a watch list, is acked too (task_ids empty); its
      // notices come in the view it asked for.
      stream.write({ batch_id: "7", watch_task_ids: [id], completion_view: "TASK_VIEW_BASIC" });
      await until("the ack of a message without tasks", () => acks.has("7"));
      equal([acks.get("7").error_code, acks.get("7").task_ids], [0, []], "the ack of a watch-only message");
      await until("the notice", () => completed.has(id));
      const notice = completed.get(id);
      equal([notice.state, notice.view, notice.spec.payload.length, notice.result.length], ["TASK_STATE_SUCCEEDED", "TASK_VIEW_BASIC", 0, 0], "a basic completion notice");
      stream.write({ batch_id: "8" });
      await until("the ack of an empty message", () => acks.has("8"));
      stream.end();
    },
  },
  // The worker stream as it grew after the first v1.
  {
    name: "register_ack_limits",
    requires: ["taskbroker.v1.RegisterAck.max_capacity", "taskbroker.v1.RegisterAck.resume_token", "taskbroker.v1.StatsResponse.limits"],
    async run(ctx) {
      const worker = await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      const ack = worker.ack;
      for (const field of ["max_result_bytes", "max_message_bytes", "max_task_ids", "max_batch_size", "max_wait_ids", "max_traceback_chars", "max_capacity", "resume_window_s"]) {
        check(Number(ack[field]) > 0, `RegisterAck.${field} is ${ack[field]}`);
      }
      check(ack.results_renew_liveness, "RegisterAck.results_renew_liveness is not set");
      check(ack.resume_token !== "" && !ack.resumed, "a new session has no resume token, or says resumed");
      const { limits } = await ctx.call("Stats", {});
      equal([ack.max_result_bytes, ack.max_batch_size], [limits.max_result_bytes, limits.max_batch_size], "RegisterAck and Stats.limits agree");
      check(Number(ack.max_message_bytes) >= Number(limits.max_payload_bytes), "max_message_bytes is below max_payload_bytes");
      // The Wait limit it states is the one Wait enforces.
      const ids = Array.from({ length: ack.max_wait_ids + 1 }, (_, i) => String(900_000_000 + i));
      await expectStatus(ctx.call("Wait", { task_ids: ids, timeout_s: 0.1 }), ["INVALID_ARGUMENT"], "Wait with max_wait_ids + 1 ids");
      await expectStatus(ctx.call("Wait", { task_ids: ids.slice(1), timeout_s: 0.1 }), ["NOT_FOUND"], "Wait with max_wait_ids unknown ids");
      // The capacity limit it states is the one it enforces.
      await ctx.worker({ capacity: ack.max_capacity, handlers: { [ctx.type("echo")]: echo } });
      const over = new Worker(ctx.api, ctx.address, { workerId: ctx.workerId("over"), capacity: ack.max_capacity + 1, handlers: { [ctx.type("echo")]: echo } });
      ctx.workers.push(over);
      const err = await over.start().then(() => null, (e) => e);
      check(err && grpc.status[err.code] === "INVALID_ARGUMENT", `a capacity over max_capacity: ${err && grpc.status[err.code]}`);
      const credited = await ctx.worker({ handlers: { [ctx.type("echo")]: echo } });
      credited.credit(ack.max_capacity + 1);
      await credited.ended;
      equal(credited.error && grpc.status[credited.error.code], "INVALID_ARGUMENT", "the stream after a Credit over max_capacity");
      // The lease is the pool's, where it sets one.
      const pool = ctx.type("pool");
      await ctx.call("CreatePool", { pool: { name: pool, lease_s: 3 } });
      equal((await ctx.worker({ pool, handlers: { [ctx.type("echo")]: echo } })).ack.lease_s, 3, "RegisterAck.lease_s in a pool with lease_s 3");
    },
  },
  {
    name: "any_message_is_a_sign_of_life",
    requires: ["taskbroker.v1.RegisterAck.results_renew_liveness", "taskbroker.v1.RegisterAck.heartbeat_timeout_s"],
    async run(ctx) {
      // A worker that sends no Heartbeat but other messages (here Credit) stays connected
      // past heartbeat_timeout_s.
      const worker = await ctx.worker({ heartbeats: false, handlers: { [ctx.type("echo")]: echo } });
      const timeout = worker.ack.heartbeat_timeout_s;
      check(timeout > 0 && timeout <= 3, `heartbeat_timeout_s ${timeout}: the broker under test should have a short one`);
      const end = Date.now() + timeout * 1000 + 500;
      while (Date.now() < end) {
        worker.credit(1);
        await new Promise((resolve) => setTimeout(resolve, (worker.ack.heartbeat_interval_s * 1000) / 2));
      }
      check(!worker.error, `the worker was dropped: ${worker.error && worker.error.details}`);
      check(await ctx.workerStatus(worker.register.worker_id), "ListWorkers no longer lists the worker");
    },
  },
  {
    name: "zero_credit_registration",
    requires: ["taskbroker.v1.RegisterAck.max_capacity"],
    async run(ctx) {
      const block = gate();
      const type = ctx.type("paused");
      const worker = await ctx.worker({ capacity: 0, handlers: { [type]: block.handler } });
      equal((await ctx.workerStatus(worker.register.worker_id)).capacity, 0, "the capacity of a worker registered paused");
      const id = await ctx.submit({ task_type: type });
      const [waiting] = await ctx.wait([id], 0.5);
      equal(waiting.state, "TASK_STATE_PENDING", "a task for a worker registered with credit 0");
      worker.credit(1);
      await until("the task to run after Credit 1", () => block.waiting.length === 1);
      block.releaseAll();
      await ctx.finished([id]);
    },
  },
  {
    name: "results_dropped",
    requires: ["taskbroker.v1.ResultsDropped.results", "taskbroker.v1.DroppedResult.reason"],
    async run(ctx) {
      const block = gate();
      const type = ctx.type("block");
      const worker = await ctx.worker({ capacity: 2, handlers: { [type]: block.handler } });
      const held = await ctx.submit({ task_type: type });
      await until("the task to run", () => block.waiting.length === 1);
      const ok = (task_id, attempt) => ({ task_id, attempt, success: true, result: Buffer.from("late") });
      worker.sendResult(ok("999999999", 1));
      worker.sendResult(ok(held, 7));
      await until("two dropped results", () => worker.dropped.length >= 2);
      const reasons = Object.fromEntries(worker.dropped.map((d) => [`${d.task_id}/${d.attempt}`, d.reason]));
      equal(reasons, { "999999999/1": "DROP_REASON_UNKNOWN_TASK", [`${held}/7`]: "DROP_REASON_WRONG_ATTEMPT" }, "drop reasons");
      // The task is still the worker's: the wrong attempt's result changed nothing.
      equal((await ctx.call("Get", { task_id: held })).state, "TASK_STATE_RUNNING", "the task after a wrong attempt's result");
      await ctx.call("Cancel", { task_id: held });
      await until("CancelTasks", () => worker.cancels.includes(held));
      worker.sendResult(ok(held, 1));
      await until("the cancelled task's result dropped", () => worker.dropped.length >= 3);
      const last = worker.dropped[2];
      equal([last.task_id, last.attempt, last.reason], [held, 1, "DROP_REASON_CANCELLED"], "a result for a cancelled task");
      equal((await ctx.call("Get", { task_id: held })).state, "TASK_STATE_CANCELLED", "the cancelled task after its result");
      // Another worker's task is not this worker's to finish.
      const other = await ctx.submit({ task_type: type });
      await until("the other task to run", () => block.waiting.length === 2);
      const stranger = await ctx.worker({ capacity: 0, handlers: { [type]: block.handler } });
      stranger.sendResult(ok(other, 1));
      await until("a result for a task held elsewhere dropped", () => stranger.dropped.length === 1);
      equal(stranger.dropped[0].reason, "DROP_REASON_NOT_HELD", "a result for another worker's task");
      block.releaseAll();
      await ctx.finished([other]);
    },
  },
  {
    name: "cancel_names_the_attempt",
    requires: ["taskbroker.v1.CancelTasks.tasks"],
    async run(ctx) {
      // An attempt past its execution timeout is cancelled and the task assigned again,
      // possibly to the same worker: the cancel names the attempt it stops.
      const type = ctx.type("slow");
      const handler = (a, { signal }) => (a.attempt === 1 ? new Promise((resolve) => signal.addEventListener("abort", () => resolve({ error: { type: "Aborted", message: "" } }))) : { result: Buffer.from(`attempt ${a.attempt}`) });
      const worker = await ctx.worker({ capacity: 2, handlers: { [type]: handler } });
      const id = await ctx.submit({ task_type: type, execution_timeout_s: 0.3, retry: { max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.01 } });
      const [task] = await ctx.finished([id]);
      equal([task.state, task.attempts, task.result.toString()], ["TASK_STATE_SUCCEEDED", 2, "attempt 2"], "the task after a timed-out attempt");
      equal(worker.cancelled.filter((c) => c.task_id === id).map((c) => c.attempt), [1], "attempts cancelled");
      equal(worker.assignments.filter((a) => a.task_id === id).map((a) => a.attempt), [1, 2], "attempts assigned");
    },
  },
  {
    name: "drain_deadline_and_close",
    requires: ["taskbroker.v1.Drain.deadline_ms", "taskbroker.v1.Drain.kind"],
    async run(ctx) {
      // The broker ends a drained stream itself: once the worker holds nothing, or at the
      // deadline, when what it still holds is requeued.
      const block = gate();
      const type = ctx.type("block");
      const done = await ctx.worker({ capacity: 1, closeOnDrain: false, handlers: { [type]: block.handler } });
      const first = await ctx.submit({ task_type: type });
      await until("the task to run", () => block.waiting.length === 1);
      const before = Date.now();
      await ctx.call("DrainWorker", { worker_id: done.register.worker_id });
      await done.drained;
      const [drain] = done.drainMessages;
      equal(drain.kind, "DRAIN_REASON_OPERATOR", "Drain.kind");
      check(Number(drain.deadline_ms) > before, `Drain.deadline_ms ${drain.deadline_ms} is not in the future`);
      block.releaseAll();
      await done.ended;
      check(done.status && done.status.code === grpc.status.OK, `the broker ended the stream with ${done.status && grpc.status[done.status.code]}`);
      equal((await ctx.finished([first]))[0].state, "TASK_STATE_SUCCEEDED", "the held task");
      // Held past the deadline: the stream ends at the deadline and the task runs again.
      const stuck = await ctx.worker({ capacity: 1, closeOnDrain: false, handlers: { [type]: () => new Promise(() => {}) } });
      const second = await ctx.submit({ task_type: type });
      await until("the second task to run", () => stuck.assignments.length === 1);
      await ctx.call("DrainWorker", { worker_id: stuck.register.worker_id });
      await stuck.drained;
      const deadline = Number(stuck.drainMessages[0].deadline_ms);
      check(deadline - Date.now() < 5_000, `a drain deadline ${deadline - Date.now()} ms away: the broker under test should drain quickly`);
      await stuck.ended;
      check(Date.now() >= deadline - 100, "the stream ended before the drain deadline");
      equal(stuck.status && grpc.status[stuck.status.code], "OK", "status of a stream ended at its drain deadline");
      const rescuer = await ctx.worker({ handlers: { [type]: echo } });
      const [task] = await ctx.finished([second]);
      equal([task.state, task.attempts, task.worker_id], ["TASK_STATE_SUCCEEDED", 2, rescuer.register.worker_id], "a task held past the drain deadline");
    },
  },
  {
    name: "session_resumption",
    requires: ["taskbroker.v1.Register.resume_token", "taskbroker.v1.RegisterAck.resumed"],
    async run(ctx) {
      const type = ctx.type("held");
      const runs = [];
      const first = gate();
      const workerId = ctx.workerId("resumed");
      const before = await ctx.worker({ workerId, handlers: { [type]: (a, s) => (runs.push(a.attempt), first.handler(a, s)) } });
      const id = await ctx.submit({ task_type: type });
      await until("the task to run", () => first.waiting.length === 1);
      // The connection breaks; the worker process still runs the task, and reconnects.
      const { assignment } = first.waiting[0];
      before.forget(id);
      await before.kill();
      const after = await ctx.worker({ workerId, resumeToken: before.ack.resume_token, handlers: { [type]: echo } });
      check(after.ack.resumed, "RegisterAck.resumed of a resumed session");
      after.adopt(assignment);
      after.sendResult({ task_id: id, attempt: assignment.attempt, success: true, result: Buffer.from("once") });
      after.release(id);
      const [task] = await ctx.finished([id]);
      equal([task.state, task.attempts, task.result.toString(), runs], ["TASK_STATE_SUCCEEDED", 1, "once", [1]], "the task across the reconnect");
      equal(after.dropped, [], "results dropped after resuming");
      // A stale stream for the id is replaced by one that shows the token, refused otherwise.
      const impostor = new Worker(ctx.api, ctx.address, { workerId, handlers: { [type]: echo } });
      ctx.workers.push(impostor);
      const refused = await impostor.start().then(() => null, (e) => e);
      equal(refused && grpc.status[refused.code], "ALREADY_EXISTS", "a second stream for the id without the token");
      const replacement = await ctx.worker({ workerId, resumeToken: after.ack.resume_token, handlers: { [type]: echo } });
      await after.ended;
      equal(after.error && grpc.status[after.error.code], "ALREADY_EXISTS", "the replaced stream's end");
      check(replacement.ack.resumed, "the replacing stream did not resume");
      // Registered again without the token, the id starts afresh: what its last stream
      // held runs again (next attempt), here or elsewhere.
      const held = gate();
      const lost = await ctx.worker({ workerId: ctx.workerId("afresh"), handlers: { [type]: held.handler } });
      await replacement.kill();
      const second = await ctx.submit({ task_type: type });
      await until("the task to run", () => held.waiting.length === 1);
      lost.forget(second);
      await lost.kill();
      const killed = Date.now();
      const fresh = await ctx.worker({ workerId: ctx.workerId("afresh"), handlers: { [type]: (a) => ({ result: Buffer.from(`attempt ${a.attempt}`) }) } });
      check(!fresh.ack.resumed, "a registration without the token resumed");
      const [again] = await ctx.finished([second]);
      equal([again.state, again.attempts, again.result.toString()], ["TASK_STATE_SUCCEEDED", 2, "attempt 2"], "the task of a session not resumed");
      const took = Date.now() - killed;
      check(took < lost.ack.resume_window_s * 1000, `the task waited ${took} ms, the resume window (${lost.ack.resume_window_s} s)`);
    },
  },
  {
    name: "leave",
    requires: ["taskbroker.v1.WorkerMessage.leave", "taskbroker.v1.RegisterAck.resume_window_s"],
    async run(ctx) {
      // A worker that says it will not resume has its tasks requeued at once, not kept
      // for the resume window.
      const type = ctx.type("left");
      const leaving = await ctx.worker({ handlers: { [type]: () => new Promise(() => {}) } });
      const id = await ctx.submit({ task_type: type });
      await until("the task to run", () => leaving.assignments.length === 1);
      const left = Date.now();
      leaving.forget(id);
      await leaving.leave();
      const rescuer = await ctx.worker({ handlers: { [type]: echo } });
      const [task] = await ctx.finished([id]);
      equal([task.state, task.attempts, task.worker_id], ["TASK_STATE_SUCCEEDED", 2, rescuer.register.worker_id], "the task of a worker that left");
      const took = Date.now() - left;
      check(took < leaving.ack.resume_window_s * 1000, `the task waited ${took} ms, the resume window (${leaving.ack.resume_window_s} s)`);
    },
  },
  {
    name: "broker_timestamps",
    requires: ["taskbroker.v1.Task.result_content_type", "taskbroker.v1.RegisterAck.resume_token"],
    async run(ctx) {
      // A worker's clock is used only where nothing else is known, and clamped.
      const type = ctx.type("clock");
      await ctx.worker({ startNotices: false, handlers: { [type]: () => ({ result: Buffer.from("x"), started_at_ms: 1000, finished_at_ms: 2000 }) } });
      const before = Date.now();
      const [task] = await ctx.finished([await ctx.submit({ task_type: type })]);
      const after = Date.now();
      const [assigned, started, finished] = [task.assigned_at_ms, task.started_at_ms, task.finished_at_ms].map(Number);
      check(assigned >= before - 1000 && assigned <= after, `assigned_at_ms ${assigned}`);
      check(started >= assigned && started <= finished, `started_at_ms ${started} is outside [${assigned}, ${finished}]`);
      check(finished >= before - 1000 && finished <= after + 1000, `finished_at_ms ${finished} is not the broker's time`);
    },
  },
  {
    name: "task_error_types",
    requires: ["taskbroker.v1.TaskError.retryable", "taskbroker.v1.TaskError.task_fault", "taskbroker.v1.TaskError.broker_type"],
    async run(ctx) {
      const type = ctx.type("errors");
      const handler = (a) => {
        const [kind] = a.payload.toString().split(":");
        if (kind === "permanent") return { error: { type: "Permanent", message: "never", retryable: false } };
        if (kind === "transient") return { error: { type: "Transient", message: `attempt ${a.attempt}`, retryable: true } };
        return { error: { type: "BadPayload", message: "the task's fault", task_fault: true } };
      };
      // Handler errors count against a worker's breaker only when it serves one type
      // (admin.proto, Pool.breaker_failures); this one serves two.
      await ctx.worker({ handlers: { [type]: handler, [ctx.type("echo")]: echo } });
      const retry = { max_attempts: 3, initial_backoff_s: 0.01, max_backoff_s: 0.01, retryable_errors: ["Other"] };
      const [permanent, transient] = await ctx.finished([
        await ctx.submit({ task_type: type, payload: Buffer.from("permanent"), retry: { max_attempts: 3, initial_backoff_s: 0.01, max_backoff_s: 0.01 } }),
        await ctx.submit({ task_type: type, payload: Buffer.from("transient"), retry }),
      ]);
      equal([permanent.state, permanent.attempts], ["TASK_STATE_FAILED", 1], "a failure the worker marks not retryable");
      equal([transient.state, transient.attempts], ["TASK_STATE_DEAD_LETTER", 3], "a failure the worker marks retryable, of a type the policy does not name");
      equal([permanent.error.broker_type, permanent.error.retryable], ["BROKER_TYPE_UNSPECIFIED", undefined], "a worker's error as kept");
      // Failures that are the task's fault do not count against the worker's breaker;
      // others do.
      const pool = ctx.type("pool");
      await ctx.call("CreatePool", { pool: { name: pool, breaker_failures: 5 } });
      const single = await ctx.worker({ pool, handlers: { [type]: handler } });
      for (let i = 0; i < 3; i += 1) await ctx.finished([await ctx.submit({ pool, task_type: type, payload: Buffer.from(`fault:${i}`), retry: { max_attempts: 1 } })]);
      let status = await ctx.workerStatus(single.register.worker_id);
      equal([status.breaker_state, status.consecutive_failures], ["BREAKER_STATE_CLOSED", 0], "the breaker after failures that are the task's fault");
      await ctx.finished([await ctx.submit({ pool, task_type: type, payload: Buffer.from("permanent"), retry: { max_attempts: 1 } })]);
      status = await ctx.workerStatus(single.register.worker_id);
      equal(status.consecutive_failures, 1, "consecutive_failures after a failure that is not the task's fault");
      // The broker's own types come with broker_type.
      const cancelled = await ctx.submit({ task_type: type, not_before_ms: String(Date.now() + 3_600_000) });
      const { task } = await ctx.call("Cancel", { task_id: cancelled });
      equal([task.error.type, task.error.broker_type], ["Cancelled", "BROKER_TYPE_CANCELLED"], "a cancelled task's error");
      const expired = await ctx.submit({ task_type: ctx.type("nobody"), start_timeout_s: 0.2 });
      const [late] = await ctx.finished([expired]);
      equal([late.state, late.error.type, late.error.broker_type], ["TASK_STATE_FAILED", "DeadlineExceeded", "BROKER_TYPE_DEADLINE_EXCEEDED"], "a task no worker took in time");
    },
  },
  {
    name: "content_types",
    requires: ["taskbroker.v1.TaskSpec.payload_content_type", "taskbroker.v1.Assignment.payload_content_type", "taskbroker.v1.TaskResult.result_content_type"],
    async run(ctx) {
      const type = ctx.type("json");
      const worker = await ctx.worker({ handlers: { [type]: (a) => ({ result: Buffer.from("\"ok\""), result_content_type: "application/json" }) } });
      const id = await ctx.submit({ task_type: type, payload: Buffer.from("{}"), payload_content_type: "application/json" });
      const [task] = await ctx.finished([id]);
      equal(worker.assignments[0].payload_content_type, "application/json", "Assignment.payload_content_type");
      equal([task.spec.payload_content_type, task.result_content_type], ["application/json", "application/json"], "the task's content types");
      const [plain] = await ctx.finished([await ctx.submit({ task_type: type, payload: Buffer.from("x") })]);
      equal(plain.spec.payload_content_type, "", "a payload whose type was not said");
    },
  },
  // Run only when named (it needs a broker that the test then stops): prints
  // `READY broker_stopping` once its worker holds a task, for the test to stop the broker.
  {
    name: "broker_stopping",
    explicit: true,
    async run(ctx) {
      // Before it stops, the broker drains its workers: finish, then reconnect.
      const block = gate();
      const type = ctx.type("block");
      const worker = await ctx.worker({ closeOnDrain: false, handlers: { [type]: block.handler } });
      const id = await ctx.submit({ task_type: type });
      await until("the task to run", () => block.waiting.length === 1);
      console.log("READY broker_stopping");
      await until("a Drain", () => worker.drainMessages.length > 0, 20_000);
      const [drain] = worker.drainMessages;
      if (ctx.api.has("taskbroker.v1.Drain.kind")) {
        equal(drain.kind, "DRAIN_REASON_BROKER_STOPPING", "Drain.kind of a stopping broker");
        check(Number(drain.deadline_ms) >= Date.now() - 1000, `Drain.deadline_ms ${drain.deadline_ms}`);
      }
      // The held task's result is still taken; then the broker ends the stream itself,
      // with UNAVAILABLE: reconnect (worker.proto, Drain).
      const running = await ctx.call("Get", { task_id: id });
      equal(running.state, "TASK_STATE_RUNNING", "the held task when the broker drains");
      block.releaseAll();
      await worker.ended;
      equal(worker.status && grpc.status[worker.status.code], "UNAVAILABLE", "the status the stopping broker ends the stream with");
      check(!worker.dropped.length, `results dropped: ${JSON.stringify(worker.dropped)}`);
    },
  },
];

function missingFor(api, requires = []) {
  return requires.filter((need) => !api.has(need));
}

function plan(protoDir) {
  const api = loadApi(protoDir);
  for (const { name, requires, explicit } of CHECKS) {
    const missing = missingFor(api, requires);
    if (explicit) console.log(`ONLY-WHEN-NAMED ${name}`);
    else console.log(missing.length ? `SKIP ${name}: the contract has no ${missing.join(", ")}` : `RUN ${name}`);
  }
}

async function main() {
  if (process.argv[2] === "--plan") return plan(process.argv[3]);
  const [protoDir, address, ...only] = process.argv.slice(2);
  if (!protoDir || !address) {
    console.error("usage: node conformance.js <proto dir> <broker address> [check...]");
    process.exit(2);
  }
  const api = loadApi(protoDir);
  const counts = { passed: 0, failed: 0, skipped: 0 };
  for (const { name, requires = [], run, explicit } of CHECKS) {
    if (only.length ? !only.includes(name) : explicit) continue;
    const missing = missingFor(api, requires);
    if (missing.length) {
      console.log(`SKIP ${name}: the contract has no ${missing.join(", ")}`);
      counts.skipped += 1;
      continue;
    }
    const ctx = new Context(api, address, name);
    const started = Date.now();
    try {
      await run(ctx);
      console.log(`PASS ${name} (${Date.now() - started} ms)`);
      counts.passed += 1;
    } catch (err) {
      const reason = err instanceof CheckFailed ? err.message : err.stack;
      console.log(`FAIL ${name}: ${reason}`);
      counts.failed += 1;
    } finally {
      await ctx.cleanup();
    }
  }
  console.log(`conformance: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
  process.exit(counts.failed ? 1 : 0);
}

main();
