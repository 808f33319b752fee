// The SDK against a broken or malicious edge (test/fake-edge.mjs): what the server says is
// checked before it is stored, and no answer drives the client into a tight loop.
import assert from "node:assert/strict";
import { test as nodeTest } from "node:test";

import { Client, MemoryBackend, SetDigest, Store } from "../dist/index.js";
import { fakeEdge, message, welcome } from "./fake-edge.mjs";

const test = (title, fn) => nodeTest(title, { timeout: 30_000 }, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function against(edge) {
  return Client.start({ url: edge.url, token: () => "t", backoffBaseMs: 50, backoffMaxMs: 200 });
}

/**
 * An edge whose welcome offers positional diffs and which answers the n-th `members_sync`
 * (counting from 1) with `answer(n, frame, send)`; `syncs()` counts them.
 */
async function memberEdge(answer) {
  let syncs = 0;
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send({ ...welcome(f), compact: true });
    else if (f.type === "members_sync") answer(++syncs, f, send);
  });
  return Object.assign(edge, { syncs: () => syncs });
}

test("waits the server asks for are bounded: a huge retry_after_ms is not a timer overflow", async () => {
  // `overloaded` on a send waits what it says (capped at ten minutes) before the send goes
  // again on the same connection, never the 1 ms a timer past 2^31 ms would fire after.
  const busy = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f));
    else if (f.type === "send") send({ type: "error", id: f.id, code: "overloaded", message: "busy", retry_after_ms: 1e10 });
  });
  const c = await against(busy);
  await c.send("ops", "hi");
  await sleep(1500);
  assert.equal(busy.connections(), 1, "no reconnect storm");
  assert.equal(busy.count("send"), 1, "waiting, not sending again");
  await c.stop();
  await busy.close();

  const limiting = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f));
    else if (f.type === "sync") send({ type: "error", id: f.id, code: "rate_limited", message: "slow down", retry_after_ms: 2 ** 31 });
  });
  const d = await against(limiting);
  await d.whenOnline();
  d.openConversation("ops");
  await sleep(1500);
  assert.equal(limiting.count("sync"), 1, "asked once, then waiting");
  await d.stop();
  await limiting.close();
});

test("an overloaded answer is asked again on the same connection, at the pace the server sets", async () => {
  // A projection catching up: two refusals, then the page. No reconnect, no second hello.
  let syncs = 0;
  const catching = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f, [{ conv: "ops", last_seq: 1, unread: 1, read_seq: 0 }]));
    else if (f.type === "sync" && ++syncs <= 2) send({ type: "error", id: f.id, code: "overloaded", message: "catching up", retry_after_ms: 50 });
    else if (f.type === "sync") send({ type: "messages", id: f.id, conv: "ops", messages: [message("ops", 1, "hi")], more: false });
    else if (f.type === "received") send({ type: "ok", id: f.id });
  });
  const c = await against(catching);
  for (let i = 0; i < 150 && c.anchor("ops") < 1; i++) await sleep(20);
  assert.equal(c.anchor("ops"), 1);
  assert.deepEqual(c.messages("ops").map((m) => m.body), ["hi"]);
  assert.equal(catching.count("sync"), 3);
  assert.equal(catching.connections(), 1, "asked again, not reconnected");
  await c.stop();
  await catching.close();

  // A send refused the same way goes again on the same connection once the wait is over.
  let sends = 0;
  const members = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f));
    else if (f.type === "send" && ++sends <= 2) send({ type: "error", id: f.id, code: "overloaded", message: "catching up with the members", retry_after_ms: 50 });
    else if (f.type === "send") send({ type: "ack", id: f.id, client_msg_id: f.client_msg_id, seq: 1, server_ts: 1, duplicate: false });
  });
  const e = await against(members);
  const acked = new Promise((resolve) => e.on("acked", resolve));
  await e.send("ops", "hi");
  assert.equal((await acked).seq, 1);
  assert.equal(members.count("send"), 3);
  assert.equal(members.connections(), 1, "sent again, not reconnected");
  await e.stop();
  await members.close();

  // One that says to wait 0 ms (or less) is waited for the least wait, not sent in a loop.
  for (const wait of [0, -5]) {
    const zero = await fakeEdge((f, send) => {
      if (f.type === "hello") send(welcome(f));
      else if (f.type === "send") send({ type: "error", id: f.id, code: "overloaded", message: "busy", retry_after_ms: wait });
    });
    const z = await against(zero);
    for (let n = 0; n < 4; n++) await z.send("ops", `m${n}`);
    await sleep(1000);
    const sent = zero.count("send");
    await z.stop();
    await zero.close();
    assert.ok(sent <= 40, `${sent} sends in a second for a wait of ${wait}`);
    assert.equal(zero.connections(), 1);
  }

  // An edge that stays overloaded is asked again as often as it says, not in a tight loop.
  const stuck = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f, [{ conv: "ops", last_seq: 1, unread: 1, read_seq: 0 }]));
    else if (f.type === "sync") send({ type: "error", id: f.id, code: "overloaded", message: "catching up", retry_after_ms: 200 });
  });
  const d = await against(stuck);
  await d.whenOnline();
  await sleep(1000);
  const asked = stuck.count("sync");
  await d.stop();
  await stuck.close();
  assert.ok(asked >= 2 && asked <= 7, `${asked} syncs in a second`);
  assert.deepEqual(d.messages("ops"), []);
});

test("a sync answer that does not move the anchor ends the pull", async () => {
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f, [{ conv: "ops", last_seq: 5, unread: 5, read_seq: 0 }]));
    else if (f.type === "sync") send({ type: "messages", id: f.id, conv: "ops", messages: [], more: true });
  });
  const c = await against(edge);
  await c.whenOnline();
  await sleep(1000);
  assert.ok(edge.count("sync") <= 2, `${edge.count("sync")} syncs in a second`);
  await c.stop();
  await edge.close();
});

test("entries are taken only for their conversation, past the anchor, in rising order, and once", async () => {
  let push;
  const edge = await fakeEdge((f, send) => {
    push = send;
    if (f.type === "hello") send(welcome(f, [{ conv: "ops", last_seq: 3, unread: 1, read_seq: 0 }]));
    else if (f.type === "sync" && f.conv === "ops") {
      send({
        type: "messages",
        id: f.id,
        conv: "ops",
        messages: [
          // In its current state: reacted to once, by the entry at 3.
          message("ops", 2, "hello", { version: 3, reactions: [{ emoji: "👍", count: 1 }] }),
          message("ops", 3, null, { kind: "reaction", target: 2, emoji: "👍", added: true }),
          // What follows breaks the order: not taken.
          message("ops", 3, "again"),
          message("secret", 4, "into another conversation"),
        ],
        more: false,
      });
    } else if (f.type === "sync") send({ type: "error", id: f.id, code: "forbidden", message: "not a member" });
    else if (f.type === "received") send({ type: "ok", id: f.id });
  });
  const c = await against(edge);
  await c.whenOnline();
  for (let i = 0; i < 100 && c.anchor("ops") < 3; i++) await sleep(20);
  assert.equal(c.anchor("ops"), 3);
  assert.deepEqual(c.messages("ops").map((m) => m.body), ["hello"]);
  assert.deepEqual(c.messages("ops")[0].reactions, [{ emoji: "👍", count: 1 }], "the entry behind the state is not applied again");
  assert.deepEqual(c.messages("secret"), []);

  // A seq past what JavaScript holds exactly is ignored; the chain carries on after it.
  push({ type: "message", prev: 3, message: message("ops", 2 ** 60, "huge") });
  push({ type: "message", prev: 3, message: message("ops", 4, "next") });
  // A conversation the device does not list is asked for with `sync`, which the server
  // refuses here: nothing of it is kept.
  push({ type: "message", prev: 0, message: message("stranger", 1, "not yours") });
  for (let i = 0; i < 100 && (c.anchor("ops") < 4 || edge.count("sync") < 2); i++) await sleep(20);
  assert.equal(c.anchor("ops"), 4);
  assert.deepEqual(c.messages("ops").map((m) => m.body), ["hello", "next"]);
  assert.ok(edge.count("sync") >= 2, "the stranger's conversation was asked for");
  await sleep(100);
  assert.deepEqual(c.messages("stranger"), []);
  assert.ok(!c.conversations().some((x) => x.conv === "stranger"));

  // Coalesced reactions apply at their `prev`; one whose target is past `prev` is a sync.
  push({ type: "reactions", conv: "ops", prev: 4, seq: 6, deltas: [{ target: 2, emoji: "🎉", delta: 2 }], mine: [{ target: 2, emoji: "🎉", added: true }] });
  for (let i = 0; i < 100 && c.anchor("ops") < 6; i++) await sleep(20);
  assert.deepEqual(c.messages("ops")[0].reactions, [
    { emoji: "👍", count: 1 },
    { emoji: "🎉", count: 2, mine: true },
  ]);
  await c.stop();
  await edge.close();
});

test("a first message in a conversation not listed yet arrives even if the server's view lags", async () => {
  let push;
  let refused = 0;
  const edge = await fakeEdge((f, send) => {
    push = send;
    if (f.type === "hello") send(welcome(f));
    else if (f.type === "sync" && refused < 2) {
      // The memberships the server answers from do not show the new 1:1 yet.
      refused++;
      send({ type: "error", id: f.id, code: "forbidden", message: "not a member" });
    } else if (f.type === "sync") send({ type: "messages", id: f.id, conv: f.conv, messages: [message(f.conv, 1, "hi, new here")], more: false });
    else if (f.type === "received") send({ type: "ok", id: f.id });
  });
  const c = await against(edge);
  await c.whenOnline();
  const joined = new Promise((r) => c.on("membership", (e) => e.conv === "dm" && e.joined && r()));
  push({ type: "message", prev: 0, message: message("dm", 1, "hi, new here") });
  await joined;
  assert.deepEqual(c.messages("dm").map((m) => m.body), ["hi, new here"]);
  assert.equal(edge.count("sync"), 3);
  await c.stop();
  await edge.close();
});

test("a diff in its positional form is read strictly: strays, malformed arrays and objects posing as one are not taken, a digest that does not match syncs again", async () => {
  const edge = await memberEdge((syncs, f, send) => {
    if (syncs === 1) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 5, members: ["a", "b"] });
    else if (syncs === 2) {
      assert.equal(f.version, 5);
      assert.equal(f.compact, true, "asked of an edge that says it can");
      // Not this request's: another id, too few elements, bad members, a bad flag, an
      // object calling itself a delta.
      send([f.id + 100, 9, null, ["x"], [], 0]);
      send([f.id, 9]);
      send([f.id, 9, null, [{ nickname: "no user" }], [], 0]);
      send([f.id, 9, null, [""], [], 0]);
      send([f.id, 9, null, ["x"], [], true]);
      send({ type: "members_delta", id: f.id, version: 9, upserts: "xyz", removed: [], more: false });
      // The answer: a joins-and-leaves diff whose digest is not what it gives.
      send([f.id, 6, SetDigest.of(["a", "b", "c"]).toWire(), ["c", { user: "d", role: "admin" }], ["a"], 0]);
    } else if (syncs === 3) {
      assert.equal(f.version, 6, "synced again from the diff's version");
      // A diff that does not move the copy forward is not taken: the copy is dropped.
      send([f.id, 6, null, ["y"], [], 0]);
    } else if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 6, members: ["b", "c"], details: [{ user: "d", role: "admin" }] });
    else send({ type: "members_unchanged", id: f.id });
  });
  const c = await against(edge);
  await c.whenOnline();
  await c.syncMembers("g");
  const list = c.memberList("g");
  assert.deepEqual([...list.members.keys()].sort(), ["b", "c", "d"]);
  assert.equal(list.members.get("d").role, "admin");
  assert.equal(list.version, 6);
  assert.ok(edge.syncs() >= 4, "the mismatched digest and the diff that did not move forward were synced again");
  assert.equal(edge.connections(), 1, "the strays did not cost the connection");
  await c.stop();
  await edge.close();
});

test("a live change that lands while a diff is on its way is not a realignment", async () => {
  // The first copy is taken at 5. Asked for a diff from 5, the edge first delivers the change
  // live (5 → 6), then answers with the same change as a diff: the copy is there already.
  const a6 = SetDigest.of(["a", "b"]).toWire();
  let pages = 0;
  const edge = await memberEdge((_, f, send) => {
    if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: ++pages === 1 ? 5 : 6, members: pages === 1 ? ["a"] : ["a", "b"] });
    else if (f.version === 5) {
      send({ type: "members_changed", group: "g", prev: 5, version: 6, digest: a6, change: { upserts: [{ user: "b" }], removed: [] } });
      send({ type: "members_diff", id: f.id, group: "g", epoch: "e1", version: 6, digest: a6, upserts: [{ user: "b" }], removed: [], more: false });
    } else send({ type: "members_unchanged", id: f.id });
  });
  const c = await against(edge);
  const seen = [];
  c.on("members", (e) => seen.push(e.how));
  await c.whenOnline();
  await c.syncMembers("g");
  const list = c.memberList("g");
  assert.deepEqual([...list.members.keys()].sort(), ["a", "b"]);
  assert.equal(list.version, 6);
  assert.deepEqual(seen, ["live", "realigned"], "the live change, then the sync that took the first copy");
  assert.equal(pages, 1, "the copy the live change moved was asked again from 6, not realigned");
  assert.equal(edge.syncs(), 3, "a page, the diff the live change overtook, then unchanged");
  await c.stop();
  await edge.close();
});

test("a member diff longer than one sync's rounds goes on after other work until the copy is in line", async () => {
  // A copy taken at version 1 that is 99 versions behind, one version per diff page: more
  // pages than one sync takes before it yields.
  const N = 100;
  const users = (n) => Array.from({ length: n }, (_, k) => `u${k}`);
  const edge = await memberEdge((_, f, send) => {
    if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 1, members: ["u0"] });
    else if (f.version < N) {
      const version = f.version + 1;
      const end = version === N ? { digest: SetDigest.of(users(N)).toWire() } : {};
      send({ type: "members_diff", id: f.id, group: "g", epoch: "e1", version, ...end, upserts: [{ user: `u${version - 1}` }], removed: [], more: version < N });
    } else send({ type: "members_unchanged", id: f.id });
  });
  const c = await against(edge);
  const seen = [];
  c.on("members", (e) => seen.push(e.version));
  await c.whenOnline();
  await c.syncMembers("g");
  const list = c.memberList("g");
  assert.equal(list.version, N, "the waiter was answered once the copy was in line, not when the sync yielded");
  assert.deepEqual([...list.members.keys()].sort(), users(N).sort());
  assert.deepEqual(seen, [N], "announced once, at the end");
  assert.equal(edge.syncs(), N, "a page, then one diff per version");
  await c.stop();
  await edge.close();
});

test("an edge that moves a member list forward without end is asked a bounded number of times, and other work goes on meanwhile", async () => {
  let syncs = 0;
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send({ ...welcome(f), compact: true });
    else if (f.type === "send") send({ type: "ack", id: f.id, client_msg_id: f.client_msg_id, seq: 1, server_ts: 1, duplicate: false });
    else if (f.type !== "members_sync") return;
    else if ((syncs++, !f.epoch)) send({ type: "members_page", id: f.id, group: f.group, epoch: "e1", anchor: 1, members: ["u0"] });
    else send({ type: "members_diff", id: f.id, group: f.group, epoch: "e1", version: f.version + 1, upserts: [{ user: `u${f.version}` }], removed: [], more: true });
  });
  const c = await against(edge);
  await c.whenOnline();
  let synced = false;
  const sync = c.syncMembers("g").then(() => (synced = true));
  while (syncs < 100) await sleep(5);
  // Asked and sent while the sync runs: answered between its rounds, not after all of them.
  const answer = await c.ask({ type: "members_sync", group: "other" });
  assert.equal(answer.type, "members_page");
  const acked = new Promise((resolve) => c.on("acked", resolve));
  await c.send("ops", "hi");
  assert.equal((await acked).seq, 1);
  assert.equal(synced, false, "the ask and the send were answered while the sync still ran");
  await sync;
  // 64 rounds, and 15 more runs of 64 while the copy kept moving; and the ask.
  assert.equal(syncs, 64 * 16 + 1);
  await sleep(300);
  assert.equal(syncs, 64 * 16 + 1, "nothing more once it gave up");
  await c.stop();
  await edge.close();
});

test("an edge that never lets a member list settle is asked a bounded number of times", async () => {
  // Every ask is a conflict: the copy is dropped and asked for again, and never moves.
  const edge = await memberEdge((_, f, send) => send({ type: "error", id: f.id, code: "conflict", message: "start over" }));
  const c = await against(edge);
  await c.whenOnline();
  await c.syncMembers("g");
  const asked = edge.syncs();
  assert.ok(asked >= 8 && asked <= 64, `asked ${asked} times`);
  await sleep(300);
  assert.equal(edge.syncs(), asked, "a sync that got nowhere is not scheduled again");
  assert.equal(c.memberList("g"), undefined);
  await c.stop();
  await edge.close();
});

test("a member sync cut off by a lost connection is answered once it ends on the next one, not when the connection went", async () => {
  // The first connection drops as the first page is asked for; the second answers it, then
  // a diff to version 3.
  const all = ["u0", "u1", "u2"];
  let hello = 0;
  const edge = await fakeEdge((f, send, hangUp) => {
    if (f.type === "hello") {
      hello++;
      send({ ...welcome(f), compact: true });
    } else if (f.type !== "members_sync") return;
    else if (hello === 1) hangUp();
    else if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 2, members: ["u0", "u1"] });
    else if (f.version < 3) send({ type: "members_diff", id: f.id, group: "g", epoch: "e1", version: 3, digest: SetDigest.of(all).toWire(), upserts: [{ user: "u2" }], removed: [], more: false });
    else send({ type: "members_unchanged", id: f.id });
  });
  const c = await against(edge);
  try {
    await c.whenOnline();
    await c.syncMembers("g");
    assert.equal(edge.connections(), 2, "answered only after the second connection");
    const list = c.memberList("g");
    assert.ok(list, "the waiter was answered with the list in hand");
    assert.equal(list.version, 3);
    assert.deepEqual([...list.members.keys()].sort(), all);
  } finally {
    await c.stop();
    await edge.close();
  }
});

test("a member sync waited for ends when the client stops, connected or not", async () => {
  const edge = await fakeEdge((f, send, hangUp) => {
    if (f.type === "hello") send({ ...welcome(f), compact: true });
    else if (f.type === "members_sync") hangUp();
  });
  const c = await against(edge);
  try {
    await c.whenOnline();
    let ended = false;
    const sync = c.syncMembers("g").then(() => (ended = true));
    while (edge.connections() < 3) await sleep(10);
    assert.equal(ended, false, "still waiting while every connection is cut off mid-sync");
    await c.stop();
    await sync;
    assert.equal(c.memberList("g"), undefined);
    await c.syncMembers("g"); // asked after the stop: answered at once
  } finally {
    await c.stop();
    await edge.close();
  }
});

test("a batch diff applies only to the copy it was computed from, not to one a live change moved meanwhile", async () => {
  // The copy is at version 1 ({u0}). The batch is asked from 1; before its answer, a live
  // change makes u1 an admin at version 3; the answer is the diff 1 → 2 (u1 a plain member).
  const digest = SetDigest.of(["u0", "u1"]).toWire();
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send({ ...welcome(f), compact: true });
    else if (f.type === "members_sync" && !f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 1, members: ["u0"] });
    else if (f.type === "members_sync") send({ type: "members_unchanged", id: f.id });
    else if (f.type === "members_sync_batch") {
      send({ type: "members_changed", group: "g", prev: 1, version: 3, digest, change: { upserts: [{ user: "u1", role: "admin" }], removed: [] } });
      send({ type: "members_batch", id: f.id, results: [{ group: "g", result: "diff", epoch: "e1", version: 2, digest, upserts: [{ user: "u1" }], removed: [], more: false }] });
    }
  });
  const c = await against(edge);
  try {
    await c.whenOnline();
    await c.syncMembers("g");
    assert.equal(c.memberList("g").version, 1);
    await c.syncMembersBatch(["g"]);
    const list = c.memberList("g");
    assert.equal(list.version, 3, "not taken back to the diff's version");
    assert.equal(list.members.get("u1")?.role, "admin", "the later change holds");
  } finally {
    await c.stop();
    await edge.close();
  }
});

test("a read marker the server never confirmed is sent again by the next client on the same store, until it is", async () => {
  // The edge holds "g" up to 9 for bob; the first connection's reads go unanswered.
  let answering = false;
  const reads = [];
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f, f.anchors?.length ? [] : [{ conv: "g", last_seq: 9, unread: 9, read_seq: 0 }]));
    else if (f.type === "sync") send({ type: "messages", id: f.id, conv: "g", messages: f.after < 9 ? [message("g", 9, "hi")] : [], more: false });
    else if (f.type === "read") {
      reads.push([f.conv, f.seq, answering]);
      if (answering) send({ type: "ok", id: f.id, conv: f.conv, seq: f.seq });
    }
  });
  const backend = new MemoryBackend();
  const open = async () => Client.start({ url: edge.url, token: () => "t", backoffBaseMs: 50, backoffMaxMs: 200, store: await Store.open(backend) });
  try {
    const first = await open();
    await first.whenOnline();
    while (first.store.anchor("g") < 9) await sleep(10);
    const marked = first.markRead("g", 9).catch(() => "stopped");
    while (reads.length < 1) await sleep(10);
    // Asked again while the first is unanswered: one request on its way, not one per ask.
    const again = [first.markRead("g", 9).catch(() => "stopped"), first.markRead("g", 9).catch(() => "stopped")];
    await sleep(200);
    assert.equal(reads.length, 1);
    await first.stop();
    assert.deepEqual(await Promise.all(again), ["stopped", "stopped"]);
    assert.equal(await marked, "stopped");
    assert.equal(first.store.readSeq("g"), 9, "kept on the device");

    answering = true;
    const second = await open();
    await second.whenOnline();
    while (reads.length < 2) await sleep(10);
    assert.deepEqual(reads[1], ["g", 9, true], "sent again once connected");
    await sleep(100);
    await second.stop();

    const third = await open();
    await third.whenOnline();
    await sleep(300);
    await third.stop();
    assert.equal(reads.length, 2, "confirmed: not sent again");
  } finally {
    await edge.close();
  }
});

test("a client whose store fails a write stops and says so, rather than going on ahead of what was kept", async () => {
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") send(welcome(f, [{ conv: "g", last_seq: 1, unread: 1, read_seq: 0 }]));
    else if (f.type === "sync") send({ type: "messages", id: f.id, conv: "g", messages: [message("g", 1, "hi")], more: false });
  });
  let failing = false;
  const backend = new MemoryBackend();
  const write = backend.write.bind(backend);
  backend.write = async (batch) => {
    if (failing) throw new Error("disk full");
    return write(batch);
  };
  const store = await Store.open(backend);
  // The first write (the welcome's summary) fails.
  failing = true;
  const c = await Client.start({ url: edge.url, token: () => "t", backoffBaseMs: 50, backoffMaxMs: 200, store });
  try {
    const e = await new Promise((resolve) => (store.failure ? resolve({ error: store.failure.message }) : c.on("storeFailed", resolve)));
    assert.equal(e.error, "disk full");
    await sleep(300);
    const connections = edge.connections();
    await sleep(300);
    assert.equal(edge.connections(), connections, "stopped: no more connections");
    await assert.rejects(c.ask({ type: "ping" }), /stopped/);
  } finally {
    await c.stop();
    await edge.close();
  }
});

test("a device in thousands of conversations signs in: its hello carries the most recent anchors that fit", async () => {
  const store = await Store.open(new MemoryBackend());
  for (let n = 1; n <= 3000; n++) {
    const conv = `conversation-number-${String(n).padStart(6, "0")}`;
    await store.append(conv, [message(conv, n * 10, "hi")], n * 10, "bob");
  }
  let hello;
  const edge = await fakeEdge((f, send) => {
    if (f.type !== "hello") return;
    hello = f;
    send(welcome(f));
  });
  const c = await Client.start({ url: edge.url, token: () => "t", store });
  try {
    await c.whenOnline();
    const bytes = JSON.stringify(hello).length;
    assert.ok(bytes < 40_000, `hello of ${bytes} bytes`);
    assert.ok(hello.anchors.length > 300, `${hello.anchors.length} anchors`);
    assert.equal(hello.anchors[0].seq, 30_000, "the most recent first");
  } finally {
    await c.stop();
    await edge.close();
  }
});

test("an edge whose welcome does not say compact is never asked for it", async () => {
  const edge = await fakeEdge((f, send) => {
    if (f.type === "hello") {
      assert.equal(f.compact, undefined, "hello carries nothing an older edge refuses");
      send(welcome(f));
    } else if (f.type === "members_sync") {
      if (f.compact !== undefined) send({ type: "error", id: f.id, code: "invalid_request", message: "unknown field `compact`" });
      else if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 5, members: ["a"] });
      else send({ type: "members_diff", id: f.id, group: "g", epoch: "e1", version: 7, digest: SetDigest.of(["a", "b"]).toWire(), upserts: [{ user: "b" }], removed: [], more: false });
    }
  });
  const c = await against(edge);
  await c.whenOnline();
  await c.syncMembers("g");
  await c.syncMembers("g");
  assert.deepEqual([...c.memberList("g").members.keys()].sort(), ["a", "b"]);
  assert.equal(c.memberList("g").version, 7);
  // An app's own ask with `compact` goes without it to such an edge, and gets the object.
  const asked = await c.ask({ type: "members_sync", group: "g", epoch: "e1", version: 5, compact: true });
  assert.equal(asked.type, "members_diff");
  await c.stop();
  await edge.close();
});

test("members of the wrong shape are not kept: a page leaves them out, a diff carrying one is not applied", async () => {
  const edge = await memberEdge((syncs, f, send) => {
    if (syncs === 1) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 5, members: ["a", 7], details: [{ user: "b", role: "god" }, { user: "c", role: "admin", nickname: "C" }, { user: "e", muted_until: "soon" }] });
    else if (syncs === 2) {
      send([f.id, 6, null, [{ user: "r", role: "god" }], [], 0]);
      send({ type: "members_diff", id: f.id, group: "g", epoch: "e1", version: 6, upserts: [{ user: "d", nickname: 5 }], removed: [], more: false });
    } else if (!f.epoch) send({ type: "members_page", id: f.id, group: "g", epoch: "e1", anchor: 6, members: ["a"], details: [{ user: "c", role: "admin", nickname: "C" }] });
    else send({ type: "members_unchanged", id: f.id });
  });
  const c = await against(edge);
  await c.whenOnline();
  await c.syncMembers("g");
  const list = c.memberList("g");
  assert.deepEqual([...list.members.keys()].sort(), ["a", "c"]);
  assert.equal(list.members.get("c").role, "admin");
  assert.equal(list.version, 6, "the malformed diff was dropped and the copy realigned");
  assert.ok(edge.syncs() >= 3, "the diff carrying a malformed member was followed by a realignment");
  await c.stop();
  await edge.close();
});
