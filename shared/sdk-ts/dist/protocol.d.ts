/** The protocol version these types describe. */
export declare const PROTOCOL_VERSION = 1;
/** WebSocket close codes the server uses. */
export declare const CLOSE: {
    readonly AUTH_FAILED: 4001;
    readonly GOING_AWAY: 1001;
    readonly HELLO_TIMEOUT: 4003;
    readonly INVALID_PAYLOAD: 1007;
    readonly RATE_LIMITED: 4029;
    readonly REVOKED: 4005;
    readonly SLOW_CONSUMER: 4008;
    readonly TOKEN_EXPIRED: 4002;
    readonly TOO_BIG: 1009;
    readonly UNSUPPORTED_PROTOCOL: 4004;
};
/**
 * `ack`: a message was stored.
 */
export type Ack = {
    /**
     * The sender's id of the message.
     */
    client_msg_id: ClientMsgId;
    /**
     * The message had been sent before; `seq` is the original's.
     */
    duplicate: boolean;
    /**
     * Its place in the conversation.
     */
    seq: number;
    /**
     * When the server stored it.
     */
    server_ts: number;
};
/**
 * A file a message carries.
 */
export type Attachment = {
    /**
     * Its media type, as issued by `upload` (e.g. `image/png`).
     */
    content_type: string;
    /**
     * The uploaded object, as issued by `upload`.
     */
    id: AttachmentId;
    /**
     * The file's name as shown (and offered when saving it).
     */
    name: string;
    /**
     * Its size in bytes, as issued by `upload`.
     */
    size: number;
};
/**
 * An attachment's id: `<object>.<seal>`.
 */
export type AttachmentId = string;
/**
 * The id a client gives a message before sending it; retries reuse it.
 */
export type ClientMsgId = string;
/**
 * The client's version of one conversation.
 */
export type ConvAnchor = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The read marker the client holds for it: a conversation whose marker moved past it (a
     * read on another device while this one was away) is summarized even with no new
     * message. Without it, only new messages make a conversation summarized.
     */
    read?: number | null;
    /**
     * The client's highest contiguous seq in it.
     */
    seq: number;
};
/**
 * A conversation that changed since the client's anchor.
 */
export type ConvChange = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The last message, for a conversation list.
     */
    last_message?: (Message) | (null);
    /**
     * Its last message's seq.
     */
    last_seq: number;
    /**
     * Messages after the user's read marker that mention them or everyone (capped at
     * 1000).
     */
    mentions?: number;
    /**
     * The user's read marker.
     */
    read_seq: number;
    /**
     * Messages after the user's read marker (capped at 1000).
     */
    unread: number;
};
/**
 * The user's own view of one conversation.
 */
export type ConvPrefs = {
    /**
     * Archived.
     */
    archived?: boolean;
    /**
     * The conversation.
     */
    conv: string;
    /**
     * The unsent text.
     */
    draft?: string | null;
    /**
     * Do not disturb until (Unix ms).
     */
    muted_until?: number | null;
    /**
     * `mentions` or `none` (absent: every message notifies).
     */
    notify?: string | null;
    /**
     * Pinned to the top of the list.
     */
    pinned?: boolean;
};
/**
 * A conversation: a 1:1 chat or a group's chat. Messages are ordered within it.
 */
export type ConversationId = string;
/**
 * One device (session) of a user; every device has its own token and delivery state.
 */
export type DeviceId = string;
/**
 * Whether one of the user's devices is notified while offline, and how (never its address).
 */
export type DevicePush = {
    /**
     * The device.
     */
    device: string;
    /**
     * Notifications show the text.
     */
    preview?: boolean;
    /**
     * `fcm`, `apns` or `web_push`; absent once removed.
     */
    provider?: string | null;
};
/**
 * `ok`: a request succeeded with nothing else to say.
 */
export type Done = {
    /**
     * The conversation it concerned.
     */
    conv?: (ConversationId) | (null);
    /**
     * The stream sequence of the event it published, or the marker's position.
     */
    seq?: number | null;
};
/**
 * `download`: the answer to `download`.
 */
export type DownloadGrant = {
    /**
     * The file as the message names it.
     */
    attachment: Attachment;
    /**
     * When the URL stops working, Unix milliseconds.
     */
    expires_at: number;
    /**
     * Where to get it with `GET`: absolute, or a path on the edge the client is connected to.
     */
    url: string;
};
/**
 * What an entry of a conversation is: a message, or a change to the message it names. The
 * same names on the wire (`kind`) and in the store.
 */
export type EntryKind = ("message") | ("edit") | ("revoke") | ("reaction") | ("pin");
/**
 * Stable error codes; clients match on these, the message is for humans.
 */
export type ErrorCode = ("bad_frame") | ("unknown_type") | ("invalid_request") | ("too_large") | ("unsupported_protocol") | ("hello_required") | ("forbidden") | ("not_found") | ("conflict") | ("rate_limited") | ("overloaded") | ("internal") | ("unauthorized") | ("rejected") | ("out_of_order");
/**
 * `error`: a request failed, or a frame could not be read (then `id` is absent).
 */
export type ErrorFrame = {
    /**
     * The stable code clients match on.
     */
    code: ErrorCode;
    /**
     * The request's id, when the frame was readable enough to have one.
     */
    id?: number | null;
    /**
     * For humans.
     */
    message: string;
    /**
     * For `rate_limited` and `overloaded`: when to try again.
     */
    retry_after_ms?: number | null;
};
/**
 * A group: its membership version chain lives on `grp.<group>`.
 */
export type GroupId = string;
/**
 * One group's entry in `members_sync_batch`: the client's copy, as in `members_sync`.
 */
export type GroupSync = {
    /**
     * `members_sync` only (refused in a batch): answer a diff in its positional form,
     * `MembersDelta`. Ask it only of an edge whose `welcome` says `compact`.
     */
    compact?: boolean;
    /**
     * The digest of the client's copy.
     */
    digest?: string | null;
    /**
     * The epoch of the client's copy.
     */
    epoch?: string | null;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The version of the client's copy (0: none).
     */
    version?: number;
};
/**
 * One group's answer in `members_batch` (fields as in `members_diff`).
 */
export type GroupSyncResult = ({
    group: GroupId;
    result: "unchanged";
}) | ({
    digest?: string | null;
    epoch: string;
    group: GroupId;
    more: boolean;
    removed: Array<UserId>;
    result: "diff";
    upserts: Array<MemberInfo>;
    version: number;
}) | ({
    group: GroupId;
    result: "realign";
}) | ({
    code: ErrorCode;
    group: GroupId;
    message: string;
    result: "error";
});
/**
 * A group and its version, as `group_versions` lists them.
 */
export type GroupVersion = {
    /**
     * The group.
     */
    group: GroupId;
    /**
     * How many members it has.
     */
    members: number;
    /**
     * Its member list's version (MEMBERSHIP stream sequence of its last change).
     */
    version: number;
};
/**
 * `group_versions`: the caller's groups and their versions.
 */
export type GroupVersions = {
    /**
     * Present when more groups remain.
     */
    cursor?: string | null;
    /**
     * The MEMBERSHIP stream's epoch: versions of another epoch cannot be compared.
     */
    epoch: string;
    /**
     * The groups.
     */
    groups: Array<GroupVersion>;
};
/**
 * Messages of one conversation deleted for oneself.
 */
export type HiddenMessages = {
    /**
     * The conversation.
     */
    conv: string;
    /**
     * The messages' seqs.
     */
    seqs: Array<number>;
};
/**
 * `message`: a new message, live.
 */
export type LiveMessage = {
    /**
     * The message (boxed: frames are moved around far more often than messages are read).
     */
    message: Message;
    /**
     * The conversation's previous seq (0 if none).
     */
    prev: number;
};
/**
 * A member as member lists carry it: the role is left out for plain members.
 */
export type MemberInfo = {
    /**
     * Muted until this Unix millisecond.
     */
    muted_until?: number | null;
    /**
     * The member's nickname in the group.
     */
    nickname?: string | null;
    /**
     * Owner, admin or (left out) member.
     */
    role?: Role;
    /**
     * The member.
     */
    user: UserId;
};
/**
 * `members_batch`: the answer to `members_sync_batch`, in request order.
 */
export type MembersBatch = {
    /**
     * Index of the first group not answered (the budget was spent); absent when done.
     */
    cursor?: number | null;
    /**
     * One result per group answered.
     */
    results: Array<GroupSyncResult>;
};
/**
 * `members_buckets`: same version, different digest: the server's bucket digests at
 * `version`, so the client looks only under the buckets that differ.
 */
export type MembersBuckets = {
    /**
     * The bucket digests in their compact wire form (base64: a bitmap of the non-empty
     * buckets, then sum and count of each).
     */
    digests: string;
    /**
     * The MEMBERSHIP stream's epoch.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The version the digests are of.
     */
    version: number;
};
/**
 * What changed in one membership event, as notifications carry it.
 */
export type MembersChange = {
    /**
     * The group's new avatar.
     */
    avatar?: string | null;
    /**
     * The group was dismissed.
     */
    dismissed?: boolean;
    /**
     * Members who left.
     */
    removed?: Array<UserId>;
    /**
     * The group's new title.
     */
    title?: string | null;
    /**
     * Members who joined or whose row changed, as they are now.
     */
    upserts?: Array<MemberInfo>;
};
/**
 * `members_changed`: one committed membership change, to connections that watch the list.
 */
export type MembersChanged = {
    /**
     * What changed.
     */
    change: MembersChange;
    /**
     * The digest of the whole list at `version`.
     */
    digest: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The list's version before it.
     */
    prev: number;
    /**
     * The list's version after the change.
     */
    version: number;
};
/**
 * `members_diff` in its positional form (the answer to a `members_sync` with `compact`): [id, version, digest or null (on the last page), upserts (a plain member as its bare id), removed, more (1 while more changes remain, else 0)]. The group and the epoch are the request's.
 */
export type MembersDelta = [number, number, string | null, Array<(UserId) | (MemberInfo)>, Array<UserId>, 0 | 1];
/**
 * `members_diff`: changes since the client's version, oldest first. `digest` (of the whole
 * list at `version`) comes with the last page; while `more`, sync again from `version`.
 */
export type MembersDiff = {
    /**
     * The digest of the whole list at `version` (on the last page).
     */
    digest?: string | null;
    /**
     * The MEMBERSHIP stream's epoch.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * More changes remain.
     */
    more: boolean;
    /**
     * Members who left.
     */
    removed: Array<UserId>;
    /**
     * Members who joined or changed, as they are now.
     */
    upserts: Array<MemberInfo>;
    /**
     * The version the list is at after applying this page.
     */
    version: number;
};
/**
 * `members_found`: the answer to `members_search`.
 */
export type MembersFound = {
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The members found, in id order.
     */
    members: Array<MemberInfo>;
};
/**
 * `members_page`: a snapshot page pinned to `anchor`, members in id order: plain members by
 * id in `members`, the others in `details`. Fetch the next page with `cursor`; after the
 * last, sync from `anchor` for what changed since.
 */
export type MembersPage = {
    /**
     * The version the snapshot is pinned to.
     */
    anchor: number;
    /**
     * Only these digest buckets (a partial realignment).
     */
    buckets?: Array<number> | null;
    /**
     * Present when more pages remain.
     */
    cursor?: string | null;
    /**
     * Members with a role, nickname or mute.
     */
    details?: Array<MemberInfo>;
    /**
     * The MEMBERSHIP stream's epoch.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * Plain members.
     */
    members: Array<UserId>;
};
/**
 * `members_sketch`: the sketch asked for, of the members of `buckets` at `anchor`.
 */
export type MembersSketch = {
    /**
     * The version it is pinned to.
     */
    anchor: number;
    /**
     * Its cells.
     */
    cells: number;
    /**
     * The MEMBERSHIP stream's epoch.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The cells in their wire form (base64, 16 bytes each).
     */
    sketch: string;
};
/**
 * `membership`: the caller joined or left a conversation.
 */
export type MembershipChanged = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Joined (or left).
     */
    joined: boolean;
    /**
     * MEMBERSHIP stream sequence of the change.
     */
    version: number;
};
/**
 * A message as clients see it.
 */
export type Message = {
    /**
     * A reaction entry: added (or removed).
     */
    added?: boolean | null;
    /**
     * Files the message carries (get one with `download`); none once revoked.
     */
    attachments?: Array<Attachment>;
    /**
     * Text or any JSON, as sent.
     */
    body: unknown;
    /**
     * The sender's id of the message (the event id for a system message).
     */
    client_msg_id: string;
    /**
     * The sender's clock, Unix milliseconds.
     */
    client_ts: number;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * From which device (empty for a system message).
     */
    device: string;
    /**
     * How often the message was edited (`body` is the latest).
     */
    edits?: number;
    /**
     * A reaction entry's emoji.
     */
    emoji?: string | null;
    /**
     * What the entry is: a message (absent), or a change to message `target` — `edit`
     * (`body` is the new body), `revoke`, `reaction` (`emoji`, `added`) or `pin` (`pinned`).
     */
    kind?: EntryKind;
    /**
     * The message mentions everyone (`@all`).
     */
    mention_all?: boolean;
    /**
     * Users the message mentions.
     */
    mentions?: Array<string>;
    /**
     * A message: pinned in its conversation; a pin entry: pinned (or unpinned).
     */
    pinned?: boolean;
    /**
     * Reactions, by emoji in the order each first came.
     */
    reactions?: Array<Reaction>;
    /**
     * The message this one replies to.
     */
    reply_to?: number | null;
    /**
     * Revoked for everyone: a tombstone, `body` is null.
     */
    revoked?: boolean;
    /**
     * Who sent it: a user id, or `system:<source>` for a message from another system.
     */
    sender: string;
    /**
     * Its place in the conversation (the MESSAGES stream sequence).
     */
    seq: number;
    /**
     * When the server stored it, Unix milliseconds.
     */
    server_ts: number;
    /**
     * The message a change is about.
     */
    target?: number | null;
    /**
     * The seq of the last entry reflected in this state (absent: none since the message).
     * A client applies an entry about this message only if the entry's seq is higher.
     */
    version?: number | null;
};
/**
 * `messages`: the answer to `sync` and `history`.
 */
export type Messages = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Oldest first for `sync`, newest first for `history`.
     */
    messages: Array<Message>;
    /**
     * More messages remain in the requested direction.
     */
    more: boolean;
};
/**
 * One of the reading user's own reactions, added or removed.
 */
export type OwnReaction = {
    /**
     * Added (or removed).
     */
    added: boolean;
    /**
     * The emoji.
     */
    emoji: string;
    /**
     * The message.
     */
    target: number;
};
/**
 * `presence`: the users asked about, and the online members of a conversation.
 */
export type PresenceAnswer = {
    /**
     * With `conv`: how many of its members are online (those who hide their presence are
     * not counted).
     */
    online?: number | null;
    /**
     * One per user asked about, in the order asked.
     */
    users?: Array<PresenceInfo>;
};
/**
 * Whether a user is online, and when they were last seen.
 */
export type PresenceInfo = {
    /**
     * The user hides their presence (or shares no conversation with the caller): nothing
     * else is said.
     */
    hidden?: boolean;
    /**
     * When their last device went away (Unix ms), if known and they are offline.
     */
    last_seen?: number | null;
    /**
     * Connected now (from any device, to any edge).
     */
    online: boolean;
    /**
     * The user.
     */
    user: string;
};
/**
 * Frames without a request, tagged by `type`.
 */
export type Push = ((LiveMessage) & ({
    type: "message";
})) | ((ReadMoved) & ({
    type: "read";
})) | ((MembershipChanged) & ({
    type: "membership";
})) | ((MembersChanged) & ({
    type: "members_changed";
})) | ((ReactionsChanged) & ({
    type: "reactions";
})) | ((TypingNow) & ({
    type: "typing";
})) | ((StateChanged) & ({
    type: "state";
})) | ((Receipt) & ({
    type: "receipt";
})) | ((PresenceInfo) & ({
    type: "presence_changed";
}));
/**
 * A device's address at a push provider.
 */
export type PushTarget = ({
    provider: "fcm";
    /**
     * The registration token.
     */
    token: string;
}) | ({
    provider: "apns";
    /**
     * Registered by a development build: sent to the sandbox environment.
     */
    sandbox?: boolean;
    /**
     * The device token (hexadecimal).
     */
    token: string;
}) | ({
    /**
     * The browser's 16-byte authentication secret, base64url.
     */
    auth: string;
    /**
     * The push service URL the subscription named (`https://`).
     */
    endpoint: string;
    /**
     * The browser's P-256 public key, uncompressed, base64url (RFC 8291 `p256dh`).
     */
    p256dh: string;
    provider: "web_push";
});
/**
 * The reactions with one emoji on a message.
 */
export type Reaction = {
    /**
     * How many reacted with it.
     */
    count: number;
    /**
     * The emoji.
     */
    emoji: string;
    /**
     * Whether the user reading is one of them.
     */
    mine?: boolean;
};
/**
 * How the count of one emoji on one message changed.
 */
export type ReactionDelta = {
    /**
     * The change of its count.
     */
    delta: number;
    /**
     * The emoji.
     */
    emoji: string;
    /**
     * The message.
     */
    target: number;
};
/**
 * `reactions`: the reaction entries (prev, seq] of a conversation, coalesced into count
 * changes — one frame for many reactions, never one per reaction per member.
 */
export type ReactionsChanged = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Count changes per message and emoji.
     */
    deltas: Array<ReactionDelta>;
    /**
     * The reading user's own reactions among them (from their other devices).
     */
    mine?: Array<OwnReaction>;
    /**
     * The conversation's seq before the first of these entries.
     */
    prev: number;
    /**
     * The last of these entries.
     */
    seq: number;
};
/**
 * `reactors`: who reacted to a message with an emoji, in the order they did.
 */
export type Reactors = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Present when more remain: ask again with `after` set to it.
     */
    cursor?: number | null;
    /**
     * The emoji.
     */
    emoji: string;
    /**
     * The message.
     */
    seq: number;
    /**
     * The users.
     */
    users: Array<string>;
};
/**
 * `read`: the user's read marker moved.
 */
export type ReadMoved = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The new marker.
     */
    seq: number;
};
/**
 * How far one member read.
 */
export type Receipt = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Read up to here.
     */
    seq: number;
    /**
     * The member.
     */
    user: string;
};
/**
 * `receipts`: how far the other members read, or how many read a message.
 */
export type Receipts = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * With `seq`: how many others read that message or further.
     */
    count?: number | null;
    /**
     * Each other member's position (1:1s and groups up to `receipts_max_members`), without
     * members who hide their receipts.
     */
    readers?: Array<Receipt>;
};
/**
 * Answers, tagged by `type`.
 */
export type ReplyBody = ((Welcome) & ({
    type: "welcome";
})) | ({
    type: "pong";
}) | ((Ack) & ({
    type: "ack";
})) | ((Messages) & ({
    type: "messages";
})) | ((Done) & ({
    type: "ok";
})) | ((GroupVersions) & ({
    type: "group_versions";
})) | ({
    type: "members_unchanged";
}) | ((MembersDiff) & ({
    type: "members_diff";
})) | ((MembersPage) & ({
    type: "members_page";
})) | ((MembersBuckets) & ({
    type: "members_buckets";
})) | ((MembersSketch) & ({
    type: "members_sketch";
})) | ((MembersBatch) & ({
    type: "members_batch";
})) | ((MembersFound) & ({
    type: "members_found";
})) | ((SearchResults) & ({
    type: "search_results";
})) | ((Reactors) & ({
    type: "reactors";
})) | ((UserState) & ({
    type: "user_state";
})) | ((Receipts) & ({
    type: "receipts";
})) | ((PresenceAnswer) & ({
    type: "presence";
})) | ((UploadGrant) & ({
    type: "upload";
})) | ((DownloadGrant) & ({
    type: "download";
}));
export type Request = (RequestBody) & ({
    id: number;
});
/**
 * The request types, tagged by `type`.
 */
export type RequestBody = ({
    /**
     * The client's highest contiguous seq per conversation; conversations not listed are
     * compared with what this device last acknowledged.
     */
    anchors?: Array<ConvAnchor>;
    /**
     * Continue a bounded list of changes from a previous `welcome`'s cursor.
     */
    cursor?: string | null;
    /**
     * The protocol version the client speaks.
     */
    protocol: number;
    /**
     * The version of the user's own state the client holds (`welcome.state.version`); the
     * welcome then carries what changed since (0 or absent: all of it).
     */
    state_version?: number | null;
    /**
     * The device token.
     */
    token: string;
    type: "hello";
}) | ({
    type: "ping";
}) | ({
    /**
     * Files the message carries (at most 10), each uploaded first through `upload` for
     * this conversation.
     */
    attachments?: Array<Attachment>;
    /**
     * Text or any JSON; opaque to the server.
     */
    body: unknown;
    /**
     * The client's id of the message, its idempotency key.
     */
    client_msg_id: ClientMsgId;
    /**
     * The sender's clock, Unix milliseconds.
     */
    client_ts: number;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Mention everyone (`@all`): owners and admins of a group, either side of a 1:1.
     */
    mention_all?: boolean;
    /**
     * Users the message mentions (at most 50).
     */
    mentions?: Array<UserId>;
    /**
     * The message this one replies to (its seq in the conversation).
     */
    reply_to?: number | null;
    /**
     * Set on every attempt after the first: the server then also looks for the message in
     * history, so a retry long after the stream's duplicate window gets the same seq.
     */
    retry?: boolean;
    type: "send";
}) | ({
    /**
     * The client's anchor: messages after this seq.
     */
    after: number;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * At most this many messages (default 100, at most 500).
     */
    limit?: number | null;
    type: "sync";
}) | ({
    /**
     * Messages before this seq; 0 for the latest.
     */
    before?: number;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * At most this many messages (default 50, at most 500).
     */
    limit?: number | null;
    type: "history";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Read up to here.
     */
    seq: number;
    type: "read";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Received up to here.
     */
    seq: number;
    type: "received";
}) | ({
    /**
     * The other user.
     */
    peer: UserId;
    type: "open_direct";
}) | ({
    /**
     * The new group's id (ids starting with `dm-` are reserved).
     */
    group: GroupId;
    /**
     * The first members besides the caller (at most 1000).
     */
    members?: Array<UserId>;
    /**
     * At most 200 bytes.
     */
    title: string;
    type: "create_group";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * Between 1 and 1000 users.
     */
    members: Array<UserId>;
    type: "add_members";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * Between 1 and 1000 users.
     */
    members: Array<UserId>;
    type: "remove_members";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    type: "leave";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The member whose role changes.
     */
    member: UserId;
    /**
     * `admin` or `member`.
     */
    role: Role;
    type: "set_role";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * The member to mute or unmute.
     */
    member: UserId;
    type: "mute_member";
    /**
     * Muted until this Unix millisecond; absent to unmute.
     */
    until?: number | null;
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * Whose nickname.
     */
    member: UserId;
    /**
     * At most 64 bytes; absent to clear.
     */
    nickname?: string | null;
    type: "set_nickname";
}) | ({
    /**
     * A new avatar (at most 1024 bytes).
     */
    avatar?: string | null;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * A new title (at most 200 bytes).
     */
    title?: string | null;
    type: "update_group";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    type: "dismiss_group";
}) | ({
    /**
     * Where a previous answer stopped.
     */
    cursor?: string | null;
    type: "group_versions";
}) | ({
    /**
     * `members_sync` only (refused in a batch): answer a diff in its positional form,
     * `MembersDelta`. Ask it only of an edge whose `welcome` says `compact`.
     */
    compact?: boolean;
    /**
     * The digest of the client's copy.
     */
    digest?: string | null;
    /**
     * The epoch of the client's copy.
     */
    epoch?: string | null;
    /**
     * The group.
     */
    group: GroupId;
    type: "members_sync";
    /**
     * The version of the client's copy (0: none).
     */
    version?: number;
}) | ({
    /**
     * The version the realignment is pinned to.
     */
    anchor: number;
    /**
     * Only these digest buckets.
     */
    buckets?: Array<number> | null;
    /**
     * Where the previous page stopped.
     */
    cursor?: string | null;
    /**
     * The epoch of the realignment.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    /**
     * Only the members with these hashes (16 hex digits each, at most
     * [`MAX_FETCH_HASHES`]); without `cursor` and `buckets`.
     */
    hashes?: Array<string> | null;
    type: "members_fetch";
}) | ({
    /**
     * The version the sketch is pinned to.
     */
    anchor: number;
    /**
     * The digest buckets whose members it covers (at least one).
     */
    buckets: Array<number>;
    /**
     * Its size: a multiple of 4, at most 6,144.
     */
    cells: number;
    /**
     * The epoch of the copy.
     */
    epoch: string;
    /**
     * The group.
     */
    group: GroupId;
    type: "members_sketch";
}) | ({
    /**
     * Bytes of member data the answer may carry.
     */
    budget_bytes?: number | null;
    /**
     * Index of the first group to answer.
     */
    cursor?: number | null;
    /**
     * The client's copies.
     */
    groups: Array<GroupSync>;
    type: "members_sync_batch";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    /**
     * At most this many members.
     */
    limit?: number | null;
    /**
     * The prefix.
     */
    query: string;
    type: "members_search";
}) | ({
    /**
     * The group.
     */
    group: GroupId;
    type: "members_unsubscribe";
}) | ({
    /**
     * The new body.
     */
    body: unknown;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The message.
     */
    seq: number;
    type: "edit";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The message.
     */
    seq: number;
    type: "revoke";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * An emoji: 1 to 32 bytes, no control characters or whitespace.
     */
    emoji: string;
    /**
     * Take the reaction back.
     */
    remove?: boolean;
    /**
     * The message.
     */
    seq: number;
    type: "react";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The message.
     */
    seq: number;
    type: "pin";
    /**
     * Unpin it.
     */
    unpin?: boolean;
}) | ({
    /**
     * The previous page's cursor.
     */
    after?: number | null;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The emoji.
     */
    emoji: string;
    /**
     * At most this many (default 100, at most 500).
     */
    limit?: number | null;
    /**
     * The message.
     */
    seq: number;
    type: "reactors";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The message.
     */
    seq: number;
    type: "edits";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    type: "view";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    type: "unview";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Stopped typing.
     */
    stop?: boolean;
    type: "typing";
}) | ({
    /**
     * Archived.
     */
    archived?: boolean | null;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The unsent text (at most 4 KiB); empty clears it.
     */
    draft?: string | null;
    /**
     * Do not disturb until this Unix millisecond; 0 ends it.
     */
    muted_until?: number | null;
    /**
     * Which messages notify the user while offline: `all` (the default), `mentions` (only
     * those that mention them), `none`.
     */
    notify?: string | null;
    /**
     * Pinned to the top of the list.
     */
    pinned?: boolean | null;
    type: "set_prefs";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The messages' seqs.
     */
    seqs: Array<number>;
    type: "hide";
}) | ({
    /**
     * Others see whether the user is online, and when last seen.
     */
    presence?: boolean | null;
    /**
     * Others see how far the user read.
     */
    receipts?: boolean | null;
    type: "set_privacy";
}) | ({
    /**
     * The version the client holds.
     */
    after?: number;
    type: "user_state";
}) | ({
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * Count those who read this message or further.
     */
    seq?: number | null;
    type: "receipts";
}) | ({
    /**
     * Count the online members of this conversation.
     */
    conv?: (ConversationId) | (null);
    type: "presence";
    /**
     * The users.
     */
    users?: Array<UserId>;
}) | ({
    /**
     * Messages before this seq (the last result's, for the next page); 0 for the newest.
     */
    before?: number;
    /**
     * Only this conversation.
     */
    conv?: (ConversationId) | (null);
    /**
     * At most this many results (default 20, at most 50).
     */
    limit?: number | null;
    /**
     * Words to find (every one must match; a word of three characters or more also matches
     * words that start with it).
     */
    query: string;
    type: "search";
}) | ({
    /**
     * Notifications show the message's text (default); `false`: only that one came.
     */
    preview?: boolean;
    /**
     * The provider and the address it gave the device.
     */
    target: PushTarget;
    type: "set_push";
}) | ({
    type: "remove_push";
}) | ({
    /**
     * Its media type, e.g. `image/png`.
     */
    content_type: string;
    /**
     * The conversation the file is for (only there can a message carry it).
     */
    conv: ConversationId;
    /**
     * The file's name.
     */
    name: string;
    /**
     * Its exact size in bytes.
     */
    size: number;
    type: "upload";
}) | ({
    /**
     * The attachment's id.
     */
    attachment: AttachmentId;
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * The message carrying the file.
     */
    seq: number;
    type: "download";
});
/**
 * The role of a group member.
 */
export type Role = ("owner") | ("admin") | ("member");
/**
 * One message found.
 */
export type SearchResult = {
    /**
     * The pieces of its text that matched, as written there (to highlight).
     */
    highlights: Array<string>;
    /**
     * The message in its current state.
     */
    message: Message;
};
/**
 * `search_results`: the answer to `search`, newest first.
 */
export type SearchResults = {
    /**
     * More may be found before the last result's seq.
     */
    more: boolean;
    /**
     * The messages found.
     */
    results: Array<SearchResult>;
};
export type ServerFrame = ((ReplyBody) & ({
    id: number;
})) | (Push) | (MembersDelta) | ((ErrorFrame) & ({
    type: "error";
}));
/**
 * One change of the user's own state.
 */
export type StateChange = ({
    /**
     * Archived.
     */
    archived?: boolean | null;
    /**
     * The conversation.
     */
    conv: string;
    /**
     * The unsent text.
     */
    draft?: string | null;
    kind: "prefs";
    /**
     * Do not disturb until.
     */
    muted_until?: number | null;
    /**
     * Which messages notify (`all` restores the default).
     */
    notify?: string | null;
    /**
     * Pinned.
     */
    pinned?: boolean | null;
}) | ((HiddenMessages) & ({
    kind: "hidden";
})) | ({
    kind: "privacy";
    /**
     * Presence.
     */
    presence?: boolean | null;
    /**
     * Read receipts.
     */
    receipts?: boolean | null;
}) | ((DevicePush) & ({
    kind: "push";
}));
/**
 * `state`: one change of the user's own state, live.
 */
export type StateChanged = {
    /**
     * What changed.
     */
    change: StateChange;
    /**
     * The state version this change applies to.
     */
    prev: number;
    /**
     * The state version after it.
     */
    version: number;
};
/**
 * `typing`: who is typing in a conversation now — a few of them by name, and how many.
 */
export type TypingNow = {
    /**
     * The conversation.
     */
    conv: ConversationId;
    /**
     * How many are typing (0: nobody any more).
     */
    count: number;
    /**
     * Some of those typing (at most 3), in id order.
     */
    users: Array<UserId>;
};
/**
 * `upload`: the answer to `upload`.
 */
export type UploadGrant = {
    /**
     * The attachment to name in the message once the file is uploaded.
     */
    attachment: Attachment;
    /**
     * When the URL stops working, Unix milliseconds.
     */
    expires_at: number;
    /**
     * Headers the upload must carry, with these values (`content-type`).
     */
    headers: {
        [key: string]: string;
    };
    /**
     * The HTTP method (`PUT`); the body is the file, exactly `size` bytes.
     */
    method: string;
    /**
     * Where to upload it: absolute, or a path on the edge the client is connected to.
     */
    url: string;
};
/**
 * A user account. One user has many devices.
 */
export type UserId = string;
/**
 * The user's own state since a version: views of conversations that changed, messages
 * deleted for themselves, privacy settings.
 */
export type UserState = {
    /**
     * Messages deleted for themselves since, by conversation.
     */
    hidden?: Array<HiddenMessages>;
    /**
     * More changes remain: ask `user_state` after `version`.
     */
    more?: boolean;
    /**
     * Views of conversations that changed (their whole current view).
     */
    prefs?: Array<ConvPrefs>;
    /**
     * Others see the user's presence.
     */
    presence: boolean;
    /**
     * Devices whose push target changed since.
     */
    push?: Array<DevicePush>;
    /**
     * Others see the user's read receipts.
     */
    receipts: boolean;
    /**
     * The version this state is complete up to.
     */
    version: number;
};
/**
 * `welcome`: the answer to `hello`.
 */
export type Welcome = {
    /**
     * Conversations changed since the client's anchors, oldest change first.
     */
    changes: Array<ConvChange>;
    /**
     * This edge answers a `members_sync` with `compact` in the positional form
     * (`MembersDelta`); an edge that does not say so refuses the field.
     */
    compact?: boolean;
    /**
     * Present when more changes remain: send `hello` again with it.
     */
    cursor?: string | null;
    /**
     * The signed-in device.
     */
    device: DeviceId;
    /**
     * Largest frame the server accepts, in bytes.
     */
    max_frame_bytes: number;
    /**
     * The protocol version spoken on this connection.
     */
    protocol: number;
    /**
     * The user's own state: what changed since the `hello`'s `state_version` (boxed: a
     * welcome is rare, the frames it shares a type with are not).
     */
    state?: (UserState) | (null);
    /**
     * The signed-in user.
     */
    user: UserId;
};
