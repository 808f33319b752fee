// The Anchorage client: one WebSocket to an edge, kept up across cuts, and the local store kept
// in line with the server.
//
// - `hello` with the anchors held; the welcome's changes are pulled with `sync`.
// - Messages go through the outbox: written to the store first, sent pipelined in the order
//   written under their `client_msg_id`, and sent again under the same id (with `retry`)
//   until the server acknowledges or refuses them for good.
// - Live messages continue the chain when their `prev` is the anchor; any other `prev` is a
//   gap, repaired with `sync` from the anchor. What is stored is acknowledged (`received`).
// - Reconnects wait a full-jitter backoff and at least what the server asked for (a 503's
//   `Retry-After`); 4002 takes a fresh token, 4005 and 4004 stop, 4008 resyncs.
// - Member lists of groups sync when asked (the conversation opens): unchanged, a diff, a
//   realignment, or a bucket repair; live changes apply when their `prev` is the copy's
//   version and their digest matches.

import { BACKOFF_MAX_MS, backoffDelay } from "./backoff.js";
import { BucketedDigest } from "./digest.js";
import type {
  ConvChange,
  ErrorCode,
  ErrorFrame,
  GroupVersion,
  MemberInfo,
  Message,
  Push,
  ReplyBody,
  RequestBody,
  ServerFrame,
  Welcome,
} from "./protocol.js";
import { CLOSE, PROTOCOL_VERSION } from "./protocol.js";
import type { ConversationSummary, MemberList, OutboxEntry } from "./store.js";
import { Store, isMember, isUserId } from "./store.js";

/** A WebSocket constructor: the platform's (browsers, Node ≥ 22) or a compatible one. */
export type WebSocketLike = {
  new (url: string): WebSocket;
};

export interface ClientOptions {
  /** The edge's WebSocket URL, e.g. `ws://localhost:8080/ws`. */
  url: string;
  /** A device token for each connection attempt (called again after 4002). */
  token: () => string | Promise<string>;
  /** The local store (default: in memory). */
  store?: Store;
  /** Default: `globalThis.WebSocket`. */
  WebSocket?: WebSocketLike;
  /** Sends in flight at once (default 64, at most 256). */
  sendWindow?: number;
  /** A connection whose answer takes longer than this is given up (default 20 s). */
  answerTimeoutMs?: number;
  /** Backoff between connection attempts (default 500 ms growing to 20 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
}

/** Events for the UI, by name. */
export interface ClientEvents {
  /** Signed in (after the welcome's changes were taken). */
  connected: { user: string; device: string };
  /** The connection ended; another attempt follows unless `stopped` comes. */
  disconnected: { code?: number; reason?: string; retryInMs: number };
  /** The server refused the token (4001) or said it expired (4002). */
  authFailed: { code: number };
  /** The client gave up for good: the session was revoked (4005) or the protocol is not spoken (4004). */
  stopped: { code: number; reason: string };
  /**
   * A write to the local store failed: the client stopped, since what it holds in memory is
   * ahead of what the store kept (nothing is acknowledged on top of that). Open the store
   * again (`Store.open`) and start a client on it.
   */
  storeFailed: { error: string };
  /** Entries of a conversation were stored; the local copy reaches `seq`. */
  messages: { conv: string; seq: number };
  /** A sync closed a gap in the chain. */
  gapRepaired: { conv: string; from: number; to: number };
  /** A message from the outbox was stored by the server. */
  acked: { conv: string; clientMsgId: string; seq: number; duplicate: boolean };
  /** A message from the outbox was refused for good. */
  failed: { conv: string; clientMsgId: string; code: ErrorCode; message: string };
  /** The user's read marker moved (here or on another device). */
  read: { conv: string; seq: number };
  /** The user joined or left a conversation. */
  membership: { conv: string; joined: boolean };
  /** A group's local member list changed or was confirmed. */
  members: { group: string; version: number; how: MemberSyncKind };
  /** Someone is typing (conversations viewed with `view`). */
  typing: { conv: string; users: string[] };
  /** Any push, as it came. */
  push: Push;
}

/** How a member list was brought in line. */
export type MemberSyncKind = "unchanged" | "diff" | "realigned" | "repaired" | "live";

/** A request the server refused. */
export class RequestError extends Error {
  constructor(
    public code: ErrorCode,
    message: string,
    public retryAfterMs?: number,
  ) {
    super(`${code}: ${message}`);
  }
}

/** Why a connection ended. */
class Lost {
  constructor(
    public code?: number,
    public reason?: string,
    public retryAfterMs = 0,
  ) {}
}

/**
 * Rounds one member sync may take (diff pages, a realignment, the diff after it) before it
 * yields to other work and, if its copy moved forward, is scheduled again.
 */
const MEMBER_SYNC_ROUNDS = 64;

/**
 * Times a member sync is scheduled again after yielding: an edge that moves a copy forward
 * without end is asked a bounded number of times.
 */
const MEMBER_SYNC_RESUMES = 15;

/** Waits a member sync takes for a busy server (`overloaded`, `internal`) before it ends for now. */
const MEMBER_SYNC_WAITS = 8;

const PASSING: ErrorCode[] = ["internal", "overloaded"];
type Listener<T> = (event: T) => void;
/**
 * A `members_diff` that came in its positional form (a `members_sync` with `compact`, asked
 * only of an edge whose welcome says `compact`): the group and the epoch are the request's.
 */
interface MembersDelta {
  type: "members_delta";
  id: number;
  version: number;
  digest: string | null;
  upserts: MemberInfo[];
  removed: string[];
  more: boolean;
}
type Answer = Exclude<ServerFrame, unknown[]> | MembersDelta;

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
/** `[id, version, digest | null, upserts, removed, more]`, or null if it is not one. */
function readDelta(a: unknown[]): MembersDelta | null {
  const [id, version, digest, upserts, removed, more] = a;
  if (a.length !== 6 || !isCount(id) || !isCount(version) || (digest !== null && typeof digest !== "string")) return null;
  if (!Array.isArray(upserts) || !Array.isArray(removed) || (more !== 0 && more !== 1)) return null;
  const members: MemberInfo[] = [];
  for (const m of upserts as unknown[]) {
    if (isUserId(m)) members.push({ user: m });
    else if (isMember(m)) members.push(m);
    else return null;
  }
  if (!removed.every(isUserId)) return null;
  return { type: "members_delta", id, version, digest, upserts: members, removed: removed as string[], more: more === 1 };
}
/**
 * Waits `ms`, or until `signal` is aborted: then its timer is cleared (a stopped client holds
 * none), and either way its listener is removed (waits leave nothing behind).
 */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return untilAborted(signal, (done) => {
    const timer = setTimeout(done, ms);
    return () => clearTimeout(timer);
  });
}

/**
 * Resolves when `start`'s callback is called or `signal` is aborted, whichever comes first;
 * `start` returns what to undo at that point.
 */
function untilAborted(signal: AbortSignal, start: (done: () => void) => () => void): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    let undo = () => undefined as void;
    const done = () => {
      signal.removeEventListener("abort", done);
      undo();
      resolve();
    };
    signal.addEventListener("abort", done, { once: true });
    undo = start(done);
  });
}
/** No wait a server asks for is taken longer than this (timers overflow past 2^31 ms). */
const MAX_SERVER_WAIT_MS = 600_000;
/** Nor shorter than this: a server that says 0 does not drive a loop. */
const MIN_SERVER_WAIT_MS = 50;
/** A wait the server asked for (`retry_after_ms`), or `fallback`, within sane bounds. */
function serverWait(ms: number | null | undefined, fallback: number): number {
  const v = typeof ms === "number" && Number.isFinite(ms) ? ms : fallback;
  return Math.min(MAX_SERVER_WAIT_MS, Math.max(MIN_SERVER_WAIT_MS, v));
}
/** A refusal that, for a conversation the device was just told it joined, may pass. */
const notVisibleYet = (code: ErrorCode) => code === "forbidden" || code === "not_found";

/** The seq an `ok` answer names (absent when nothing was stored: a repeat). */
function okSeq(a: ReplyBody): number | undefined {
  return a.type === "ok" && typeof (a as { seq?: unknown }).seq === "number" ? (a as { seq: number }).seq : undefined;
}
/** Seqs are integers JavaScript holds exactly. */
const validSeq = (seq: unknown): seq is number => Number.isSafeInteger(seq) && (seq as number) > 0;
const isError = (f: Answer): f is ErrorFrame & { type: "error" } => f.type === "error";

/** One open socket: numbered requests and their answers. */
class Connection {
  private nextId = 1;
  /** The edge answers a `members_sync` with `compact` positionally (its welcome says so). */
  compact = false;
  private waiting = new Map<number, { resolve: (f: Answer) => void; reject: (e: Lost) => void; timer: ReturnType<typeof setTimeout> }>();
  ended: Lost | null = null;
  private gone = new AbortController();
  /** Aborted when the connection ends. */
  readonly signal = this.gone.signal;

  constructor(
    private ws: WebSocket,
    private onPush: (p: Push) => void,
    private timeoutMs: number,
  ) {
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = (ev) => this.end(new Lost(ev.code, ev.reason));
    ws.onerror = () => this.end(new Lost());
  }

  private onFrame(data: unknown): void {
    if (typeof data !== "string") return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    let frame: Answer;
    if (Array.isArray(parsed)) {
      const delta = readDelta(parsed);
      if (!delta) return;
      frame = delta;
    } else {
      frame = parsed as Answer;
      // Only an array is a delta: an object calling itself one is not read.
      if ((frame as { type?: unknown })?.type === "members_delta") return;
    }
    if (typeof frame !== "object" || frame === null || typeof frame.type !== "string") return;
    const id = (frame as { id?: unknown }).id;
    if (typeof id === "number" && this.waiting.has(id)) {
      const w = this.waiting.get(id)!;
      this.waiting.delete(id);
      clearTimeout(w.timer);
      w.resolve(frame);
    } else if (id === undefined && frame.type !== "error") {
      this.onPush(frame as Push);
    }
  }

  end(lost: Lost): void {
    if (this.ended) return;
    this.ended = lost;
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(lost);
    }
    this.waiting.clear();
    this.gone.abort();
    try {
      this.ws.close();
    } catch {
      // already closed
    }
  }

  /** Sends `body` and returns the promise of its answer. */
  send(body: RequestBody): Promise<Answer> {
    if (this.ended) return settled(Promise.reject(this.ended));
    const id = this.nextId++;
    const answer = new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => this.end(new Lost(undefined, "no answer in time")), this.timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
    });
    this.ws.send(JSON.stringify({ ...body, id }));
    return settled(answer);
  }

  /** Sends `body`; a `rate_limited` answer waits as long as the server says and goes again. */
  async request(body: RequestBody): Promise<Answer> {
    for (;;) {
      const answer = await this.send(body);
      if (isError(answer) && answer.code === "rate_limited") {
        await sleep(serverWait(answer.retry_after_ms, 100), this.signal);
        continue;
      }
      return answer;
    }
  }
}

interface Ask {
  body: RequestBody;
  resolve: (a: ReplyBody) => void;
  reject: (e: Error) => void;
  tries: number;
}

export class Client {
  readonly store: Store;
  private options: Required<Omit<ClientOptions, "store" | "WebSocket">> & { WebSocket: WebSocketLike };
  private listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private conn: Connection | null = null;
  private running = false;
  private wakeUp: (() => void) | null = null;
  /** Set by `wake`: work came since the loop last looked. */
  private woken = false;
  private syncs = new Map<string, number | null>();
  private refusedSyncs = new Map<string, number>();
  /** Conversations not listed yet whose sync a push started (a first message). */
  private pulled = new Set<string>();
  private memberSyncs = new Map<string, Array<() => void>>();
  /** Read markers on their way to the server, by conversation. */
  private reading = new Map<string, Promise<void>>();
  /** How often in a row each member sync has yielded still moving. */
  private memberSyncResumes = new Map<string, number>();
  /** A member sync just yielded: the next step goes to the rest of the work. */
  private memberSyncYielded = false;
  private subscribed = new Set<string>();
  private asks: Ask[] = [];
  private toAck = new Map<string, number>();
  private pushes: Promise<void> = Promise.resolve();
  private me = { user: "", device: "" };
  private window: number;
  private connectedWaiters: Array<() => void> = [];
  private droppedPush = 0;
  private halt = new AbortController();
  /** Aborted by `stop`. */
  private stopping = this.halt.signal;

  private constructor(options: ClientOptions, store: Store) {
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketLike }).WebSocket;
    if (!ws) throw new Error("no WebSocket: pass options.WebSocket (Node < 22: the `ws` package)");
    this.store = store;
    this.options = {
      url: options.url,
      token: options.token,
      WebSocket: ws,
      sendWindow: Math.min(256, Math.max(1, options.sendWindow ?? 64)),
      answerTimeoutMs: options.answerTimeoutMs ?? 20_000,
      backoffBaseMs: options.backoffBaseMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? BACKOFF_MAX_MS,
    };
    this.window = this.options.sendWindow;
  }

  /** Opens the store and starts connecting. */
  static async start(options: ClientOptions): Promise<Client> {
    const client = new Client(options, options.store ?? (await Store.open()));
    client.running = true;
    client.store.whenFailed((e) => {
      if (!client.running) return;
      client.emit("storeFailed", { error: e.message });
      void client.stop();
    });
    void client.run();
    return client;
  }

  /** The signed-in user and device (empty until the first welcome). */
  get user(): string {
    return this.me.user;
  }
  get device(): string {
    return this.me.device;
  }
  get online(): boolean {
    return this.conn !== null && !this.conn.ended && this.me.user !== "";
  }

  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const l of this.listeners.get(event) ?? []) {
      try {
        (l as Listener<ClientEvents[K]>)(value);
      } catch (e) {
        console.error(`anchorage: a ${event} listener threw`, e);
      }
    }
  }

  /** Resolves once signed in (at once if already). */
  whenOnline(): Promise<void> {
    return this.online ? Promise.resolve() : new Promise((r) => this.connectedWaiters.push(r));
  }

  /** Stops connecting and closes the socket; the store stays. */
  async stop(): Promise<void> {
    this.running = false;
    this.halt.abort();
    this.conn?.end(new Lost(1000, "stopped"));
    this.wake();
    for (const a of this.asks.splice(0)) a.reject(new Error("client stopped"));
    this.endMemberSyncs();
  }

  /** Answers whoever waits for a member sync: the client stopped. */
  private endMemberSyncs(): void {
    for (const waiters of this.memberSyncs.values()) for (const w of waiters) w();
    this.memberSyncs.clear();
  }

  /**
   * Test hook: the live push of message `seq` is lost on its way (as at-most-once delivery
   * may lose it), so the next one shows a gap.
   */
  dropPush(seq: number): void {
    this.droppedPush = seq;
  }

  /** Cuts the current connection (as a network would); the client reconnects. */
  cut(): void {
    this.conn?.end(new Lost(undefined, "cut"));
  }

  private wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  // Messages.

  /**
   * Writes a message: stored in the outbox at once, sent when connected, acknowledged with
   * its `seq` (`acked`) or refused for good (`failed`). Returns its `client_msg_id`.
   */
  async send(conv: string, body: unknown, refs: { clientMsgId?: string; replyTo?: number; mentions?: string[] } = {}): Promise<string> {
    const clientMsgId = refs.clientMsgId ?? randomId();
    // Kept as it goes on the wire: JSON (a body that is not — a function, a cycle — is refused
    // here, not left to jam the outbox).
    const json = body === undefined ? undefined : JSON.stringify(body);
    if (json === undefined) throw new RequestError("invalid_request", "a message body must be JSON");
    await this.store.enqueue({ clientMsgId, conv, body: JSON.parse(json), clientTs: Date.now(), replyTo: refs.replyTo, mentions: refs.mentions });
    this.wake();
    return clientMsgId;
  }

  /** Resolves with the seq once the server stored the message; rejects if it was refused. */
  acked(clientMsgId: string): Promise<number> {
    const settled = (): number | RequestError | null => {
      const e = this.store.outboxEntry(clientMsgId);
      if (!e) return new RequestError("invalid_request", `no message ${clientMsgId} in the outbox`);
      if (e.state === "acked") return e.seq!;
      if (e.state === "failed") return new RequestError("rejected", e.error ?? "refused");
      return null;
    };
    return new Promise((resolve, reject) => {
      const check = () => {
        const s = settled();
        if (s === null) return false;
        offAck();
        offFail();
        if (typeof s === "number") resolve(s);
        else reject(s);
        return true;
      };
      const offAck = this.on("acked", (e) => e.clientMsgId === clientMsgId && check());
      const offFail = this.on("failed", (e) => e.clientMsgId === clientMsgId && check());
      check();
    });
  }

  outbox(clientMsgId: string): OutboxEntry | undefined {
    return this.store.outboxEntry(clientMsgId);
  }

  /** Messages of a conversation held on the device, oldest first. */
  messages(conv: string): Message[] {
    return this.store.messagesOf(conv);
  }

  anchor(conv: string): number {
    return this.store.anchor(conv);
  }

  /** Conversations with unread counts, most recent first. */
  conversations(): ConversationSummary[] {
    return this.store.conversations(this.me.user);
  }

  /** Pulls a conversation's entries after the anchor (done on welcome and on gaps; call when opening one). */
  openConversation(conv: string): void {
    this.requestSync(conv, null);
  }

  /**
   * Changes the text of one's own message `seq`; resolves with the edit's own seq. The edit
   * reaches every device (this one too) as an entry of the conversation.
   */
  async edit(conv: string, seq: number, body: unknown): Promise<number | undefined> {
    return okSeq(await this.ask({ type: "edit", conv, seq, body }));
  }

  /** Revokes message `seq` for everyone (its text is erased on the server). */
  async revoke(conv: string, seq: number): Promise<number | undefined> {
    return okSeq(await this.ask({ type: "revoke", conv, seq }));
  }

  /** Adds (or with `remove`, takes back) the user's reaction to message `seq`. */
  async react(conv: string, seq: number, emoji: string, remove = false): Promise<number | undefined> {
    return okSeq(await this.ask({ type: "react", conv, seq, emoji, ...(remove ? { remove: true } : {}) }));
  }

  /**
   * Moves the read marker (forward only); the user's other devices follow. A marker the
   * server did not confirm (the client stopped, the request failed) is sent again each time
   * the client connects, until it does.
   */
  async markRead(conv: string, seq: number): Promise<void> {
    if (await this.store.setRead(conv, seq)) this.emit("read", { conv, seq });
    await this.sendRead(conv);
  }

  /**
   * Sends the read marker of `conv` until the server holds it: one request at a time per
   * conversation, each with the marker as it is then (a marker moved meanwhile goes next).
   */
  private sendRead(conv: string): Promise<void> {
    const pending = this.reading.get(conv);
    if (pending) return pending;
    const sending = (async () => {
      try {
        while (this.store.readUnsent(conv)) {
          const seq = this.store.readSeq(conv);
          try {
            const answer = await this.ask({ type: "read", conv, seq });
            if (answer.type !== "ok") return;
            await this.store.readHeld(conv, seq);
          } catch (e) {
            // Refused for good (no longer a member, past the conversation's end): not sent
            // again. A passing refusal waits for the next connection.
            if (e instanceof RequestError && !PASSING.includes(e.code)) await this.store.readHeld(conv, seq);
            throw e;
          }
        }
      } finally {
        this.reading.delete(conv);
      }
    })();
    this.reading.set(conv, sending);
    return sending;
  }

  /** Older messages than the device holds (newest first), straight from the server. */
  async history(conv: string, before: number, limit = 50): Promise<Message[]> {
    const answer = await this.ask({ type: "history", conv, before, limit });
    return answer.type === "messages" ? answer.messages : [];
  }

  // Conversations and groups.

  async openDirect(peer: string): Promise<string> {
    const answer = await this.ask({ type: "open_direct", peer });
    const conv = answer.type === "ok" ? answer.conv : undefined;
    if (!conv) throw new RequestError("internal", "open_direct answered without a conversation");
    await this.joined(conv);
    return conv;
  }

  async createGroup(group: string, title: string, members: string[]): Promise<void> {
    await this.ask({ type: "create_group", group, title, members });
    await this.joined(group);
  }

  /** Lists a conversation just joined (created, opened, or added to) and pulls it. */
  private async joined(conv: string): Promise<void> {
    const fresh = !this.store.isListed(conv);
    await this.store.join(conv);
    this.requestSync(conv, null);
    if (fresh) this.emit("membership", { conv, joined: true });
  }

  async addMembers(group: string, members: string[]): Promise<void> {
    await this.ask({ type: "add_members", group, members });
  }

  async removeMembers(group: string, members: string[]): Promise<void> {
    await this.ask({ type: "remove_members", group, members });
  }

  async leave(group: string): Promise<void> {
    await this.ask({ type: "leave", group });
  }

  /** The user's groups with their versions and sizes (no member lists). */
  async groupVersions(): Promise<{ epoch: string; groups: GroupVersion[] }> {
    let cursor: string | undefined;
    const groups: GroupVersion[] = [];
    let epoch = "";
    do {
      const a = await this.ask({ type: "group_versions", ...(cursor ? { cursor } : {}) });
      if (a.type !== "group_versions") break;
      epoch = a.epoch;
      groups.push(...a.groups);
      cursor = a.cursor ?? undefined;
    } while (cursor);
    return { epoch, groups };
  }

  // Member lists.

  /**
   * Brings a group's member list in line (and keeps it so with live changes while connected).
   * Resolves once the sync ended: a connection lost on the way does not end it, it goes on
   * once connected again (or ends when the client stops).
   */
  syncMembers(group: string): Promise<void> {
    // A stopped client syncs nothing more: nobody would answer the waiter.
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const waiters = this.memberSyncs.get(group) ?? [];
      waiters.push(resolve);
      this.memberSyncs.set(group, waiters);
      this.wake();
    });
  }

  /** The group's members held on the device, by id; `offset`/`limit` page through them. */
  members(group: string, offset = 0, limit = Infinity): MemberInfo[] {
    const list = this.store.memberList(group);
    if (!list) return [];
    return [...list.members.values()].sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0)).slice(offset, offset + limit);
  }

  memberList(group: string): MemberList | undefined {
    return this.store.memberList(group);
  }

  /**
   * Brings several groups in line in one request, most important first: unchanged and diffs
   * come inlined, realignments are synced one by one.
   */
  async syncMembersBatch(groups: string[], budgetBytes = 65_536): Promise<void> {
    let rest = groups;
    while (rest.length > 0) {
      const entries = rest.map((group) => {
        const list = this.store.memberList(group);
        return list ? { group, epoch: list.epoch, version: list.version, digest: computed(list).total.toWire() } : { group };
      });
      // The version each diff is computed from: it applies to that copy only, not to one a
      // live change moved meanwhile.
      const asked = new Map(entries.map((e) => [e.group, "version" in e ? e.version : undefined]));
      const a = await this.ask({ type: "members_sync_batch", groups: entries, budget_bytes: budgetBytes });
      if (a.type !== "members_batch") return;
      const again: string[] = [];
      for (const r of a.results) {
        this.subscribed.add(r.group);
        if (r.result === "unchanged") this.emit("members", { group: r.group, version: this.store.memberList(r.group)?.version ?? 0, how: "unchanged" });
        else if (r.result === "diff") {
          const list = this.store.memberList(r.group);
          const from = asked.get(r.group);
          const ok = list && from !== undefined && list.epoch === r.epoch && (await this.store.changeMembers(r.group, from, r.version, r.upserts, r.removed));
          const matches = !r.digest || computed(this.store.memberList(r.group)!).total.toWire() === r.digest;
          if (ok && !r.more && matches) this.emit("members", { group: r.group, version: r.version, how: "diff" });
          else again.push(r.group);
        } else if (r.result === "realign") again.push(r.group);
        // A group joined a moment ago may not be visible to the server's answer yet: its own
        // sync asks again for a while (any other refusal: the list is not ours to hold).
        else if (notVisibleYet(r.code) && this.store.isListed(r.group)) again.push(r.group);
      }
      await Promise.all(again.map((g) => this.syncMembers(g)));
      rest = a.cursor != null && a.cursor < rest.length ? rest.slice(a.cursor) : [];
    }
  }

  // Requests the app asks.

  /** Sends a request once connected and resolves with its answer (passing refusals are retried). */
  ask(body: RequestBody): Promise<ReplyBody> {
    if (!this.running) return Promise.reject(new Error("client stopped"));
    return new Promise((resolve, reject) => {
      this.asks.push({ body, resolve, reject, tries: 0 });
      this.wake();
    });
  }

  // The connection loop.

  private async run(): Promise<void> {
    let failures = 0;
    while (this.running) {
      const started = Date.now();
      const lost = await this.session();
      this.conn = null;
      if (!this.running) break;
      const code = lost.code;
      if (code === CLOSE.REVOKED || code === CLOSE.UNSUPPORTED_PROTOCOL) {
        this.running = false;
        this.emit("stopped", { code, reason: lost.reason ?? "" });
        for (const a of this.asks.splice(0)) a.reject(new Error(`stopped: ${code}`));
        this.endMemberSyncs();
        break;
      }
      if (code === CLOSE.AUTH_FAILED || code === CLOSE.TOKEN_EXPIRED) this.emit("authFailed", { code });
      if (code === CLOSE.SLOW_CONSUMER) {
        // Pushes were lost: member lists are checked again once back.
        for (const g of this.subscribed) if (!this.memberSyncs.has(g)) this.memberSyncs.set(g, []);
      }
      // A connection that held for a while starts the backoff over.
      failures = Date.now() - started > 10_000 ? 1 : failures + 1;
      const wait =
        code === CLOSE.TOKEN_EXPIRED && failures === 1
          ? 0
          : backoffDelay(failures, serverWait(lost.retryAfterMs, 0), Math.random, this.options.backoffBaseMs, this.options.backoffMaxMs);
      this.emit("disconnected", { code, reason: lost.reason, retryInMs: wait });
      await sleep(wait, this.stopping);
    }
  }

  private async open(): Promise<WebSocket | Lost> {
    let ws: WebSocket;
    try {
      ws = new this.options.WebSocket(this.options.url);
    } catch (e) {
      return new Lost(undefined, String(e));
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const opened = await new Promise<boolean>((resolve) => {
      ws.onopen = () => resolve(true);
      ws.onerror = () => resolve(false);
      ws.onclose = () => resolve(false);
      timer = setTimeout(() => resolve(false), this.options.answerTimeoutMs);
    });
    clearTimeout(timer);
    if (opened) return ws;
    try {
      ws.close();
    } catch {
      // never opened
    }
    return new Lost(undefined, "could not connect", await this.retryAfter());
  }

  /**
   * What a refused connection's `Retry-After` says. The platform WebSocket does not show the
   * HTTP answer, so the edge is asked again over HTTP: a busy edge answers a plain `GET /ws`
   * with the same 503 and `Retry-After`.
   */
  private async retryAfter(): Promise<number> {
    if (typeof fetch !== "function") return 0;
    try {
      const url = this.options.url.replace(/^ws/, "http");
      const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
      const header = r.headers.get("retry-after");
      const secs = header === null ? NaN : Number(header);
      return r.status === 503 && Number.isFinite(secs) ? Math.min(secs * 1000, MAX_SERVER_WAIT_MS) : 0;
    } catch {
      return 0;
    }
  }

  private async session(): Promise<Lost> {
    const ws = await this.open();
    if (ws instanceof Lost) return ws;
    const conn = new Connection(ws, (p) => this.queuePush(p), this.options.answerTimeoutMs);
    this.conn = conn;
    try {
      await this.signIn(conn);
      this.emit("connected", { ...this.me });
      for (const w of this.connectedWaiters.splice(0)) w();
      // Read markers the server did not confirm before: again (a failure waits for the next
      // connection).
      for (const conv of this.store.unsentReads()) void this.sendRead(conv).catch(() => undefined);
      // Member lists synced before are checked again, and their live changes come here.
      for (const g of this.subscribed) if (!this.memberSyncs.has(g)) this.memberSyncs.set(g, []);
      for (;;) {
        if (!this.running) return new Lost(1000, "stopped");
        this.woken = false;
        const busy = await this.step(conn);
        if (busy || this.woken) continue;
        await untilAborted(conn.signal, (done) => {
          this.wakeUp = done;
          return () => undefined;
        });
        if (conn.ended) return conn.ended;
      }
    } catch (e) {
      if (e instanceof Lost) {
        conn.end(e);
        return conn.ended ?? e;
      }
      conn.end(new Lost(undefined, String(e)));
      return conn.ended ?? new Lost();
    }
  }

  /** Does one round of work; true if there may be more. */
  private async step(conn: Connection): Promise<boolean> {
    await this.pushes;
    if (this.syncs.size > 0) {
      await this.runSync(conn);
      return true;
    }
    if (this.memberSyncs.size > 0 && !this.memberSyncYielded) {
      await this.runMemberSync(conn);
      return true;
    }
    // One step for the rest of the work after a member sync yielded.
    this.memberSyncYielded = false;
    if (this.asks.length > 0) {
      await this.runAsk(conn);
      return true;
    }
    if (this.store.pending(1).length > 0) {
      await this.flushOutbox(conn);
      return true;
    }
    if (this.toAck.size > 0) {
      const acks = [...this.toAck];
      this.toAck.clear();
      for (const [conv, seq] of acks) await expect(conn.request({ type: "received", conv, seq }));
      return true;
    }
    if (this.memberSyncs.size > 0) {
      await this.runMemberSync(conn);
      return true;
    }
    return false;
  }

  private async signIn(conn: Connection): Promise<void> {
    let cursor: string | undefined;
    do {
      const token = await this.options.token();
      const answer = await conn.request({ type: "hello", protocol: PROTOCOL_VERSION, token, anchors: this.store.anchors(), ...(cursor ? { cursor } : {}) });
      if (answer.type !== "welcome") throw new Lost(undefined, isError(answer) ? `${answer.code}: ${answer.message}` : "no welcome");
      const welcome = answer as Welcome;
      conn.compact = welcome.compact === true;
      this.me = { user: welcome.user, device: welcome.device };
      for (const c of welcome.changes) await this.takeChange(c);
      cursor = welcome.cursor ?? undefined;
    } while (cursor);
  }

  private async takeChange(c: ConvChange): Promise<void> {
    await this.store.summarize(c.conv, c.last_seq, c.read_seq, c.unread, c.last_message);
    if (c.last_seq > this.store.anchor(c.conv)) this.requestSync(c.conv, null);
    this.emit("read", { conv: c.conv, seq: this.store.readSeq(c.conv) });
  }

  private requestSync(conv: string, gapFrom: number | null): void {
    if (!this.syncs.has(conv) || gapFrom !== null) this.syncs.set(conv, gapFrom ?? this.syncs.get(conv) ?? null);
    this.wake();
  }

  /** Pulls one conversation from its anchor to its end. */
  private async runSync(conn: Connection): Promise<void> {
    const [conv, gap] = this.syncs.entries().next().value as [string, number | null];
    this.syncs.delete(conv);
    const listed = this.store.isListed(conv);
    for (;;) {
      const after = this.store.anchor(conv);
      const answer = await conn.request({ type: "sync", conv, after, limit: 500 });
      if (isError(answer)) {
        if (PASSING.includes(answer.code)) {
          this.syncs.set(conv, gap);
          await sleep(serverWait(answer.retry_after_ms, 200), this.stopping);
          return;
        }
        // Joined a moment ago, the edge's view of the memberships may not show it yet: ask
        // again a few times. A conversation left is forgotten on its `membership` push.
        const tries = this.refusedSyncs.get(conv) ?? 0;
        if (notVisibleYet(answer.code) && (listed || this.pulled.has(conv)) && tries < 6) {
          this.refusedSyncs.set(conv, tries + 1);
          await sleep(250 * (tries + 1), this.stopping);
          this.syncs.set(conv, gap);
        } else {
          this.refusedSyncs.delete(conv);
          this.pulled.delete(conv);
        }
        return;
      }
      if (answer.type !== "messages") return;
      // Only entries of this conversation, past the anchor, in strictly rising order are
      // taken; an answer that does not move the anchor ends the pull.
      const entries: Message[] = [];
      for (const m of answer.messages) {
        if (m.conv !== conv || !validSeq(m.seq) || m.seq <= (entries.at(-1)?.seq ?? after)) break;
        entries.push(m);
      }
      const last = entries.at(-1)?.seq;
      if (last === undefined) break;
      await this.store.append(conv, entries, last, this.me.user);
      this.stored(conv, last);
      if (!answer.more || entries.length < answer.messages.length) break;
    }
    this.refusedSyncs.delete(conv);
    this.pulled.delete(conv);
    if (!listed && this.store.isListed(conv)) this.emit("membership", { conv, joined: true });
    if (gap !== null) this.emit("gapRepaired", { conv, from: gap, to: this.store.anchor(conv) });
  }

  private stored(conv: string, seq: number): void {
    this.toAck.set(conv, Math.max(seq, this.toAck.get(conv) ?? 0));
    this.emit("messages", { conv, seq });
    this.wake();
  }

  private async runAsk(conn: Connection): Promise<void> {
    const ask = this.asks[0];
    // `compact` is for an edge that offers it; elsewhere the same diff comes as an object.
    const body = ask.body.type === "members_sync" && !conn.compact ? { ...ask.body, compact: undefined } : ask.body;
    const answer = await conn.request(body);
    if (isError(answer) && PASSING.includes(answer.code) && ask.tries < 5) {
      ask.tries += 1;
      await sleep(serverWait(answer.retry_after_ms, 200), this.stopping);
      return;
    }
    this.asks.shift();
    if (isError(answer)) ask.reject(new RequestError(answer.code, answer.message, answer.retry_after_ms ?? undefined));
    else if (answer.type === "members_delta") {
      // An app's own `members_sync` with `compact`: the diff it stands for.
      const { group, epoch } = ask.body as { group?: string; epoch?: string };
      if (ask.body.type !== "members_sync" || !group || !epoch) ask.reject(new RequestError("internal", "a positional diff answered another request"));
      else ask.resolve({ type: "members_diff", id: answer.id, group, epoch, version: answer.version, digest: answer.digest, upserts: answer.upserts, removed: answer.removed, more: answer.more } as ReplyBody);
    } else ask.resolve(answer as ReplyBody);
  }

  /**
   * Sends the oldest queued messages pipelined, then settles their answers in order. A
   * message refused for a passing reason stays queued with those after it; the next round
   * starts again from it, after the wait the server asked for.
   */
  private async flushOutbox(conn: Connection): Promise<void> {
    const batch = this.store.pending(this.window);
    const inFlight: Array<[OutboxEntry, Promise<Answer>]> = [];
    const retries = batch.map((e) => e.tried);
    await this.store.markSending(batch);
    for (const [i, e] of batch.entries()) {
      const retry = retries[i];
      inFlight.push([
        e,
        conn.send({
          type: "send",
          conv: e.conv,
          client_msg_id: e.clientMsgId,
          body: e.body,
          client_ts: e.clientTs,
          ...(retry ? { retry: true } : {}),
          ...(e.replyTo ? { reply_to: e.replyTo } : {}),
          ...(e.mentions?.length ? { mentions: e.mentions } : {}),
          ...(e.attachments?.length ? { attachments: e.attachments } : {}),
        }),
      ]);
    }
    let wait = 0;
    let reconnect: Lost | null = null;
    let taken = 0;
    for (const [e, pending] of inFlight) {
      const answer = await pending;
      if (isError(answer)) {
        // A server catching up says how long to wait: the window goes again on the same
        // connection, since every client reconnecting at once would only add to the load.
        if (answer.code === "rate_limited" || answer.code === "out_of_order" || answer.code === "overloaded") {
          wait = Math.max(wait, serverWait(answer.retry_after_ms, 100));
        } else if (answer.code === "internal") {
          reconnect ??= new Lost(undefined, `send refused: ${answer.code}`, serverWait(answer.retry_after_ms, 0));
        } else {
          taken++;
          await this.store.settle(e, { error: `${answer.code}: ${answer.message}` });
          this.emit("failed", { conv: e.conv, clientMsgId: e.clientMsgId, code: answer.code, message: answer.message });
        }
      } else if (answer.type === "ack") {
        taken++;
        const own: Message = {
          conv: e.conv,
          seq: answer.seq,
          sender: this.me.user,
          device: this.me.device,
          client_msg_id: e.clientMsgId,
          body: e.body,
          client_ts: e.clientTs,
          server_ts: answer.server_ts,
        };
        await this.store.settle(e, { seq: answer.seq, own });
        this.emit("acked", { conv: e.conv, clientMsgId: e.clientMsgId, seq: answer.seq, duplicate: answer.duplicate ?? false });
      }
    }
    this.window = wait > 0 ? Math.max(1, taken) : Math.min(this.options.sendWindow, this.window * 2);
    if (reconnect) throw reconnect;
    if (wait > 0) await sleep(wait, this.stopping);
  }

  // Pushes.

  private queuePush(p: Push): void {
    this.pushes = this.pushes.then(() => this.onPush(p)).catch((e) => console.error("anchorage: a push could not be applied", e));
  }

  private async onPush(p: Push): Promise<void> {
    this.emit("push", p);
    switch (p.type) {
      case "message": {
        const m = p.message;
        if (this.droppedPush === m.seq) {
          this.droppedPush = 0;
          return;
        }
        if (!validSeq(m.seq) || typeof m.conv !== "string") return;
        const anchor = this.store.anchor(m.conv);
        if (m.seq <= anchor) return;
        // A conversation the device does not list yet is pulled with `sync`, which the
        // server authorizes, rather than started from a push.
        if (!this.store.isListed(m.conv)) {
          this.pulled.add(m.conv);
          this.requestSync(m.conv, null);
          return;
        }
        if (p.prev === anchor) {
          await this.store.append(m.conv, [m], m.seq, this.me.user);
          this.stored(m.conv, m.seq);
        } else {
          this.requestSync(m.conv, anchor);
        }
        return;
      }
      case "read":
        if (await this.store.setRead(p.conv, p.seq)) this.emit("read", { conv: p.conv, seq: p.seq });
        await this.store.readHeld(p.conv, p.seq);
        return;
      case "membership":
        if (p.joined) {
          await this.joined(p.conv);
          return;
        }
        await this.store.forget(p.conv);
        await this.store.dropMembers(p.conv);
        this.subscribed.delete(p.conv);
        this.emit("membership", { conv: p.conv, joined: false });
        return;
      case "members_changed": {
        const list = this.store.memberList(p.group);
        if (p.change.dismissed) {
          await this.store.dropMembers(p.group);
          return;
        }
        if (!list) return;
        const held = list.version;
        const applied = await this.store.changeMembers(p.group, p.prev, p.version, p.change.upserts ?? [], p.change.removed ?? []);
        if (applied && computed(list).total.toWire() === p.digest) {
          this.emit("members", { group: p.group, version: p.version, how: "live" });
        } else if (held < p.version) {
          // A change that does not continue the copy, or whose digest does not match what
          // it made: the copy is brought in line by a sync (a diff, or a bucket repair).
          if (!this.memberSyncs.has(p.group)) this.memberSyncs.set(p.group, []);
          this.wake();
        }
        return;
      }
      case "reactions": {
        if (!validSeq(p.seq) || !this.store.isListed(p.conv)) return;
        const anchor = this.store.anchor(p.conv);
        if (p.seq <= anchor) return;
        if (p.prev === anchor && (await this.store.applyReactions(p.conv, p.prev, p.seq, p.deltas, p.mine ?? []))) {
          this.stored(p.conv, p.seq);
        } else {
          this.requestSync(p.conv, anchor);
        }
        return;
      }
      case "typing":
        this.emit("typing", { conv: p.conv, users: p.users.map((u) => (typeof u === "string" ? u : String(u))) });
        return;
      default:
        return;
    }
  }

  // Member list sync.

  private async runMemberSync(conn: Connection): Promise<void> {
    const [group, waiters] = this.memberSyncs.entries().next().value as [string, Array<() => void>];
    this.memberSyncs.delete(group);
    let ended = true;
    let lost = false;
    try {
      ended = await this.syncGroup(conn, group);
    } catch (e) {
      lost = e instanceof Lost;
      throw e;
    } finally {
      const resumes = this.memberSyncResumes.get(group) ?? 0;
      if (lost && this.running) {
        // The connection went in the middle: the sync starts over once connected again, and
        // whoever waits for it waits for its end, not for the connection's.
        this.memberSyncs.set(group, [...waiters, ...(this.memberSyncs.get(group) ?? [])]);
      } else if (ended || resumes >= MEMBER_SYNC_RESUMES || !this.running) {
        this.memberSyncResumes.delete(group);
        for (const w of waiters) w();
      } else {
        // Still moving: the sync goes on after a step of the rest of the work, and whoever
        // waits for it waits for its end.
        this.memberSyncResumes.set(group, resumes + 1);
        this.memberSyncs.set(group, [...waiters, ...(this.memberSyncs.get(group) ?? [])]);
        this.memberSyncYielded = true;
      }
    }
  }

  /** Syncs a group's member list: true once it ended, false if it yielded still moving. */
  private async syncGroup(conn: Connection, group: string): Promise<boolean> {
    this.subscribed.add(group);
    const start = this.store.memberList(group);
    const [startEpoch, startVersion] = [start?.epoch, start?.version];
    let how: MemberSyncKind = "unchanged";
    let waits = 0;
    for (let round = 0; round < MEMBER_SYNC_ROUNDS; round++) {
      const list = this.store.memberList(group);
      // The copy is changed in place by live changes: the version asked from is kept.
      const from = list?.version;
      // Only a copy can be diffed, and only an edge that offers it is asked for the array.
      const asked = list !== undefined && conn.compact;
      const answer = await conn.request(
        list
          ? { type: "members_sync", group, epoch: list.epoch, version: list.version, digest: computed(list).total.toWire(), ...(asked ? { compact: true } : {}) }
          : { type: "members_sync", group },
      );
      if (isError(answer)) {
        if (PASSING.includes(answer.code)) {
          // Each wait holds up the rest of the work: after a few, the sync ends for now.
          if (++waits > MEMBER_SYNC_WAITS) return true;
          await sleep(serverWait(answer.retry_after_ms, 200), this.stopping);
          continue;
        }
        if (answer.code === "conflict") {
          await this.store.dropMembers(group);
          continue;
        }
        if (notVisibleYet(answer.code) && this.store.isListed(group) && round < 6) {
          // Joined a moment ago: the server's copy of the memberships (or of the group) may
          // not show it yet.
          await sleep(250 * (round + 1), this.stopping);
          continue;
        }
        // forbidden, not_found: the list is not ours to hold.
        await this.store.dropMembers(group);
        this.subscribed.delete(group);
        return true;
      }
      switch (answer.type) {
        case "members_unchanged":
          this.emit("members", { group, version: list?.version ?? 0, how });
          return true;
        case "members_diff":
        case "members_delta": {
          // A delta (taken only when asked) has the epoch the request named: the copy's.
          const epoch = answer.type === "members_diff" ? answer.epoch : asked ? list?.epoch : undefined;
          // A diff applies to this copy and moves it forward.
          if (!list || from === undefined || list.epoch !== epoch || answer.version <= from) {
            await this.store.dropMembers(group);
            continue;
          }
          // A live change moved the copy while the diff was on its way: asked again from
          // where the copy is now, not realigned.
          if (this.store.memberList(group) !== list || list.version !== from) continue;
          if (!(await this.store.changeMembers(group, from, answer.version, answer.upserts, answer.removed))) {
            await this.store.dropMembers(group);
            continue;
          }
          how = how === "unchanged" ? "diff" : how;
          if (!answer.more && answer.digest && computed(list).total.toWire() === answer.digest) {
            this.emit("members", { group, version: answer.version, how });
            return true;
          }
          continue;
        }
        case "members_page": {
          // A realignment: collect every page, then replace the copy in one go.
          const members: MemberInfo[] = [];
          let page = answer;
          for (;;) {
            members.push(...page.members.map((user) => ({ user })), ...(page.details ?? []));
            if (!page.cursor) break;
            const next = await conn.request({ type: "members_fetch", group, epoch: page.epoch, anchor: page.anchor, cursor: page.cursor });
            if (next.type !== "members_page") {
              members.length = 0;
              break;
            }
            page = next;
          }
          if (members.length > 0 || !page.cursor) {
            await this.store.replaceMembers(group, page.epoch, page.anchor, members);
            how = "realigned";
          }
          continue;
        }
        case "members_buckets": {
          // Same version, other members: fetch only the buckets that differ.
          const theirs = BucketedDigest.fromWire(answer.digests);
          if (!list || !theirs) {
            await this.store.dropMembers(group);
            continue;
          }
          const differing = computed(list).differing(theirs);
          const members: MemberInfo[] = [];
          let cursor: string | undefined;
          let complete = true;
          do {
            const page = await conn.request({ type: "members_fetch", group, epoch: answer.epoch, anchor: answer.version, buckets: differing, ...(cursor ? { cursor } : {}) });
            if (page.type !== "members_page") {
              complete = false;
              break;
            }
            members.push(...page.members.map((user) => ({ user })), ...(page.details ?? []));
            cursor = page.cursor ?? undefined;
          } while (cursor);
          if (complete) {
            await this.store.replaceBuckets(group, new Set(differing), members, answer.version);
            how = "repaired";
          }
          continue;
        }
        default:
          return true;
      }
    }
    // Out of rounds: a copy that moved forward (or to another epoch) goes on after other
    // work; one that did not in all of them (an edge that never lets it settle) is left as
    // it is.
    const now = this.store.memberList(group);
    if (!now) return true;
    return startVersion !== undefined && now.epoch === startEpoch && now.version <= startVersion;
  }
}

/**
 * `p`, marked as handled: answers still in flight when a connection ends are rejected
 * together, and only the first one awaited is looked at.
 */
function settled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/** The digest of the members actually held (a damaged copy shows). */
function computed(list: MemberList): BucketedDigest {
  const d = new BucketedDigest();
  for (const h of list.hashes.values()) d.insertHash(h);
  return d;
}

async function expect(answer: Promise<Answer>): Promise<void> {
  const a = await answer;
  if (isError(a) && PASSING.includes(a.code)) throw new Lost(undefined, `${a.code}: ${a.message}`, serverWait(a.retry_after_ms, 0));
}

function randomId(): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 22);
}


