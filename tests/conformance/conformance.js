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
const { loadApi, connect, unary, grpc } = require("./lib/api");
const { Worker } = require("./lib/worker");

const TERMINAL = ["TASK_STATE_SUCCEEDED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED", "TASK_STATE_DEAD_LETTER"];
// The broker's defaults (config, not the wire: the first v1 does not advertise them).
const MAX_PAYLOAD_BYTES = 1024 * 1024;
const MAX_BATCH_SIZE = 1000; // tasks in a SubmitBatch, ids in a Wait
const WAIT_MS = 15_000;
// Task types, worker ids and idempotency keys carry this run's tag, so that runs can share
// a broker.
const RUN = Date.now().toString(36);

class CheckFailed extends Error {}

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
];

function missingFor(api, requires = []) {
  return requires.filter((need) => !api.has(need));
}

function plan(protoDir) {
  const api = loadApi(protoDir);
  for (const { name, requires } of CHECKS) {
    const missing = missingFor(api, requires);
    console.log(missing.length ? `SKIP ${name}: the contract has no ${missing.join(", ")}` : `RUN ${name}`);
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
  for (const { name, requires = [], run } of CHECKS) {
    if (only.length && !only.includes(name)) continue;
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
