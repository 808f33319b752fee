-- Where each device is reached while offline, from the USERS stream (`device.push_set`,
-- `device.push_removed`). A removed target stays as a row without a provider, so the user's
-- other devices catching up on their state see the removal. `version` is the USERS sequence
-- of the row's last change.
CREATE TABLE push_targets (
    user_id  TEXT NOT NULL,
    device   TEXT NOT NULL,
    provider TEXT,
    address  TEXT,
    target   TEXT,
    preview  BIGINT NOT NULL DEFAULT 1,
    version  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);
CREATE INDEX push_targets_address ON push_targets (provider, address);
CREATE INDEX push_targets_version ON push_targets (user_id, version);

-- Which messages of a conversation a user is notified of: all (NULL), only those that
-- mention them ('mentions'), none ('none').
ALTER TABLE conversation_prefs ADD COLUMN notify TEXT;

-- Notifications to send, one row per device and conversation: a newer message of the
-- conversation replaces the one waiting (one notification updated, not ten). It is the push
-- worker's own state, not derived from the streams: a rebuilt database starts it empty.
-- `seq` is the newest message to announce, `pushed_seq` the newest announced or passed over;
-- the row waits while `seq > pushed_seq`, until `due_at` (Unix ms). A worker claims a row
-- until `claimed_until` before it calls the provider; `failing_since` is when its first
-- failed attempt was, `outcome` what its last attempt came to.
CREATE TABLE push_outbox (
    user_id       TEXT NOT NULL,
    device        TEXT NOT NULL,
    conv_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    mention       BIGINT NOT NULL DEFAULT 0,
    pushed_seq    BIGINT NOT NULL DEFAULT 0,
    due_at        BIGINT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    failing_since BIGINT,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    outcome       TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, device, conv_id)
);
CREATE INDEX push_outbox_due ON push_outbox (due_at) WHERE seq > pushed_seq;
