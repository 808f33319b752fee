import type { ErrorCode, GroupVersion, MemberInfo, Message, Push, ReplyBody, RequestBody } from "./protocol.js";
import type { ConversationSummary, MemberList, OutboxEntry } from "./store.js";
import { Store } from "./store.js";
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
    connected: {
        user: string;
        device: string;
    };
    /** The connection ended; another attempt follows unless `stopped` comes. */
    disconnected: {
        code?: number;
        reason?: string;
        retryInMs: number;
    };
    /** The server refused the token (4001) or said it expired (4002). */
    authFailed: {
        code: number;
    };
    /** The client gave up for good: the session was revoked (4005) or the protocol is not spoken (4004). */
    stopped: {
        code: number;
        reason: string;
    };
    /**
     * A write to the local store failed: the client stopped, since what it holds in memory is
     * ahead of what the store kept (nothing is acknowledged on top of that). Open the store
     * again (`Store.open`) and start a client on it.
     */
    storeFailed: {
        error: string;
    };
    /** Entries of a conversation were stored; the local copy reaches `seq`. */
    messages: {
        conv: string;
        seq: number;
    };
    /** A sync closed a gap in the chain. */
    gapRepaired: {
        conv: string;
        from: number;
        to: number;
    };
    /** A message from the outbox was stored by the server. */
    acked: {
        conv: string;
        clientMsgId: string;
        seq: number;
        duplicate: boolean;
    };
    /** A message from the outbox was refused for good. */
    failed: {
        conv: string;
        clientMsgId: string;
        code: ErrorCode;
        message: string;
    };
    /** The user's read marker moved (here or on another device). */
    read: {
        conv: string;
        seq: number;
    };
    /** The user joined or left a conversation. */
    membership: {
        conv: string;
        joined: boolean;
    };
    /** A group's local member list changed or was confirmed. */
    members: {
        group: string;
        version: number;
        how: MemberSyncKind;
    };
    /** Someone is typing (conversations viewed with `view`). */
    typing: {
        conv: string;
        users: string[];
    };
    /** Any push, as it came. */
    push: Push;
}
/** How a member list was brought in line. */
export type MemberSyncKind = "unchanged" | "diff" | "realigned" | "repaired" | "live";
/** A request the server refused. */
export declare class RequestError extends Error {
    code: ErrorCode;
    retryAfterMs?: number | undefined;
    constructor(code: ErrorCode, message: string, retryAfterMs?: number | undefined);
}
type Listener<T> = (event: T) => void;
export declare class Client {
    readonly store: Store;
    private options;
    private listeners;
    private conn;
    private running;
    private wakeUp;
    /** Set by `wake`: work came since the loop last looked. */
    private woken;
    private syncs;
    private refusedSyncs;
    /** Conversations not listed yet whose sync a push started (a first message). */
    private pulled;
    private memberSyncs;
    /** Read markers on their way to the server, by conversation. */
    private reading;
    /** How often in a row each member sync has yielded still moving. */
    private memberSyncResumes;
    /** A member sync just yielded: the next step goes to the rest of the work. */
    private memberSyncYielded;
    private subscribed;
    private asks;
    private toAck;
    private pushes;
    private me;
    private window;
    private connectedWaiters;
    private droppedPush;
    private halt;
    /** Aborted by `stop`. */
    private stopping;
    private constructor();
    /** Opens the store and starts connecting. */
    static start(options: ClientOptions): Promise<Client>;
    /** The signed-in user and device (empty until the first welcome). */
    get user(): string;
    get device(): string;
    get online(): boolean;
    on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void;
    private emit;
    /** Resolves once signed in (at once if already). */
    whenOnline(): Promise<void>;
    /** Stops connecting and closes the socket; the store stays. */
    stop(): Promise<void>;
    /** Answers whoever waits for a member sync: the client stopped. */
    private endMemberSyncs;
    /**
     * Test hook: the live push of message `seq` is lost on its way (as at-most-once delivery
     * may lose it), so the next one shows a gap.
     */
    dropPush(seq: number): void;
    /** Cuts the current connection (as a network would); the client reconnects. */
    cut(): void;
    private wake;
    /**
     * Writes a message: stored in the outbox at once, sent when connected, acknowledged with
     * its `seq` (`acked`) or refused for good (`failed`). Returns its `client_msg_id`.
     */
    send(conv: string, body: unknown, refs?: {
        clientMsgId?: string;
        replyTo?: number;
        mentions?: string[];
    }): Promise<string>;
    /** Resolves with the seq once the server stored the message; rejects if it was refused. */
    acked(clientMsgId: string): Promise<number>;
    outbox(clientMsgId: string): OutboxEntry | undefined;
    /** Messages of a conversation held on the device, oldest first. */
    messages(conv: string): Message[];
    anchor(conv: string): number;
    /** Conversations with unread counts, most recent first. */
    conversations(): ConversationSummary[];
    /** Pulls a conversation's entries after the anchor (done on welcome and on gaps; call when opening one). */
    openConversation(conv: string): void;
    /**
     * Changes the text of one's own message `seq`; resolves with the edit's own seq. The edit
     * reaches every device (this one too) as an entry of the conversation.
     */
    edit(conv: string, seq: number, body: unknown): Promise<number | undefined>;
    /** Revokes message `seq` for everyone (its text is erased on the server). */
    revoke(conv: string, seq: number): Promise<number | undefined>;
    /** Adds (or with `remove`, takes back) the user's reaction to message `seq`. */
    react(conv: string, seq: number, emoji: string, remove?: boolean): Promise<number | undefined>;
    /**
     * Moves the read marker (forward only); the user's other devices follow. A marker the
     * server did not confirm (the client stopped, the request failed) is sent again each time
     * the client connects, until it does.
     */
    markRead(conv: string, seq: number): Promise<void>;
    /**
     * Sends the read marker of `conv` until the server holds it: one request at a time per
     * conversation, each with the marker as it is then (a marker moved meanwhile goes next).
     */
    private sendRead;
    /** Older messages than the device holds (newest first), straight from the server. */
    history(conv: string, before: number, limit?: number): Promise<Message[]>;
    openDirect(peer: string): Promise<string>;
    createGroup(group: string, title: string, members: string[]): Promise<void>;
    /** Lists a conversation just joined (created, opened, or added to) and pulls it. */
    private joined;
    addMembers(group: string, members: string[]): Promise<void>;
    removeMembers(group: string, members: string[]): Promise<void>;
    leave(group: string): Promise<void>;
    /** The user's groups with their versions and sizes (no member lists). */
    groupVersions(): Promise<{
        epoch: string;
        groups: GroupVersion[];
    }>;
    /**
     * Brings a group's member list in line (and keeps it so with live changes while connected).
     * Resolves once the sync ended: a connection lost on the way does not end it, it goes on
     * once connected again (or ends when the client stops).
     */
    syncMembers(group: string): Promise<void>;
    /** The group's members held on the device, by id; `offset`/`limit` page through them. */
    members(group: string, offset?: number, limit?: number): MemberInfo[];
    memberList(group: string): MemberList | undefined;
    /**
     * Brings several groups in line in one request, most important first: unchanged and diffs
     * come inlined, realignments are synced one by one.
     */
    syncMembersBatch(groups: string[], budgetBytes?: number): Promise<void>;
    /** Sends a request once connected and resolves with its answer (passing refusals are retried). */
    ask(body: RequestBody): Promise<ReplyBody>;
    private run;
    private open;
    /**
     * What a refused connection's `Retry-After` says. The platform WebSocket does not show the
     * HTTP answer, so the edge is asked again over HTTP: a busy edge answers a plain `GET /ws`
     * with the same 503 and `Retry-After`.
     */
    private retryAfter;
    private session;
    /** Does one round of work; true if there may be more. */
    private step;
    private signIn;
    private takeChange;
    private requestSync;
    /** Pulls one conversation from its anchor to its end. */
    private runSync;
    private stored;
    private runAsk;
    /**
     * Sends the oldest queued messages pipelined, then settles their answers in order. A
     * message refused for a passing reason stays queued with those after it; the next round
     * starts again from it, after the wait the server asked for.
     */
    private flushOutbox;
    private queuePush;
    private onPush;
    private runMemberSync;
    /** Syncs a group's member list: true once it ended, false if it yielded still moving. */
    private syncGroup;
}
export {};
