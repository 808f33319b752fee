// The TypeScript SDK's side of `anchorage bench sdk`: the same job as the Rust SDK's runner
// (`anchorage-bench sdk-runner`, services/bench/src/sdk.rs), the same steps, the same report.
//
// - stdin, first line: {"mode": "send" | "reconnect", "url": "ws://…/ws",
//   "clients": [{"token": "…", "conv": "…"}], "messages": N};
// - one SDK client per entry, each with its own store: a file flushed on every write, as the
//   Rust SDK's SQLite file is (`"store": "memory"` in the job: in memory), all signed in, then
//   {"ready": true} on stdout;
// - send: every client queues `messages` messages into its `conv` at once and waits for their
//   acknowledgements; report {"acked", "elapsed_ms", "latencies_ms"} (queued to acknowledged);
// - reconnect: the clients follow their `conv` while the bench restarts the edge; stdin's
//   second line {"last": seq} names the newest message; report {"resynced_unix_ms": [...],
//   "failures": {...}, "disconnects": n}: when each client held `last` after it lost its
//   connection.
//
// Run by the bench as `node --experimental-websocket shared/sdk-ts/bench/bench.mjs`.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Client, Store } from "../dist/index.js";
import { FileBackend } from "../dist/file-store.js";

const LIMIT_MS = 120_000;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function line(what) {
  const next = await lines.next();
  if (next.done) throw new Error(`no ${what} on stdin`);
  return JSON.parse(next.value);
}

function within(ms, what, promise) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function send(members, messages) {
  const started = performance.now();
  const runs = members.map(async ({ client, conv }) => {
    // Acknowledgements are matched to the moment each `send` was called.
    const acked = new Map();
    const done = new Promise((resolve, reject) => {
      client.on("acked", ({ clientMsgId }) => {
        acked.set(clientMsgId, performance.now());
        if (acked.size === messages) resolve();
      });
      client.on("failed", ({ code, message }) => reject(new Error(`a send was refused: ${code}: ${message}`)));
    });
    const queued = [];
    for (let n = 0; n < messages; n++) {
      const body = String(n).padStart(200);
      const t0 = performance.now();
      queued.push([await client.send(conv, body), t0]);
    }
    if (messages > 0) await done;
    await client.stop();
    return queued.map(([id, t0]) => {
      const at = acked.get(id);
      if (at === undefined) throw new Error("a message acknowledged under another id");
      return at - t0;
    });
  });
  const all = await within(LIMIT_MS, "sends acknowledged", Promise.all(runs));
  const latencies = all.flat();
  return { acked: latencies.length, elapsed_ms: performance.now() - started, latencies_ms: latencies };
}

/** When `client` held `last` of `conv` after losing its connection (Unix ms). */
function follow({ client, conv }, lastKnown) {
  let disconnects = 0;
  let last = Infinity;
  // The times the newest seq grew after a disconnect: [seq, Unix ms].
  const held = [];
  let reached;
  const done = new Promise((r) => (reached = r));
  const check = () => {
    const hit = disconnects > 0 && held.find(([seq]) => seq >= last);
    if (hit) reached(hit[1]);
  };
  client.on("disconnected", () => disconnects++);
  client.on("messages", ({ conv: c, seq }) => {
    if (c !== conv || disconnects === 0) return;
    held.push([seq, Date.now()]);
    check();
  });
  lastKnown.then((l) => {
    last = l;
    check();
  });
  return within(
    LIMIT_MS,
    "back in line",
    done.then(async (at) => {
      await client.stop();
      return [at, disconnects];
    }),
  );
}

async function reconnect(members) {
  let named;
  const lastKnown = new Promise((r) => (named = r));
  const follows = members.map((m) => follow(m, lastKnown));
  named((await line("restart line")).last);
  const resynced = [];
  const failures = {};
  let disconnects = 0;
  for (const result of await Promise.allSettled(follows)) {
    if (result.status === "fulfilled") {
      resynced.push(result.value[0]);
      disconnects += result.value[1];
    } else {
      const reason = String(result.reason?.message ?? result.reason);
      failures[reason] = (failures[reason] ?? 0) + 1;
    }
  }
  return { resynced_unix_ms: resynced, failures, disconnects };
}

const job = await line("job");
const dir = mkdtempSync(join(tmpdir(), "anchorage-bench-sdk-"));
const members = [];
for (const [i, c] of job.clients.entries()) {
  const store = job.store === "memory" ? await Store.open() : await Store.open(new FileBackend(join(dir, `${i}.log`)));
  const client = await Client.start({ url: job.url, token: () => c.token, store });
  members.push({ client, conv: c.conv });
}
await within(LIMIT_MS, "signed in", Promise.all(members.map((m) => m.client.whenOnline())));
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
let report;
if (job.mode === "send") report = await send(members, job.messages ?? 0);
else if (job.mode === "reconnect") report = await reconnect(members);
else throw new Error(`unknown mode ${job.mode}`);
rmSync(dir, { recursive: true, force: true });
// Written to a pipe, stdout is asynchronous: exit once the report is out.
process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
