// A Taskbroker worker on the WorkerService.Connect stream, as worker.proto describes it:
// Register first; then heartbeats every heartbeat_interval_s listing the tasks held (the
// ones assigned and not yet answered with a result); a start notice and a result per task;
// Credit to change how many tasks run at once; CancelTasks stops tasks without a result;
// after Drain, finish what is held and disconnect.
"use strict";

const { connect, callMetadata } = require("./api");

class Worker {
  // handlers: task_type -> async (assignment, { signal }) => ({ result: Buffer }) or
  // ({ error: { type, message } }); `signal` aborts when the broker cancels the task.
  // resumeToken: a RegisterAck.resume_token of this worker id's earlier stream.
  // startNotices: send a start notice per assignment (as a worker should).
  // heartbeats: send a Heartbeat every heartbeat_interval_s (as a worker should).
  // closeOnDrain: half-close once drained and holding nothing (else the broker ends it).
  constructor(
    api,
    address,
    { workerId = "", pool = "", capacity = 1, labels = {}, handlers, log = () => {}, resumeToken = "", startNotices = true, closeOnDrain = true, heartbeats = true },
  ) {
    this.api = api;
    this.address = address;
    this.register = { worker_id: workerId, pool, labels, capacity, task_types: Object.keys(handlers), sdk_version: "conformance-js" };
    if (resumeToken) this.register.resume_token = resumeToken;
    this.startNotices = startNotices;
    this.closeOnDrain = closeOnDrain;
    this.heartbeats = heartbeats; // false: send none (to test the broker's liveness rules)
    this.handlers = handlers;
    this.log = log;
    this.held = new Map(); // task id -> { attempt, abort }
    this.maxHeld = 0;
    this.seen = "0"; // seq of the last Assignments message, echoed in heartbeats
    this.assignments = []; // every Assignment received, in order
    this.cancels = []; // every task id cancelled by the broker
    this.drains = []; // reasons of every Drain received
    this.drainMessages = []; // every Drain received, whole
    this.cancelled = []; // every CancelledTask (task id and attempt) received
    this.dropped = []; // every DroppedResult received
    this.ack = null;
    this.claimed = []; // ids listed in heartbeats though not held (to test the broker)
    this.ended = new Promise((resolve) => (this._ended = resolve));
    this.drained = new Promise((resolve) => (this._drained = resolve));
  }

  // Connect and register; resolves with the RegisterAck, rejects with the stream's error.
  start() {
    this.clients = connect(this.api, this.address);
    this.stream = this.clients.workers.Connect(callMetadata());
    return new Promise((resolve, reject) => {
      this.stream.on("data", (message) => {
        try {
          this._receive(message, resolve);
        } catch (err) {
          this.log(`worker ${this.register.worker_id}: ${err.stack}`);
        }
      });
      this.stream.on("status", (status) => (this.status = status));
      this.stream.on("error", (err) => {
        this.error = err;
        reject(err);
        this._finish();
      });
      this.stream.on("end", () => {
        reject(new Error("stream ended before RegisterAck"));
        this._finish();
      });
      this.stream.write({ register: this.register });
    });
  }

  _finish() {
    clearInterval(this.timer);
    for (const { abort } of this.held.values()) abort.abort();
    this._ended();
    if (this.clients) this.clients.close();
  }

  _receive(message, registered) {
    switch (message.kind) {
      case "register_ack":
        this.ack = message.register_ack;
        if (this.heartbeats) this.timer = setInterval(() => this.heartbeat(), this.ack.heartbeat_interval_s * 1000);
        registered(this.ack);
        break;
      case "assignments":
        this.seen = message.assignments.seq;
        for (const assignment of message.assignments.assignments) this._run(assignment);
        break;
      case "cancel": {
        // Newer brokers name the attempt of each cancelled task: only that attempt stops.
        const attempts = new Map((message.cancel.tasks || []).map((t) => [t.task_id, t.attempt]));
        this.cancelled.push(...(message.cancel.tasks || []));
        for (const id of message.cancel.task_ids) {
          this.cancels.push(id);
          const task = this.held.get(id);
          if (task && (!attempts.get(id) || attempts.get(id) === task.attempt)) {
            this.held.delete(id);
            task.abort.abort();
          }
        }
        break;
      }
      case "results_dropped":
        this.dropped.push(...message.results_dropped.results);
        break;
      case "drain":
        this.drainMessages.push(message.drain);
        this.drains.push(message.drain.reason);
        this._drained(message.drain.reason);
        this._closeIfDrained();
        break;
      default:
        this.log(`worker ${this.register.worker_id}: unknown message ${JSON.stringify(message)}`);
    }
  }

  _run(assignment) {
    this.assignments.push(assignment);
    const abort = new AbortController();
    const entry = { attempt: assignment.attempt, abort };
    this.held.set(assignment.task_id, entry);
    this.maxHeld = Math.max(this.maxHeld, this.held.size);
    if (this.startNotices) this._send({ results: { started_task_ids: [assignment.task_id] } });
    const started = Date.now();
    Promise.resolve()
      .then(() => this.handlers[assignment.task_type](assignment, { signal: abort.signal, worker: this }))
      .catch((err) => ({ error: { type: err.name || "Error", message: String(err.message || err) } }))
      .then((outcome) => {
        // A task the broker cancelled, or handed out again, wants no result from this run.
        if (this.held.get(assignment.task_id) !== entry) return;
        this.held.delete(assignment.task_id);
        const result = {
          task_id: assignment.task_id,
          attempt: assignment.attempt,
          success: !outcome.error,
          started_at_ms: String(outcome.started_at_ms ?? started),
          finished_at_ms: String(outcome.finished_at_ms ?? Date.now()),
        };
        // A handler's outcome may set any TaskError field (retryable, task_fault) and the
        // result's content type, where the contract has them.
        if (outcome.error) result.error = { traceback: "", ...outcome.error };
        else result.result = outcome.result || Buffer.alloc(0);
        if (outcome.result_content_type) result.result_content_type = outcome.result_content_type;
        this._send({ results: { results: [result] } });
        this._closeIfDrained();
      });
  }

  // Results are sent as they come, never buffered, so every heartbeat's held list is
  // exactly the tasks with no result sent yet.
  heartbeat() {
    this._send({
      heartbeat: {
        in_flight: this.held.size,
        load: 0,
        held_task_ids: [...this.held.keys(), ...this.claimed],
        assignments_seen: this.seen,
      },
    });
  }

  // Drop a task without a result, as a worker that lost track of it would.
  forget(taskId) {
    this.held.delete(taskId);
  }

  // After resuming a session: hold a task the earlier stream was running (the next
  // heartbeats list it) until release().
  adopt(assignment) {
    this.held.set(assignment.task_id, { attempt: assignment.attempt, abort: new AbortController() });
  }

  release(taskId) {
    this.held.delete(taskId);
  }

  credit(capacity) {
    this._send({ credit: { capacity } });
  }

  _send(message) {
    if (!this.closed) this.stream.write(message);
  }

  // Send a result as is (for a task the worker does not hold, or a wrong attempt).
  sendResult(result) {
    this._send({ results: { results: [result] } });
  }

  _closeIfDrained() {
    if (this.closeOnDrain && this.drains.length && this.held.size === 0) this.stop();
  }

  // Say the worker will not resume (its tasks are requeued at once), then half-close.
  leave() {
    this._send({ leave: {} });
    return this.stop();
  }

  // Half-close the stream; the broker then ends it.
  stop() {
    if (this.closed) return this.ended;
    this.closed = true;
    clearInterval(this.timer);
    this.stream.end();
    return this.ended;
  }

  // Cancel the stream outright, as a crash would break it.
  kill() {
    this.closed = true;
    this.stream.cancel();
    return this.ended;
  }
}

module.exports = { Worker };
