-- Conversation history: one row per message, keyed by the conversation and its stream
-- sequence (the message's version). Group messages are stored once, never per member.
CREATE TABLE messages (
    conv_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    sender        TEXT NOT NULL,
    device        TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    client_ts     BIGINT NOT NULL,
    server_ts     BIGINT NOT NULL,
    event_id      TEXT NOT NULL,
    PRIMARY KEY (conv_id, seq)
);
-- A sender's retry long after the stream's duplicate window still maps to the first copy.
CREATE UNIQUE INDEX messages_client_id ON messages (conv_id, sender, client_msg_id);

-- Per conversation: its version (last seq) and what a conversation list shows.
CREATE TABLE conversations (
    conv_id     TEXT PRIMARY KEY,
    last_seq    BIGINT NOT NULL,
    last_ts     BIGINT NOT NULL,
    message_count BIGINT NOT NULL
);

-- Read markers only move forward (max wins); unread counts derive from them and `messages`.
CREATE TABLE read_markers (
    user_id  TEXT NOT NULL,
    conv_id  TEXT NOT NULL,
    read_seq BIGINT NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv_id)
);

CREATE TABLE users (
    user_id      TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    deleted      BIGINT NOT NULL DEFAULT 0,
    version      BIGINT NOT NULL
);

CREATE TABLE revoked_sessions (
    user_id TEXT NOT NULL,
    device  TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);

-- A group and its version: the MEMBERSHIP stream sequence of its last event. The set digest
-- (wrapping sum of xxh3-64 of member ids, stored as the two's-complement BIGINT, and the
-- count) is maintained per change.
CREATE TABLE groups (
    group_id     TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    title        TEXT NOT NULL,
    avatar       TEXT,
    dismissed    BIGINT NOT NULL DEFAULT 0,
    created_seq  BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    digest_sum   BIGINT NOT NULL,
    member_count BIGINT NOT NULL
);

-- Member rows with a per-member version; a removed member stays as a tombstone
-- (removed_seq set) so a diff since an older version can report the removal.
CREATE TABLE group_members (
    group_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    role        TEXT NOT NULL,
    nickname    TEXT,
    muted_until BIGINT,
    version     BIGINT NOT NULL,
    removed_seq BIGINT,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_version ON group_members (group_id, version);
CREATE INDEX group_members_of_user ON group_members (user_id, group_id);

-- The set digest split into 256 buckets by the top byte of each member's hash.
CREATE TABLE group_digest_buckets (
    group_id TEXT NOT NULL,
    bucket   BIGINT NOT NULL,
    sum      BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (group_id, bucket)
);
