-- Where each projection stands in its stream. A projection writes its rows and moves its
-- checkpoint in one transaction, so after a crash it resumes exactly after the last
-- committed event and never applies one twice.
CREATE TABLE projection_checkpoints (
    projection TEXT PRIMARY KEY,
    stream     TEXT NOT NULL,
    -- The stream lifetime the checkpoint belongs to (see streams/README.md, "Epoch").
    epoch      BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
