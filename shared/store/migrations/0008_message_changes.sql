-- Entries that change a message (edit, revoke, reaction, pin) are rows of the conversation
-- like messages, in the same seq order; `kind` tells them apart and `target` names the
-- message they change. A message row holds its current state: its body after the last edit
-- (JSON null once revoked), how often it was edited, whether it is revoked or pinned, and
-- `version`, the seq of the last entry reflected in that state.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE messages ADD COLUMN target BIGINT;
ALTER TABLE messages ADD COLUMN reply_to BIGINT;
-- Users mentioned, as a JSON array ("*" for everyone), or an emoji for a reaction entry.
ALTER TABLE messages ADD COLUMN detail TEXT;
-- A reaction entry: added (1) or removed (0); a pin entry: pinned (1) or unpinned (0).
ALTER TABLE messages ADD COLUMN flag BIGINT;
ALTER TABLE messages ADD COLUMN edits BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN revoked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN version BIGINT;
CREATE INDEX messages_target ON messages (conv_id, target);

-- Who reacted with what: one row per user, message and emoji, with the seq of the entry
-- that added it (for paging "who reacted" in order).
CREATE TABLE reactions (
    conv_id TEXT NOT NULL,
    target  BIGINT NOT NULL,
    emoji   TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (conv_id, target, emoji, user_id)
);
CREATE INDEX reactions_in_order ON reactions (conv_id, target, emoji, seq);

-- Reaction counts per message and emoji, kept with every change: reading a message's
-- reactions never counts rows.
CREATE TABLE reaction_counts (
    conv_id   TEXT NOT NULL,
    target    BIGINT NOT NULL,
    emoji     TEXT NOT NULL,
    count     BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    PRIMARY KEY (conv_id, target, emoji)
);

-- Mentions, for unread-mention counts: one row per mentioned user ("*" for everyone).
CREATE TABLE mentions (
    conv_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    sender  TEXT NOT NULL,
    PRIMARY KEY (conv_id, user_id, seq)
);
