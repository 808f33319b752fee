// The device's local copy: conversations with their anchors, messages, the outbox, member
// lists. Kept in memory and written through to a key-value backend (memory, a file in Node,
// IndexedDB in the browser), so a restart or a reload starts from what it held.
import { BucketedDigest, memberHash } from "./digest.js";
/** Keeps nothing beyond the process: a fresh start every time. */
export class MemoryBackend {
    data = new Map();
    async load() {
        return new Map(this.data);
    }
    async write(batch) {
        for (const [k, v] of batch) {
            if (v === undefined)
                this.data.delete(k);
            else
                this.data.set(k, structuredClone(v));
        }
    }
}
/** IndexedDB (browsers): one object store of records, each batch one transaction. */
export class IndexedDbBackend {
    db;
    constructor(name = "anchorage") {
        this.db = new Promise((resolve, reject) => {
            const open = indexedDB.open(name, 1);
            open.onupgradeneeded = () => open.result.createObjectStore("records");
            open.onsuccess = () => resolve(open.result);
            open.onerror = () => reject(open.error);
        });
    }
    async load() {
        const db = await this.db;
        return new Promise((resolve, reject) => {
            const out = new Map();
            const cursor = db.transaction("records").objectStore("records").openCursor();
            cursor.onsuccess = () => {
                const c = cursor.result;
                if (!c)
                    return resolve(out);
                out.set(String(c.key), c.value);
                c.continue();
            };
            cursor.onerror = () => reject(cursor.error);
        });
    }
    async write(batch) {
        const db = await this.db;
        return new Promise((resolve, reject) => {
            const tx = db.transaction("records", "readwrite");
            const records = tx.objectStore("records");
            for (const [k, v] of batch) {
                if (v === undefined)
                    records.delete(k);
                else
                    records.put(v, k);
            }
            tx.oncomplete = () => resolve();
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }
}
/** Keeps at most this many outbox entries that are done (acked or failed). */
const DONE_KEPT = 500;
/** JSON bytes of anchors a `hello` carries at most (the edge's frames are 64 KiB by default). */
const ANCHOR_BYTES = 32_768;
export class Store {
    backend;
    convs = new Map();
    messages = new Map();
    outbox = new Map();
    lists = new Map();
    nextN = 1;
    /** Outbox entries that are acked or failed. */
    done = 0;
    writes = Promise.resolve();
    constructor(backend) {
        this.backend = backend;
    }
    static async open(backend = new MemoryBackend()) {
        const store = new Store(backend);
        // Stores written before each entry was its own record hold a conversation's entries as
        // one list: they are split into records, in one write, below.
        const lists = [];
        for (const [k, v] of await backend.load()) {
            if (k.startsWith("m:") && Array.isArray(v)) {
                lists.push([k, v]);
                continue;
            }
            if (k.startsWith("c:"))
                store.convs.set(k.slice(2), v);
            else if (k.startsWith("e:")) {
                const m = v;
                const list = store.messages.get(m.conv) ?? [];
                list.push(m);
                store.messages.set(m.conv, list);
            }
            else if (k.startsWith("o:")) {
                const e = v;
                // Whatever was on the way when the device stopped goes again, as a retry.
                if (e.state === "sending")
                    e.state = "queued";
                store.outbox.set(e.clientMsgId, e);
                store.nextN = Math.max(store.nextN, e.n + 1);
            }
            else if (k.startsWith("g:")) {
                const s = v;
                const list = { epoch: s.epoch, version: s.version, members: new Map(), digest: new BucketedDigest(), hashes: new Map() };
                for (const m of s.members)
                    addMember(list, m);
                store.lists.set(k.slice(2), list);
            }
        }
        const split = [];
        for (const [key, entries] of lists) {
            for (const m of entries) {
                const list = store.messages.get(m.conv) ?? [];
                if (!list.some((x) => x.seq === m.seq))
                    list.push(m);
                store.messages.set(m.conv, list);
                split.push([entryKey(m), m]);
            }
            split.push([key, undefined]);
        }
        for (const list of store.messages.values())
            list.sort((a, b) => a.seq - b.seq);
        const oldest = [...store.outbox.values()].sort((a, b) => a.n - b.n);
        store.outbox = new Map(oldest.map((e) => [e.clientMsgId, e]));
        store.done = oldest.filter((e) => e.state === "acked" || e.state === "failed").length;
        if (split.length > 0)
            await store.persist(split);
        return store;
    }
    /**
     * Writes records in order; resolves once they are kept. The records are taken as they are
     * now: a later change to the same objects (an anchor moved by the next push) is not written
     * ahead of the records that go with it. After a write fails, every later one fails too —
     * memory is ahead of what is kept, and nothing may be acknowledged on top of it — until the
     * store is opened again from what was kept.
     */
    persist(batch, fresh = false) {
        let next;
        try {
            // `fresh`: records made for this write alone, which nothing changes afterwards.
            const taken = fresh ? batch : batch.map(([k, v]) => [k, v === undefined ? undefined : structuredClone(v)]);
            next = this.writes.then(() => this.backend.write(taken));
        }
        catch (e) {
            next = Promise.reject(e);
        }
        if (!this.failure) {
            next.catch((e) => {
                if (this.failure)
                    return;
                this.failure = e instanceof Error ? e : new Error(String(e));
                for (const f of this.onFailure)
                    f(this.failure);
            });
        }
        this.writes = next;
        return next;
    }
    /** The write that failed, once one did: the store keeps nothing more until opened again. */
    failure = null;
    onFailure = [];
    /** Calls `f` once a write fails (at once if one did). */
    whenFailed(f) {
        if (this.failure)
            f(this.failure);
        else
            this.onFailure.push(f);
    }
    conv(conv) {
        let c = this.convs.get(conv);
        if (!c) {
            c = { conv, anchor: 0, readSeq: 0, lastSeq: 0, serverUnread: 0 };
            this.convs.set(conv, c);
        }
        return c;
    }
    // Conversations.
    /**
     * The conversations held, most recently active first, each with its anchor and the read
     * marker held there — as many as fit in `maxBytes` of JSON, so a `hello` stays far below
     * the edge's frame limit however many conversations the user is in. The server compares
     * the rest with what this device acknowledged (`received`): at worst one it summarizes
     * holds nothing new.
     */
    anchors(maxBytes = ANCHOR_BYTES) {
        const held = [...this.convs.values()].filter((c) => c.anchor > 0).sort((a, b) => b.anchor - a.anchor);
        const out = [];
        let bytes = 0;
        for (const c of held) {
            const a = { conv: c.conv, seq: c.anchor, read: c.readSeq };
            bytes += JSON.stringify(a).length + 1;
            if (bytes > maxBytes)
                break;
            out.push(a);
        }
        return out;
    }
    anchor(conv) {
        return this.convs.get(conv)?.anchor ?? 0;
    }
    readSeq(conv) {
        return this.convs.get(conv)?.readSeq ?? 0;
    }
    /** What the server summarized at `hello`. */
    async summarize(conv, lastSeq, readSeq, unread, lastMessage) {
        const c = this.conv(conv);
        c.lastSeq = Math.max(c.lastSeq, lastSeq);
        c.readSent = Math.max(c.readSent ?? c.readSeq, readSeq);
        c.readSeq = Math.max(c.readSeq, readSeq);
        c.serverUnread = unread;
        if (lastMessage)
            c.lastMessage = lastMessage;
        await this.persist([[`c:${conv}`, c]]);
    }
    /** Whether the user is in `conv`, as far as the device knows. */
    isListed(conv) {
        return this.convs.has(conv);
    }
    /** Lists a conversation the user is in, before any message of it is held. */
    async join(conv) {
        if (this.convs.has(conv))
            return;
        await this.persist([[`c:${conv}`, this.conv(conv)]]);
    }
    async setRead(conv, seq) {
        const c = this.conv(conv);
        if (seq <= c.readSeq)
            return false;
        c.readSent ??= c.readSeq;
        c.readSeq = seq;
        await this.persist([[`c:${conv}`, c]]);
        return true;
    }
    /** The server holds the read marker `seq` of `conv` (it confirmed it, or told it). */
    async readHeld(conv, seq) {
        const c = this.convs.get(conv);
        if (!c || seq <= (c.readSent ?? c.readSeq))
            return;
        c.readSent = seq;
        await this.persist([[`c:${conv}`, c]]);
    }
    /** Conversations whose read marker moved on this device past what the server is known to hold. */
    unsentReads() {
        return [...this.convs.values()].filter((c) => c.readSeq > (c.readSent ?? c.readSeq)).map((c) => c.conv);
    }
    /** Whether the read marker of `conv` moved past what the server is known to hold. */
    readUnsent(conv) {
        const c = this.convs.get(conv);
        return c !== undefined && c.readSeq > (c.readSent ?? c.readSeq);
    }
    async forget(conv) {
        const held = this.messages.get(conv) ?? [];
        this.convs.delete(conv);
        this.messages.delete(conv);
        await this.persist([[`c:${conv}`, undefined], ...held.map((m) => [entryKey(m), undefined])]);
    }
    /**
     * Stores entries of `conv` (oldest first) that continue the chain up to `through`, and
     * moves the anchor there. Changes (edits, revokes, reactions, pins) are applied to the
     * messages they target.
     */
    async append(conv, entries, through, me) {
        const c = this.conv(conv);
        const list = this.messages.get(conv) ?? [];
        // Each entry is its own record: a write costs what it changes, not the whole history.
        const changed = new Map();
        // Edits of a message revoked since: their text goes with it, as on the server.
        const erased = new Map();
        for (const e of entries) {
            if (e.seq <= c.anchor)
                continue;
            const target = applyEntry(list, e, me);
            changed.set(e.seq, e);
            if (target)
                changed.set(target.seq, target);
            if (e.kind === "revoke" && target) {
                for (const x of list)
                    if (x.kind === "edit" && x.target === target.seq)
                        erased.set(x.seq, x);
            }
            if (e.kind === undefined || e.kind === "message")
                c.lastMessage = e;
        }
        for (const seq of erased.keys())
            changed.delete(seq);
        const kept = erased.size > 0 ? list.filter((m) => !erased.has(m.seq)) : list;
        c.anchor = Math.max(c.anchor, through);
        c.lastSeq = Math.max(c.lastSeq, through);
        c.serverUnread = 0;
        this.messages.set(conv, kept);
        await this.persist([
            [`c:${conv}`, c],
            ...[...changed.values()].map((m) => [entryKey(m), m]),
            ...[...erased.values()].map((m) => [entryKey(m), undefined]),
        ]);
    }
    /**
     * Applies a coalesced `reactions` push standing for the entries `(prev, seq]`: only when
     * the chain is at `prev` and no target's copy is past it (otherwise the caller syncs).
     */
    async applyReactions(conv, prev, seq, deltas, mine) {
        const c = this.conv(conv);
        if (c.anchor !== prev || seq <= prev)
            return false;
        const list = this.messages.get(conv) ?? [];
        const targets = new Map();
        for (const { target } of [...deltas, ...mine]) {
            const m = find(list, target);
            // A message not held (older than the copy), or revoked, has nothing to change.
            if (!m || (m.kind ?? "message") !== "message" || m.revoked)
                continue;
            if ((m.version ?? m.seq) > prev)
                return false;
            targets.set(target, m);
        }
        for (const d of deltas) {
            const m = targets.get(d.target);
            if (!m || !Number.isSafeInteger(d.delta))
                continue;
            const reactions = m.reactions ?? [];
            let r = reactions.find((x) => x.emoji === d.emoji);
            if (!r) {
                r = { emoji: d.emoji, count: 0 };
                reactions.push(r);
            }
            r.count = Math.max(0, r.count + d.delta);
            m.reactions = reactions.filter((x) => x.count > 0);
        }
        for (const o of mine) {
            const r = targets.get(o.target)?.reactions?.find((x) => x.emoji === o.emoji);
            if (r)
                r.mine = o.added;
        }
        for (const m of targets.values())
            m.version = seq;
        c.anchor = seq;
        c.lastSeq = Math.max(c.lastSeq, seq);
        await this.persist([[`c:${conv}`, c], ...[...targets.values()].map((m) => [entryKey(m), m])]);
        return true;
    }
    /** Shows the device's own stored message at its place before the chain reaches it. */
    showOwn(message) {
        const list = this.messages.get(message.conv) ?? [];
        if (find(list, message.seq))
            return [];
        insertSorted(list, message);
        this.messages.set(message.conv, list);
        return [[entryKey(message), message]];
    }
    /** The messages held, oldest first. */
    messagesOf(conv) {
        return (this.messages.get(conv) ?? []).filter((m) => m.kind === undefined || m.kind === "message");
    }
    conversations(me) {
        return [...this.convs.values()]
            .map((c) => {
            const held = this.messages.get(c.conv);
            const unread = held
                ? held.filter((m) => m.seq > c.readSeq && m.sender !== me && (m.kind ?? "message") === "message" && !m.revoked).length
                : c.serverUnread;
            return { conv: c.conv, lastSeq: c.lastSeq, readSeq: c.readSeq, unread, lastMessage: c.lastMessage };
        })
            .sort((a, b) => (b.lastMessage?.server_ts ?? 0) - (a.lastMessage?.server_ts ?? 0) || b.lastSeq - a.lastSeq);
    }
    // Outbox.
    async enqueue(entry) {
        const existing = this.outbox.get(entry.clientMsgId);
        if (existing)
            return existing;
        const e = { ...entry, n: this.nextN++, state: "queued", tried: false };
        this.outbox.set(e.clientMsgId, e);
        await this.persist([[`o:${e.clientMsgId}`, e]]);
        return e;
    }
    /** The oldest entries still to be sent, in the order they were written. */
    pending(limit) {
        // The outbox is kept in the order written.
        const out = [];
        for (const e of this.outbox.values()) {
            if (out.length >= limit)
                break;
            if (e.state === "queued" || e.state === "sending")
                out.push(e);
        }
        return out;
    }
    outboxEntry(clientMsgId) {
        return this.outbox.get(clientMsgId);
    }
    /** Entries about to go out (one write for a whole window of them). */
    async markSending(entries) {
        for (const e of entries) {
            e.state = "sending";
            e.tried = true;
        }
        await this.persist(entries.map((e) => [`o:${e.clientMsgId}`, e]));
    }
    /**
     * An entry the server stored (with the device's own message, shown at its place before
     * the chain reaches it) or refused for good: one write.
     */
    async settle(e, outcome) {
        if (e.state !== "acked" && e.state !== "failed")
            this.done++;
        if ("seq" in outcome) {
            e.state = "acked";
            e.seq = outcome.seq;
        }
        else {
            e.state = "failed";
            e.error = outcome.error;
        }
        const batch = [[`o:${e.clientMsgId}`, e]];
        if ("own" in outcome && outcome.own)
            batch.push(...this.showOwn(outcome.own));
        // The oldest done entries go in bulk, once a tenth more than are kept have gathered.
        if (this.done > DONE_KEPT + DONE_KEPT / 10) {
            for (const old of this.outbox.values()) {
                if (this.done <= DONE_KEPT)
                    break;
                if (old.state !== "acked" && old.state !== "failed")
                    continue;
                this.outbox.delete(old.clientMsgId);
                this.done--;
                batch.push([`o:${old.clientMsgId}`, undefined]);
            }
        }
        await this.persist(batch);
    }
    // Member lists.
    memberList(group) {
        return this.lists.get(group);
    }
    /** Replaces a group's copy (a realignment's last page, or a first copy). */
    async replaceMembers(group, epoch, version, members) {
        const list = { epoch, version, members: new Map(), digest: new BucketedDigest(), hashes: new Map() };
        // A malformed member is not kept: the digest then differs and the copy is repaired.
        for (const m of members)
            if (isMember(m))
                addMember(list, m);
        this.lists.set(group, list);
        await this.persistList(group, list);
        return list;
    }
    /** Applies a change to a copy at version `prev`, moving it to `version`; false if it was elsewhere. */
    async changeMembers(group, prev, version, upserts, removed) {
        const list = this.lists.get(group);
        if (!list || (prev !== null && list.version !== prev))
            return false;
        if (!upserts.every(isMember) || !removed.every(isUserId))
            return false;
        for (const user of removed)
            removeMember(list, user);
        for (const m of upserts)
            addMember(list, m);
        list.version = version;
        await this.persistList(group, list);
        return true;
    }
    /** Replaces the members of some buckets (a repaired copy), keeping the rest. */
    async replaceBuckets(group, buckets, members, version) {
        const list = this.lists.get(group);
        if (!list)
            return;
        for (const [user, h] of [...list.hashes])
            if (buckets.has(Number(h >> 56n)))
                removeMember(list, user);
        for (const m of members)
            if (isMember(m))
                addMember(list, m);
        // The kept digest came from the damaged copy: count it again from what is held now.
        list.digest = new BucketedDigest();
        for (const h of list.hashes.values())
            list.digest.insertHash(h);
        list.version = version;
        await this.persistList(group, list);
    }
    async dropMembers(group) {
        this.lists.delete(group);
        await this.persist([[`g:${group}`, undefined]]);
    }
    persistList(group, list) {
        // Made for this write; its members are replaced, never changed in place: kept as it is.
        const stored = { epoch: list.epoch, version: list.version, members: [...list.members.values()] };
        return this.persist([[`g:${group}`, stored]], true);
    }
    /** Test hook: loses members of a copy without telling its digest, as a damaged disk would. */
    damageMembers(group, n) {
        const list = this.lists.get(group);
        if (!list)
            return;
        for (const user of [...list.members.keys()].slice(0, n)) {
            list.members.delete(user);
            list.hashes.delete(user);
        }
    }
}
/** A user id as the server gives one: a non-empty string. */
export const isUserId = (u) => typeof u === "string" && u.length > 0;
const ROLES = new Set(["owner", "admin", "member"]);
/** A member as the server describes one: an id, and a role, nickname and mute of their types. */
export function isMember(m) {
    if (typeof m !== "object" || m === null)
        return false;
    const { user, role, nickname, muted_until } = m;
    return (isUserId(user) &&
        (role === undefined || ROLES.has(role)) &&
        (nickname == null || typeof nickname === "string") &&
        (muted_until == null || Number.isSafeInteger(muted_until)));
}
function addMember(list, m) {
    if (!list.hashes.has(m.user)) {
        const h = memberHash(m.user);
        list.hashes.set(m.user, h);
        list.digest.insertHash(h);
    }
    list.members.set(m.user, m);
}
function removeMember(list, user) {
    const h = list.hashes.get(user);
    if (h === undefined)
        return;
    list.hashes.delete(user);
    list.members.delete(user);
    list.digest.removeHash(h);
}
/** The record of one entry of a conversation. */
function entryKey(m) {
    return `e:${m.seq}:${m.conv}`;
}
/** Entry `seq` of a list sorted by seq. */
function find(list, seq) {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (list[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return list[lo]?.seq === seq ? list[lo] : undefined;
}
function insertSorted(list, m) {
    let i = list.length;
    while (i > 0 && list[i - 1].seq > m.seq)
        i--;
    if (list[i - 1]?.seq === m.seq)
        list[i - 1] = m;
    else
        list.splice(i, 0, m);
}
/** Applies one entry of the chain to the messages held; returns the message it changed. */
function applyEntry(list, e, me) {
    const kind = e.kind ?? "message";
    insertSorted(list, e);
    if (kind === "message")
        return undefined;
    const target = e.target === undefined || e.target === null ? undefined : find(list, e.target);
    if (!target || (target.kind ?? "message") !== "message")
        return undefined;
    // A copy read in its current state already reflects the entries up to its version; a
    // revoked message (a tombstone) never changes again.
    if (e.seq <= (target.version ?? target.seq) || target.revoked)
        return undefined;
    target.version = e.seq;
    switch (kind) {
        case "edit":
            target.body = e.body;
            target.edits = (target.edits ?? 0) + 1;
            break;
        case "revoke":
            // What the server's tombstone keeps: nothing of the text, its references, files, pin
            // or reactions.
            target.revoked = true;
            target.body = null;
            target.attachments = [];
            target.pinned = false;
            target.reactions = [];
            target.edits = 0;
            delete target.reply_to;
            delete target.mentions;
            delete target.mention_all;
            break;
        case "pin":
            // A pin entry says `pinned` (left out when false: an unpin).
            target.pinned = e.pinned === true;
            break;
        case "reaction": {
            const emoji = e.emoji ?? "";
            const reactions = target.reactions ?? [];
            let r = reactions.find((x) => x.emoji === emoji);
            if (!r) {
                r = { emoji, count: 0 };
                reactions.push(r);
            }
            const added = e.added ?? true;
            r.count = Math.max(0, r.count + (added ? 1 : -1));
            if (e.sender === me)
                r.mine = added;
            target.reactions = reactions.filter((x) => x.count > 0);
            break;
        }
    }
    return target;
}
