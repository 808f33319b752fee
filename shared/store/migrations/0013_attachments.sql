-- Files messages carry. A message row holds its attachments as a JSON array (NULL if none;
-- NULL again once revoked); `message_attachments` says which messages name an object, so an
-- object is deleted only when no message still names it.
ALTER TABLE messages ADD COLUMN attachments TEXT;

CREATE TABLE message_attachments (
    object  TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (object, conv_id, seq)
);
CREATE INDEX message_attachments_by_message ON message_attachments (conv_id, seq);

-- Objects of revoked messages, to delete from object storage: an outbox the deletion worker
-- works through (retried with backoff while the store fails). An object is deleted twice —
-- after a grace, and again once every upload URL that could have re-created it has expired —
-- and its row stays as a tombstone (`passes` 2): no message may name it again.
CREATE TABLE attachment_deletions (
    object     TEXT PRIMARY KEY,
    queued_at  BIGINT NOT NULL,
    due_at     BIGINT NOT NULL,
    passes     BIGINT NOT NULL DEFAULT 0,
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX attachment_deletions_due ON attachment_deletions (due_at);
