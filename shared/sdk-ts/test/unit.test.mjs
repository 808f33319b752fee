// Pure logic: the digest against the Rust crate's vectors, backoff, the local store.
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { BucketedDigest, MemoryBackend, SetDigest, Store, backoffDelay, bucketOfHash, memberHash } from "../dist/index.js";
import { FileBackend } from "../dist/file-store.js";

const vectors = JSON.parse(readFileSync(new URL("./digest-vectors.json", import.meta.url), "utf8"));

test("member hashes are the Rust digest's for ids of every length class", () => {
  assert.ok(vectors.hashes.length > 260);
  for (const v of vectors.hashes) {
    const h = memberHash(v.id);
    assert.equal(h.toString(16).padStart(16, "0"), v.hash, `id of ${v.id.length} chars`);
    assert.equal(bucketOfHash(h), v.bucket);
  }
});

test("set digests and the compact bucket form are the Rust digest's", () => {
  assert.equal(SetDigest.of([]).toWire(), vectors.sets[0].digest);
  assert.equal(SetDigest.of(vectors.sets[1].members).toWire(), vectors.sets[1].digest);
  const members = Array.from({ length: 1000 }, (_, i) => `u${String(i).padStart(6, "0")}`);
  assert.equal(SetDigest.of(members).toWire(), vectors.sets[2].digest);
  const bucketed = BucketedDigest.of(members);
  assert.equal(bucketed.toWire(), vectors.sets[2].buckets);
  assert.equal(BucketedDigest.of(vectors.sets[1].members).toWire(), vectors.buckets_of_few);
  // And back: the wire form reads into the same buckets.
  const read = BucketedDigest.fromWire(vectors.sets[2].buckets);
  assert.deepEqual(read.differing(bucketed), []);
  assert.equal(read.total.toWire(), vectors.sets[2].digest);
  assert.equal(SetDigest.fromWire(vectors.sets[2].digest).toWire(), vectors.sets[2].digest);
});

test("the digest does not depend on order and removing undoes adding", () => {
  const ids = ["carol", "alice", "bob", "dave"];
  const a = SetDigest.of(ids);
  const b = SetDigest.of([...ids].reverse());
  assert.ok(a.equals(b));
  b.removeHash(memberHash("dave"));
  assert.ok(b.equals(SetDigest.of(["alice", "bob", "carol"])));
  const damaged = BucketedDigest.of(["alice", "bob", "carol"]);
  assert.deepEqual(damaged.differing(BucketedDigest.of(ids)), [bucketOfHash(memberHash("dave"))]);
});

test("bad bucket forms are refused, not misread", () => {
  assert.equal(BucketedDigest.fromWire("not base64!"), null);
  assert.equal(BucketedDigest.fromWire(btoa("short")), null);
  const good = BucketedDigest.of(["alice"]).toWire();
  const bytes = atob(good);
  assert.equal(BucketedDigest.fromWire(btoa(bytes.slice(0, -1))), null);
  assert.equal(BucketedDigest.fromWire(btoa(bytes + "\0")), null);
  assert.equal(SetDigest.fromWire("xyz:1"), null);
});

test("backoff is full jitter, capped, and never shorter than the server asked", () => {
  assert.equal(backoffDelay(1, 0, () => 0.999999), 499);
  assert.equal(backoffDelay(3, 0, () => 0.5), 1000);
  assert.equal(backoffDelay(30, 0, () => 0.999999), 19_999);
  assert.equal(backoffDelay(1, 4000, () => 0.1), 4000);
  assert.equal(backoffDelay(1, 0, () => 0), 0);
  const spread = new Set(Array.from({ length: 200 }, () => backoffDelay(5)));
  assert.ok(spread.size > 100, "waits are spread out");
});

test("a file store keeps conversations, the outbox and member lists across a restart", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "anchorage-sdk-")), "store.json");
  const store = await Store.open(new FileBackend(path));
  const m = (seq, sender, kind, extra = {}) => ({ conv: "g", seq, sender, device: "d", client_msg_id: `c${seq}`, body: `m${seq}`, client_ts: seq, server_ts: seq, kind, ...extra });
  await store.append("g", [m(1, "bob"), m(2, "bob"), m(3, "alice"), m(4, "bob", "edit", { target: 1, body: "edited" }), m(5, "bob", "revoke", { target: 2, body: null })], 5, "alice");
  await store.setRead("g", 1);
  const e = await store.enqueue({ clientMsgId: "x1", conv: "g", body: "hi", clientTs: 7 });
  await store.markSending([e]);
  await store.replaceMembers("g", "1", 9, [{ user: "alice", role: "owner" }, { user: "bob" }]);

  const again = await Store.open(new FileBackend(path));
  assert.equal(again.anchor("g"), 5);
  assert.deepEqual(again.messagesOf("g").map((x) => [x.seq, x.body, x.revoked ?? false]), [[1, "edited", false], [2, null, true], [3, "m3", false]]);
  // Unread: bob's messages after the marker that were not revoked.
  assert.equal(again.conversations("alice")[0].unread, 0);
  await again.setRead("g", 0);
  assert.equal(again.conversations("alice").find((c) => c.conv === "g").unread, 0);
  // What was on the way when the device stopped goes again, as a retry.
  const pending = again.pending(10);
  assert.equal(pending.length, 1);
  assert.equal(pending[0].state, "queued");
  assert.equal(pending[0].tried, true);
  const list = again.memberList("g");
  assert.equal(list.version, 9);
  assert.equal(list.digest.total.toWire(), SetDigest.of(["alice", "bob"]).toWire());
});

test("a file store is a log: a write appends what it changes, a torn tail is dropped, compaction keeps the records", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "anchorage-sdk-")), "store.log");
  const backend = new FileBackend(path, false);
  await backend.load();
  await backend.write([["a", { n: 1 }], ["b", { n: 2 }]]);
  const size = statSync(path).size;
  await backend.write([["a", { n: 3 }]]);
  assert.ok(statSync(path).size - size < 40, "one small line appended, not the whole store");
  await backend.write([["b", undefined]]);
  // A crash in the middle of a write leaves a torn line: it is not read.
  appendFileSync(path, '[["c",{"n":');
  const reopened = new FileBackend(path, false);
  assert.deepEqual([...(await reopened.load())], [["a", { n: 3 }]]);
  // Many writes over few records: the log is compacted, and holds the same.
  for (let i = 0; i < 5000; i++) await reopened.write([[`k${i % 10}`, { i }]]);
  assert.ok(readFileSync(path, "utf8").split("\n").length < 4000, "compacted");
  const last = await new FileBackend(path, false).load();
  assert.equal(last.size, 11);
  assert.deepEqual(last.get("k9"), { i: 4999 });
  // A store written whole, as one object, still loads.
  writeFileSync(path, JSON.stringify({ x: { n: 1 } }));
  assert.deepEqual([...(await new FileBackend(path, false).load())], [["x", { n: 1 }]]);
});

test("a store written with a conversation's entries as one list is split into records, nothing lost", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "anchorage-sdk-")), "old.json");
  const m = (seq, body) => ({ conv: "g", seq, sender: "bob", device: "d", client_msg_id: `c${seq}`, body, client_ts: seq, server_ts: seq });
  writeFileSync(path, JSON.stringify({ "c:g": { conv: "g", anchor: 2, readSeq: 0, lastSeq: 2, serverUnread: 0 }, "m:g": [m(1, "one"), m(2, "two")] }));
  const store = await Store.open(new FileBackend(path, false));
  assert.deepEqual(store.messagesOf("g").map((x) => x.body), ["one", "two"]);
  assert.equal(store.anchor("g"), 2);
  const records = await new FileBackend(path, false).load();
  assert.ok(!records.has("m:g") && records.has("e:1:g") && records.has("e:2:g"));
  assert.deepEqual((await Store.open(new FileBackend(path, false))).messagesOf("g").map((x) => x.body), ["one", "two"]);
});

test("a file store refuses to write once another store replaced its file", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "anchorage-sdk-")), "shared.log");
  const first = new FileBackend(path, false);
  await first.load();
  await first.write([["a", 1]]);
  const second = new FileBackend(path, false);
  await second.load();
  await assert.rejects(first.write([["a", 2]]), /replaced by another store/);
  await second.write([["b", 3]]);
  assert.deepEqual([...(await new FileBackend(path, false).load())], [["a", 1], ["b", 3]]);
});

test("a member change applies only at its version", async () => {
  const store = await Store.open(new MemoryBackend());
  await store.replaceMembers("g", "1", 5, [{ user: "a" }, { user: "b" }]);
  assert.equal(await store.changeMembers("g", 4, 6, [{ user: "c" }], []), false);
  assert.equal(await store.changeMembers("g", 5, 6, [{ user: "c" }], ["a"]), true);
  const list = store.memberList("g");
  assert.equal(list.version, 6);
  assert.deepEqual([...list.members.keys()].sort(), ["b", "c"]);
  assert.ok(list.digest.total.equals(SetDigest.of(["b", "c"])));
});

test("changes apply as the server's copy has them: an unpin unpins, a revoke leaves a bare tombstone that takes no later change", async () => {
  const backend = new MemoryBackend();
  const store = await Store.open(backend);
  const m = (seq, kind, extra = {}) => ({ conv: "g", seq, sender: "bob", device: "d", client_msg_id: `c${seq}`, body: `m${seq}`, client_ts: seq, server_ts: seq, kind, ...extra });
  await store.append("g", [m(1), m(2, "pin", { target: 1, pinned: true }), m(3, "reaction", { target: 1, emoji: "👍", added: true })], 3, "alice");
  let [one] = store.messagesOf("g");
  assert.equal(one.pinned, true);
  assert.deepEqual(one.reactions, [{ emoji: "👍", count: 1 }]);
  // An unpin entry leaves `pinned` out (false).
  await store.append("g", [m(4, "pin", { target: 1 })], 4, "alice");
  [one] = store.messagesOf("g");
  assert.equal(one.pinned, false, "unpinned");
  await store.append("g", [m(5, "pin", { target: 1, pinned: true }), m(55, "edit", { target: 1, body: "secret, edited" })], 55, "alice");
  await store.append("g", [m(56, "revoke", { target: 1, body: null })], 56, "alice");
  const records = [...(await backend.load()).values()];
  assert.ok(!JSON.stringify(records).includes("secret"), "the edits' text goes with the revoke");
  [one] = store.messagesOf("g");
  assert.deepEqual([one.revoked, one.body, one.pinned, one.reactions, one.edits], [true, null, false, [], 0]);
  // A change decided before the revoke and stored after it changes nothing.
  await store.append("g", [m(57, "reaction", { target: 1, emoji: "🎉", added: true }), m(58, "edit", { target: 1, body: "back" }), m(59, "pin", { target: 1, pinned: true })], 59, "alice");
  [one] = store.messagesOf("g");
  assert.deepEqual([one.revoked, one.body, one.pinned, one.reactions, one.version], [true, null, false, [], 56]);
  assert.equal(await store.applyReactions("g", 59, 60, [{ target: 1, emoji: "👀", delta: 1 }], []), true);
  assert.deepEqual(store.messagesOf("g")[0].reactions, [], "a coalesced reaction passes a tombstone by");
});

test("a write keeps the records as they were when asked for, and after a failed write nothing more is written", async () => {
  // A backend that takes its time, keeps what it is given as JSON, and fails when told to.
  const kept = [];
  let fail = false;
  const backend = {
    load: async () => new Map(),
    write: async (batch) => {
      await new Promise((r) => setTimeout(r, 20));
      if (fail) throw new Error("disk full");
      kept.push(JSON.parse(JSON.stringify(batch)));
    },
  };
  const store = await Store.open(backend);
  const m = (seq) => ({ conv: "g", seq, sender: "bob", device: "d", client_msg_id: `c${seq}`, body: `m${seq}`, client_ts: seq, server_ts: seq });
  // The second append moves the anchor while the first is still on its way.
  const first = store.append("g", [m(1)], 1, "alice");
  const second = store.append("g", [m(2)], 2, "alice");
  await Promise.all([first, second]);
  const anchors = kept.map((batch) => batch.find(([k]) => k === "c:g")[1].anchor);
  assert.deepEqual(anchors, [1, 2], "each write holds the anchor that goes with its entries");
  fail = true;
  await assert.rejects(store.append("g", [m(3)], 3, "alice"));
  fail = false;
  await assert.rejects(store.append("g", [m(4)], 4, "alice"), "memory is ahead of what is kept: nothing more is written on top of it");
  assert.equal(kept.length, 2);
});
