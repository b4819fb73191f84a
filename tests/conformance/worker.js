// A worker process whose every task of one type runs until the process dies; it prints
// `registered <id>` once registered and `running <task id> <attempt>` per assignment.
// Usage: node worker.js <proto dir> <broker address> <worker id> <task type>
"use strict";

const { loadApi } = require("./lib/api");
const { Worker } = require("./lib/worker");

const [protoDir, address, workerId, taskType] = process.argv.slice(2);
const api = loadApi(protoDir);
const worker = new Worker(api, address, {
  workerId,
  capacity: 1,
  handlers: {
    [taskType]: (assignment, { signal }) => {
      console.log(`running ${assignment.task_id} ${assignment.attempt}`);
      return new Promise((resolve) => signal.addEventListener("abort", () => resolve({ error: { type: "Aborted", message: "" } })));
    },
  },
  log: (line) => console.error(line),
});
worker.start().then(
  (ack) => console.log(`registered ${ack.worker_id}`),
  (err) => {
    console.error(`registration failed: ${err.message}`);
    process.exit(2);
  },
);
