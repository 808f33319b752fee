// The TypeScript SDK against a real stack (`anchorage dev` with its nats-server and SQLite),
// over the platform WebSocket, with socket cuts and refusals through a TCP proxy.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test as nodeTest } from "node:test";

import { Client, SetDigest, Store } from "../dist/index.js";
import { FileBackend } from "../dist/file-store.js";
import { eventually, mintToken, sleep, startProxy, startStack } from "./stack.mjs";

/** Each test gets a minute: a hang fails that test, not the whole file. */
const test = (title, fn) => nodeTest(title, { timeout: 60_000 }, fn);

let stack;
const clients = [];

before(async () => {
  stack = await startStack();
});

after(async () => {
  for (const c of clients) await c.stop();
  await stack?.stop();
});

let unique = 0;
/** A fresh user name, so tests sharing the stack never see each other's conversations. */
const name = (base) => `${base}${++unique}${Date.now() % 100000}`;

async function client(user, device = "node", options = {}) {
  const c = await Client.start({ url: stack.ws(), token: () => mintToken(user, device), backoffBaseMs: 100, backoffMaxMs: 1000, ...options });
  clients.push(c);
  return c;
}

const bodies = (c, conv) => c.messages(conv).map((m) => m.body);

/**
 * Two fresh users signed in (alice through `aliceUrl` when given, e.g. a proxy, bob through
 * `bobUrl`) and their 1:1 conversation.
 */
async function pair({ aliceUrl, bobUrl } = {}) {
  const [a, b] = [name("alice"), name("bob")];
  const alice = await client(a, "node", aliceUrl ? { url: aliceUrl } : {});
  const bob = await client(b, "node", bobUrl ? { url: bobUrl } : {});
  await Promise.all([alice.whenOnline(), bob.whenOnline()]);
  return { alice, bob, conv: await alice.openDirect(b) };
}

test("two users chat both ways; pipelined sends keep their order and are acknowledged once", async () => {
  const [a, b] = [name("alice"), name("bob")];
  const alice = await client(a);
  const bob = await client(b);
  await alice.whenOnline();
  await bob.whenOnline();
  const conv = await alice.openDirect(b);
  const ids = [];
  for (let i = 0; i < 100; i++) ids.push(await alice.send(conv, `m${i}`));
  const seqs = await Promise.all(ids.map((id) => alice.acked(id)));
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, "acks follow the order written");
  assert.equal(new Set(seqs).size, 100);
  await eventually("bob to hold all 100", () => bob.messages(conv).length === 100);
  assert.deepEqual(bodies(bob, conv), ids.map((_, i) => `m${i}`));
  assert.equal(bob.conversations().find((c) => c.conv === conv).unread, 100);

  const reply = await bob.send(conv, "hi alice");
  const seq = await bob.acked(reply);
  await eventually("alice to get the reply", () => alice.messages(conv).some((m) => m.seq === seq && m.body === "hi alice"));
  assert.equal(alice.anchor(conv), seq);
});

test("a read on one device reaches the user's other device, and unread counts follow", async () => {
  const [a, b] = [name("alice"), name("bob")];
  const alice = await client(a);
  const phone = await client(b, "phone");
  const laptop = await client(b, "laptop");
  await Promise.all([alice.whenOnline(), phone.whenOnline(), laptop.whenOnline()]);
  const conv = await alice.openDirect(b);
  let last = 0;
  for (let i = 0; i < 5; i++) last = await alice.acked(await alice.send(conv, `hello ${i}`));
  await eventually("both devices to hold the messages", () => phone.anchor(conv) === last && laptop.anchor(conv) === last);
  assert.equal(laptop.conversations().find((c) => c.conv === conv).unread, 5);
  await phone.markRead(conv, last);
  await eventually("the laptop to follow the read", () => laptop.store.readSeq(conv) === last);
  assert.equal(laptop.conversations().find((c) => c.conv === conv).unread, 0);
});

test("sends cut between publish and ack are stored once, in order, through repeated socket cuts", async () => {
  const proxy = await startProxy(stack.ports[0]);
  const { alice, bob, conv } = await pair({ aliceUrl: proxy.url });
  const ids = [];
  for (let i = 0; i < 300; i++) ids.push(await alice.send(conv, `n${i}`));
  // Cut the sockets while the window is in flight, several times.
  for (let cut = 0; cut < 5; cut++) {
    await sleep(40);
    proxy.cut();
  }
  const seqs = await Promise.all(ids.map((id) => alice.acked(id)));
  assert.equal(new Set(seqs).size, 300, "one seq per message");
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, "stored in the order written");
  await eventually("bob to hold all 300", () => bob.messages(conv).length >= 300);
  assert.deepEqual(bodies(bob, conv), ids.map((_, i) => `n${i}`), "each once, in order");
  // The server's history agrees: no second copy anywhere.
  const history = await bob.history(conv, 0, 500);
  assert.equal(history.length, 300);
  assert.ok(proxy.attempts.length >= 2, "the client reconnected");
  await proxy.close();
});

test("a lost live push is a gap: repaired by sync from the anchor", async () => {
  const { alice, bob, conv } = await pair();
  const first = await alice.acked(await alice.send(conv, "one"));
  await eventually("bob to hold the first", () => bob.anchor(conv) === first);
  const repaired = new Promise((r) => bob.on("gapRepaired", (e) => e.conv === conv && r(e)));
  bob.dropPush(first + 1);
  await alice.acked(await alice.send(conv, "two"));
  const third = await alice.acked(await alice.send(conv, "three"));
  const gap = await repaired;
  assert.equal(gap.from, first);
  assert.equal(gap.to, third);
  assert.deepEqual(bodies(bob, conv), ["one", "two", "three"]);
});

test("what came while a device was offline arrives at reconnect, from its anchors", async () => {
  const proxy = await startProxy(stack.ports[0]);
  const { alice, bob, conv } = await pair({ bobUrl: proxy.url });
  await alice.acked(await alice.send(conv, "before"));
  await eventually("bob to hold the first", () => bob.messages(conv).length === 1);
  proxy.refuse(1);
  proxy.cut();
  let last = 0;
  for (let i = 0; i < 10; i++) last = await alice.acked(await alice.send(conv, `while away ${i}`));
  await sleep(300);
  assert.equal(bob.messages(conv).length, 1, "nothing came through the refusing proxy");
  proxy.accept();
  await eventually("bob to catch up", () => bob.anchor(conv) === last, 30_000);
  assert.deepEqual(bodies(bob, conv), ["before", ...Array.from({ length: 10 }, (_, i) => `while away ${i}`)]);
  await proxy.close();
});

test("reconnects honour Retry-After from a busy edge and spread out with jitter", async () => {
  const user = name("carol");
  const proxy = await startProxy(stack.ports[0]);
  proxy.refuse(2);
  const carol = await client(user, "node", { url: proxy.url });
  await sleep(5500);
  // Each refused upgrade is followed by the client's plain GET for Retry-After: two
  // connections per attempt, and attempts at least 2 s apart.
  const starts = proxy.attempts.filter((_, i) => i % 2 === 0);
  assert.ok(starts.length >= 2 && starts.length <= 3, `attempts: ${starts.length}`);
  for (let i = 1; i < starts.length; i++) assert.ok(starts[i] - starts[i - 1] >= 1950, `waited ${starts[i] - starts[i - 1]} ms`);
  proxy.accept();
  await carol.whenOnline();
  await proxy.close();
});

test("4002: an expired token is replaced by a fresh one and the session carries on", async () => {
  const [a, b] = [name("alice"), name("bob")];
  let calls = 0;
  const alice = await client(a);
  const bob = await client(b, "node", {
    // The first token expires while connected; later ones are fresh.
    token: () => (++calls === 1 ? mintToken(b, "node", 2) : mintToken(b, "node")),
  });
  const failures = [];
  bob.on("authFailed", (e) => failures.push(e.code));
  await Promise.all([alice.whenOnline(), bob.whenOnline()]);
  await eventually("the expired token to be noticed", () => failures.includes(4002), 15_000);
  await bob.whenOnline();
  const conv = await alice.openDirect(b);
  const seq = await alice.acked(await alice.send(conv, "after the refresh"));
  await eventually("bob to get it", () => bob.anchor(conv) === seq);
  assert.ok(calls >= 2);
});

test("4005: a revoked session stops the client for good", async () => {
  const user = name("dave");
  const dave = await client(user, "tablet");
  await dave.whenOnline();
  const stopped = new Promise((r) => dave.on("stopped", r));
  await stack.cli(["revoke", "--user", user, "--device", "tablet"]);
  const e = await stopped;
  assert.equal(e.code, 4005);
  await sleep(1500);
  assert.equal(dave.online, false);
});

test("a message written offline is sent on reconnect; a refused one fails and does not hold back the rest", async () => {
  const proxy = await startProxy(stack.ports[0]);
  const { alice, bob, conv } = await pair({ aliceUrl: proxy.url });
  proxy.refuse(1);
  proxy.cut();
  const offline = await alice.send(conv, "written offline");
  const stranger = await alice.send("not-a-member-group", "refused");
  const next = await alice.send(conv, "after the refused one");
  assert.equal(alice.outbox(offline).state, "queued");
  proxy.accept();
  const s1 = await alice.acked(offline);
  await assert.rejects(alice.acked(stranger), /forbidden|not_found/);
  const s2 = await alice.acked(next);
  assert.ok(s2 > s1);
  await eventually("bob to get both", () => bob.messages(conv).length === 2);
  await proxy.close();
});

test("a file store survives a restart: anchors, messages and the outbox carry over", async () => {
  const [a, b] = [name("alice"), name("bob")];
  const path = join(mkdtempSync(join(tmpdir(), "anchorage-sdk-store-")), "bob.json");
  const alice = await client(a);
  let bob = await client(b, "node", { store: await Store.open(new FileBackend(path)) });
  await Promise.all([alice.whenOnline(), bob.whenOnline()]);
  const conv = await alice.openDirect(b);
  for (let i = 0; i < 20; i++) await alice.acked(await alice.send(conv, `k${i}`));
  await eventually("bob to hold 20", () => bob.messages(conv).length === 20);
  await bob.stop();
  const queued = [];
  // Offline: the store opens with what it held, and takes a message to send later.
  const store = await Store.open(new FileBackend(path));
  assert.equal(store.messagesOf(conv).length, 20);
  const anchor = store.anchor(conv);
  const more = await alice.acked(await alice.send(conv, "while bob was away"));
  bob = await client(b, "node", { store });
  queued.push(await bob.send(conv, "from the restarted bob"));
  await eventually("bob to catch up", () => bob.anchor(conv) >= more);
  assert.equal(bob.messages(conv).filter((m) => m.seq <= anchor).length, 20, "nothing refetched below the anchor");
  await bob.acked(queued[0]);
  await eventually("alice to get bob's", () => alice.messages(conv).some((m) => m.body === "from the restarted bob"));
});

test("edits and reactions count once: live (reactions coalesced) and on a device that syncs", async () => {
  const { alice, bob, conv } = await pair();
  const seq = await alice.acked(await alice.send(conv, "draft"));
  await eventually("bob to hold it", () => bob.anchor(conv) === seq);
  let synced = 0;
  bob.on("gapRepaired", (e) => e.conv === conv && synced++);
  const edit = await alice.edit(conv, seq, "final");
  const reaction = await alice.react(conv, seq, "👍");
  assert.ok(edit > seq && reaction > edit);
  assert.equal(await alice.react(conv, seq, "👍"), undefined, "a repeat stores nothing");
  // Bob gets the edit as an entry and the reaction in a coalesced `reactions` push.
  await eventually("bob's copy to show both", () => bob.anchor(conv) === reaction);
  const live = bob.messages(conv).find((m) => m.seq === seq);
  assert.equal(live.body, "final");
  assert.equal(live.edits, 1);
  assert.deepEqual(live.reactions, [{ emoji: "👍", count: 1 }]);
  assert.equal(synced, 0, "applied from the pushes, no repair");
  // The sender's own device holds the same.
  await eventually("alice's copy", () => alice.anchor(conv) === reaction);
  assert.deepEqual(alice.messages(conv).find((m) => m.seq === seq).reactions, [{ emoji: "👍", count: 1, mine: true }]);

  // A new device reads the message in its current state and the entries that made it so:
  // each is applied once.
  const fresh = await client(bob.user, "second");
  await eventually("the second device to sync", () => fresh.anchor(conv) === reaction);
  const copy = fresh.messages(conv).find((m) => m.seq === seq);
  assert.equal(copy.edits, 1);
  assert.equal(copy.body, "final");
  assert.deepEqual(copy.reactions, [{ emoji: "👍", count: 1 }]);
  const revoke = await alice.revoke(conv, seq);
  await eventually("the revoke everywhere", () => [bob, fresh].every((c) => c.anchor(conv) === revoke));
  assert.ok([bob, fresh].every((c) => c.messages(conv).find((m) => m.seq === seq).revoked));
});

test("member lists: realign, live changes, a damaged copy repaired by buckets, a batch", async () => {
  const owner = name("owner");
  const group = name("g");
  const members = Array.from({ length: 2500 }, (_, i) => `${group}m${i}`);
  const admin = await client(owner);
  const viewer = await client(members[0]);
  await Promise.all([admin.whenOnline(), viewer.whenOnline()]);
  await admin.createGroup(group, "Big", members.slice(0, 500));
  for (let i = 500; i < members.length; i += 500) await admin.addMembers(group, members.slice(i, i + 500));
  const everyone = [owner, ...members];

  const seen = [];
  viewer.on("members", (e) => e.group === group && seen.push(e.how));
  await eventually("the viewer's first sync to realign to everyone", async () => {
    await viewer.syncMembers(group);
    return viewer.memberList(group)?.members.size === everyone.length;
  });
  assert.ok(seen.includes("realigned"));
  assert.equal(viewer.memberList(group).digest.total.toWire(), SetDigest.of(everyone).toWire());
  assert.equal(viewer.members(group, 0, 50).length, 50, "pages of the local copy");
  assert.equal(viewer.members(group).find((m) => m.user === owner).role, "owner");

  // A live change applies without a sync.
  await admin.addMembers(group, [`${group}late`]);
  await eventually("the live change", () => viewer.memberList(group).members.has(`${group}late`));
  assert.ok(seen.includes("live"));

  // A live change onto a damaged copy continues its version but not its digest: the copy is
  // brought in line by a sync, not kept.
  viewer.store.damageMembers(group, 5);
  const repairedLive = new Promise((r) => viewer.on("members", (e) => e.group === group && e.how === "repaired" && r()));
  await admin.addMembers(group, [`${group}later`]);
  await repairedLive;
  assert.equal(viewer.memberList(group).members.size, everyone.length + 2);
  await admin.removeMembers(group, [`${group}later`]);
  await eventually("the removal", () => !viewer.memberList(group).members.has(`${group}later`));

  // A damaged copy: same version, other members. The sync finds the buckets that differ.
  viewer.store.damageMembers(group, 40);
  await viewer.syncMembers(group);
  assert.equal(seen.at(-1), "repaired");
  assert.equal(viewer.memberList(group).members.size, everyone.length + 1);

  // A batch: unchanged for this one, a realignment for one never synced.
  const small = name("s");
  const joined = new Promise((r) => viewer.on("membership", (e) => e.conv === small && e.joined && r()));
  await admin.createGroup(small, "Small", [members[0]]);
  await joined;
  const before = seen.length;
  await viewer.syncMembersBatch([group, small]);
  assert.equal(seen[before], "unchanged", "the big group is unchanged");
  assert.equal(viewer.memberList(small).members.size, 2);

  // Back after a change made while away: a diff, in its positional form (the edge's welcome
  // offers it, the SDK asks), onto the kept copy.
  await viewer.stop();
  await admin.addMembers(group, [`${group}away`]);
  // Projected before the device is back, so that it comes as a diff and not live.
  await eventually("the change to be projected", async () => {
    await admin.syncMembers(group);
    return admin.memberList(group)?.members.has(`${group}away`);
  });
  const back = await client(members[0], "node", { store: viewer.store });
  const after = [];
  back.on("members", (e) => e.group === group && after.push(e.how));
  await back.whenOnline();
  await back.syncMembers(group);
  assert.ok(after.includes("diff"), `synced by ${after}`);
  assert.ok(back.memberList(group).members.has(`${group}away`));
  assert.equal(back.memberList(group).digest.total.toWire(), SetDigest.of([...everyone, `${group}late`, `${group}away`]).toWire());
});

test("a stranger's group stays closed: its list is refused and nothing is kept", async () => {
  const owner = name("owner");
  const group = name("closed");
  const admin = await client(owner);
  const outsider = await client(name("eve"));
  await Promise.all([admin.whenOnline(), outsider.whenOnline()]);
  await admin.createGroup(group, "Closed", [name("friend")]);
  await outsider.syncMembers(group);
  assert.equal(outsider.memberList(group), undefined);
  await assert.rejects(outsider.addMembers(group, ["eve"]), /forbidden|not_found/);
  const sent = await outsider.send(group, "let me in");
  await assert.rejects(outsider.acked(sent), /forbidden|not_found/);
});
