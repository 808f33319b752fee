import { BucketedDigest } from "./digest.js";
import type { Attachment, MemberInfo, Message, OwnReaction, ReactionDelta } from "./protocol.js";
/** Where records are kept. `write` applies a batch (a value of `undefined` deletes). */
export interface Backend {
    load(): Promise<Map<string, unknown>>;
    write(batch: Array<[string, unknown]>): Promise<void>;
}
/** Keeps nothing beyond the process: a fresh start every time. */
export declare class MemoryBackend implements Backend {
    private data;
    load(): Promise<Map<string, unknown>>;
    write(batch: Array<[string, unknown]>): Promise<void>;
}
/** IndexedDB (browsers): one object store of records, each batch one transaction. */
export declare class IndexedDbBackend implements Backend {
    private db;
    constructor(name?: string);
    load(): Promise<Map<string, unknown>>;
    write(batch: Array<[string, unknown]>): Promise<void>;
}
/** What the device holds of a conversation. */
export interface Conversation {
    conv: string;
    /** The highest seq up to which every entry is held. */
    anchor: number;
    /** The user's read marker. */
    readSeq: number;
    /**
     * The read marker the server is known to hold (it confirmed or told it); one moved past it
     * on this device is sent again until it does. Absent in stores written before it was kept:
     * taken as `readSeq` then.
     */
    readSent?: number;
    /** The conversation's last seq, as far as known. */
    lastSeq: number;
    /** Unread messages as the server counted them, for conversations not pulled yet. */
    serverUnread: number;
    /** The newest message, as the server summarized it. */
    lastMessage?: Message | null;
}
/** A message the device wrote, until the server stored it (or refused it for good). */
export interface OutboxEntry {
    /** Order of writing. */
    n: number;
    clientMsgId: string;
    conv: string;
    body: unknown;
    clientTs: number;
    attachments?: Attachment[];
    replyTo?: number;
    mentions?: string[];
    state: "queued" | "sending" | "acked" | "failed";
    /** Sent at least once: later attempts say `retry`. */
    tried: boolean;
    seq?: number;
    error?: string;
}
/** A group's member list on the device. */
export interface MemberList {
    epoch: string;
    version: number;
    members: Map<string, MemberInfo>;
    /** Kept with every change: what the digest of `members` is. */
    digest: BucketedDigest;
    hashes: Map<string, bigint>;
}
/** A summary for a conversation list. */
export interface ConversationSummary {
    conv: string;
    lastSeq: number;
    readSeq: number;
    unread: number;
    lastMessage?: Message | null;
}
export declare class Store {
    private backend;
    private convs;
    private messages;
    private outbox;
    private lists;
    private nextN;
    /** Outbox entries that are acked or failed. */
    private done;
    private writes;
    private constructor();
    static open(backend?: Backend): Promise<Store>;
    /**
     * Writes records in order; resolves once they are kept. The records are taken as they are
     * now: a later change to the same objects (an anchor moved by the next push) is not written
     * ahead of the records that go with it. After a write fails, every later one fails too —
     * memory is ahead of what is kept, and nothing may be acknowledged on top of it — until the
     * store is opened again from what was kept.
     */
    private persist;
    /** The write that failed, once one did: the store keeps nothing more until opened again. */
    failure: Error | null;
    private onFailure;
    /** Calls `f` once a write fails (at once if one did). */
    whenFailed(f: (e: Error) => void): void;
    private conv;
    /**
     * The conversations held, most recently active first, each with its anchor and the read
     * marker held there — as many as fit in `maxBytes` of JSON, so a `hello` stays far below
     * the edge's frame limit however many conversations the user is in. The server compares
     * the rest with what this device acknowledged (`received`): at worst one it summarizes
     * holds nothing new.
     */
    anchors(maxBytes?: number): Array<{
        conv: string;
        seq: number;
        read: number;
    }>;
    anchor(conv: string): number;
    readSeq(conv: string): number;
    /** What the server summarized at `hello`. */
    summarize(conv: string, lastSeq: number, readSeq: number, unread: number, lastMessage?: Message | null): Promise<void>;
    /** Whether the user is in `conv`, as far as the device knows. */
    isListed(conv: string): boolean;
    /** Lists a conversation the user is in, before any message of it is held. */
    join(conv: string): Promise<void>;
    setRead(conv: string, seq: number): Promise<boolean>;
    /** The server holds the read marker `seq` of `conv` (it confirmed it, or told it). */
    readHeld(conv: string, seq: number): Promise<void>;
    /** Conversations whose read marker moved on this device past what the server is known to hold. */
    unsentReads(): string[];
    /** Whether the read marker of `conv` moved past what the server is known to hold. */
    readUnsent(conv: string): boolean;
    forget(conv: string): Promise<void>;
    /**
     * Stores entries of `conv` (oldest first) that continue the chain up to `through`, and
     * moves the anchor there. Changes (edits, revokes, reactions, pins) are applied to the
     * messages they target.
     */
    append(conv: string, entries: Message[], through: number, me: string): Promise<void>;
    /**
     * Applies a coalesced `reactions` push standing for the entries `(prev, seq]`: only when
     * the chain is at `prev` and no target's copy is past it (otherwise the caller syncs).
     */
    applyReactions(conv: string, prev: number, seq: number, deltas: ReactionDelta[], mine: OwnReaction[]): Promise<boolean>;
    /** Shows the device's own stored message at its place before the chain reaches it. */
    private showOwn;
    /** The messages held, oldest first. */
    messagesOf(conv: string): Message[];
    conversations(me: string): ConversationSummary[];
    enqueue(entry: Omit<OutboxEntry, "n" | "state" | "tried">): Promise<OutboxEntry>;
    /** The oldest entries still to be sent, in the order they were written. */
    pending(limit: number): OutboxEntry[];
    outboxEntry(clientMsgId: string): OutboxEntry | undefined;
    /** Entries about to go out (one write for a whole window of them). */
    markSending(entries: OutboxEntry[]): Promise<void>;
    /**
     * An entry the server stored (with the device's own message, shown at its place before
     * the chain reaches it) or refused for good: one write.
     */
    settle(e: OutboxEntry, outcome: {
        seq: number;
        own?: Message;
    } | {
        error: string;
    }): Promise<void>;
    memberList(group: string): MemberList | undefined;
    /** Replaces a group's copy (a realignment's last page, or a first copy). */
    replaceMembers(group: string, epoch: string, version: number, members: MemberInfo[]): Promise<MemberList>;
    /** Applies a change to a copy at version `prev`, moving it to `version`; false if it was elsewhere. */
    changeMembers(group: string, prev: number | null, version: number, upserts: MemberInfo[], removed: string[]): Promise<boolean>;
    /** Replaces the members of some buckets (a repaired copy), keeping the rest. */
    replaceBuckets(group: string, buckets: Set<number>, members: MemberInfo[], version: number): Promise<void>;
    dropMembers(group: string): Promise<void>;
    private persistList;
    /** Test hook: loses members of a copy without telling its digest, as a damaged disk would. */
    damageMembers(group: string, n: number): void;
}
/** A user id as the server gives one: a non-empty string. */
export declare const isUserId: (u: unknown) => u is string;
/** A member as the server describes one: an id, and a role, nickname and mute of their types. */
export declare function isMember(m: unknown): m is MemberInfo;
