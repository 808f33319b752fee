-- A user's own view of each conversation, the same on all their devices. `version` is the
-- USERS stream sequence of the row's last change: a device catches up on the rows newer than
-- the version it holds.
CREATE TABLE conversation_prefs (
    user_id     TEXT NOT NULL,
    conv_id     TEXT NOT NULL,
    pinned      BIGINT NOT NULL DEFAULT 0,
    archived    BIGINT NOT NULL DEFAULT 0,
    muted_until BIGINT,
    draft       TEXT,
    version     BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv_id)
);
CREATE INDEX conversation_prefs_version ON conversation_prefs (user_id, version);

-- Messages a user deleted for themselves: sync and history leave them out for that user.
CREATE TABLE hidden_messages (
    user_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv_id, seq)
);
CREATE INDEX hidden_messages_version ON hidden_messages (user_id, version);

-- What others may see of a user; a user without a row shows both.
CREATE TABLE privacy (
    user_id  TEXT PRIMARY KEY,
    receipts BIGINT NOT NULL DEFAULT 1,
    presence BIGINT NOT NULL DEFAULT 1,
    version  BIGINT NOT NULL
);
