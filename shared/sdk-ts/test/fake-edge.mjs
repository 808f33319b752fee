// A hostile edge for the SDK's tests: a minimal WebSocket server (RFC 6455, text frames) whose
// answers and pushes the test scripts, to play a broken or malicious server.

import { createHash } from "node:crypto";
import { createServer } from "node:http";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

function frame(text) {
  const payload = Buffer.from(text);
  let head;
  if (payload.length < 126) head = Buffer.from([0x81, payload.length]);
  else if (payload.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x81;
    head[1] = 126;
    head.writeUInt16BE(payload.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x81;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([head, payload]);
}

/**
 * Starts the edge. `onFrame(frame, send, hangUp)` sees each client frame (parsed JSON) and
 * answers with `send(object)`; `send` also pushes, `hangUp()` drops the connection. Returns its URL, the count of connections and of
 * frames by type, and `close()`.
 */
export async function fakeEdge(onFrame) {
  const sockets = new Set();
  const seen = new Map();
  let connections = 0;
  const server = createServer((_, res) => {
    res.writeHead(404);
    res.end();
  });
  server.on("upgrade", (req, socket) => {
    connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    const accept = createHash("sha1").update(`${req.headers["sec-websocket-key"]}${GUID}`).digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const send = (obj) => socket.destroyed || socket.write(frame(JSON.stringify(obj)));
    let buf = Buffer.alloc(0);
    socket.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f;
        let at = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          at = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          at = 10;
        }
        if (buf.length < at + 4 + len) return;
        const mask = buf.subarray(at, at + 4);
        const data = Buffer.from(buf.subarray(at + 4, at + 4 + len));
        for (let i = 0; i < len; i++) data[i] ^= mask[i % 4];
        const op = buf[0] & 0x0f;
        buf = buf.subarray(at + 4 + len);
        if (op === 8) {
          socket.end();
          return;
        }
        if (op !== 1) continue;
        const f = JSON.parse(String(data));
        seen.set(f.type, (seen.get(f.type) ?? 0) + 1);
        onFrame(f, send, () => socket.destroy());
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    connections: () => connections,
    count: (type) => seen.get(type) ?? 0,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

/** The welcome to `hello` frame `f`, for user `user`, with `changes`. */
export const welcome = (f, changes = [], user = "bob") => ({
  type: "welcome",
  id: f.id,
  protocol: 1,
  user,
  device: "d",
  max_frame_bytes: 65536,
  changes,
});

/** A message of `conv` at `seq` from eve. */
export const message = (conv, seq, body, extra = {}) => ({
  conv,
  seq,
  sender: "eve",
  device: "x",
  client_msg_id: `c${seq}`,
  body,
  client_ts: 1,
  server_ts: 1,
  ...extra,
});
