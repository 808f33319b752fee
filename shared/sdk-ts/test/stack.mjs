// A real stack for the end-to-end tests: `anchorage dev` (nats-server, projector, edge with the
// chat page) in a temporary directory on free ports, optionally a second `anchorage edge`
// process on the same NATS and database, and a TCP proxy that cuts or refuses connections.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const BIN = process.env.ANCHORAGE_BIN ?? join(ROOT, "target", "debug", "anchorage");
/** The development secret `anchorage dev` signs tokens with (anyone may know it). */
const DEV_SECRET = "anchorage-dev-secret-change-me";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/** Polls `check` until it returns a truthy value, or fails naming `what`. */
export async function eventually(what, check, timeoutMs = 20_000) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await sleep(50);
  }
}

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 device token signed with the development secret, living `ttlSecs`. */
export function mintToken(user, device, ttlSecs = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ typ: "JWT", alg: "HS256" }));
  const claims = b64url(JSON.stringify({ sub: user, device, iat: now, exp: now + ttlSecs }));
  const sig = createHmac("sha256", DEV_SECRET).update(`${head}.${claims}`).digest("base64url");
  return `${head}.${claims}.${sig}`;
}

async function ready(port, child, log) {
  await eventually(
    `the edge on ${port} to be ready`,
    async () => {
      if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${log()}`);
      const r = await fetch(`http://127.0.0.1:${port}/readyz`);
      return r.status === 200;
    },
    60_000,
  );
}

function spawnLogged(args, env) {
  const child = spawn(BIN, args, { cwd: ROOT, env: { ...process.env, ANCHORAGE_LOG: "warn", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const keep = (d) => {
    out = (out + d).slice(-20_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  return { child, log: () => out };
}

/** Starts `anchorage dev`, and `extraEdges` more edge processes. */
export async function startStack({ extraEdges = 0 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "anchorage-sdk-ts-"));
  const edgePort = await freePort();
  const natsPort = await freePort();
  const dev = spawnLogged(["dev"], {
    ANCHORAGE_DEV__DATA_DIR: dir,
    ANCHORAGE_EDGE__LISTEN: `127.0.0.1:${edgePort}`,
    ANCHORAGE_DEV__NATS_PORT: String(natsPort),
  });
  const processes = [dev.child];
  const ports = [edgePort];
  await ready(edgePort, dev.child, dev.log);
  const creds = JSON.parse(readFileSync(join(dir, "nats-credentials.json"), "utf8"));
  for (let i = 0; i < extraEdges; i++) {
    const port = await freePort();
    const edge = spawnLogged(["edge"], {
      ANCHORAGE_NATS__URL: `nats://127.0.0.1:${natsPort}`,
      ANCHORAGE_NATS__USER: "edge",
      ANCHORAGE_NATS__PASSWORD: creds.users.edge,
      ANCHORAGE_DATABASE__URL: `sqlite://${dir}/anchorage.db`,
      ANCHORAGE_EDGE__LISTEN: `127.0.0.1:${port}`,
      ANCHORAGE_EDGE__CHAT_PAGE: "true",
      ANCHORAGE_AUTH__ALLOW_DEV_SECRET: "true",
      ANCHORAGE_ATTACHMENTS__BACKEND: "off",
    });
    processes.push(edge.child);
    ports.push(port);
    await ready(port, edge.child, edge.log);
  }
  return {
    dir,
    ports,
    http: (i = 0) => `http://127.0.0.1:${ports[i]}`,
    ws: (i = 0) => `ws://127.0.0.1:${ports[i]}/ws`,
    /** Runs an administrative command against this stack (as its operator). */
    async cli(args) {
      const c = spawnLogged(args, { ANCHORAGE_DEV__DATA_DIR: dir, ANCHORAGE_DATABASE__URL: `sqlite://${dir}/anchorage.db`, ANCHORAGE_NATS__URL: `nats://127.0.0.1:${natsPort}` });
      const code = await new Promise((r) => c.child.on("exit", r));
      if (code !== 0) throw new Error(`anchorage ${args.join(" ")} exited ${code}: ${c.log()}`);
      return c.log();
    },
    async stop() {
      for (const p of processes.reverse()) {
        p.kill("SIGINT");
        await Promise.race([new Promise((r) => p.on("exit", r)), sleep(10_000)]);
        if (p.exitCode === null) p.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy in front of an edge: `cut()` drops every open connection at once (both ways, no
 * close frames, as a network failure would); `refuse(retryAfterSecs)` answers every new
 * connection with HTTP 503 and `Retry-After`, as a busy edge does; `accept()` lets them
 * through again. `attempts` records when each connection came.
 */
export async function startProxy(targetPort) {
  const port = await freePort();
  const open = new Set();
  let refusing = null;
  const attempts = [];
  const sockets = new Set();
  const server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    attempts.push(Date.now());
    if (refusing !== null) {
      client.once("data", () => {
        client.end(`HTTP/1.1 503 Service Unavailable\r\nretry-after: ${refusing}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n`);
      });
      client.on("error", () => {});
      return;
    }
    const upstream = connect(targetPort, "127.0.0.1");
    const pair = { client, upstream };
    open.add(pair);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    attempts,
    open: () => open.size,
    cut() {
      for (const { client, upstream } of open) {
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.destroy();
      }
      open.clear();
    },
    refuse(retryAfterSecs) {
      refusing = retryAfterSecs;
    },
    accept() {
      refusing = null;
    },
    /** Stops listening and drops every connection (the clients behind it stay cut off). */
    close() {
      const closed = new Promise((r) => server.close(r));
      this.cut();
      for (const s of sockets) s.destroy();
      return closed;
    },
  };
}
