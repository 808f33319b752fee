-- When each user was last connected (the moment their last device went away), for presence.
CREATE TABLE last_seen (
    user_id TEXT PRIMARY KEY,
    at      BIGINT NOT NULL
);
