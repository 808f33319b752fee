-- The MEMBERSHIP position a message was decided on (the `Anchorage-Membership-Seq` header of
-- its event): whom it reached, and so who may find it by search.
ALTER TABLE messages ADD COLUMN membership_seq BIGINT;

-- Each stretch of a user's membership of a conversation, in MEMBERSHIP sequences: from the
-- event that added them to the one that removed them (open while they are a member). A message
-- decided at a position inside a stretch reached them; search finds nothing outside.
CREATE TABLE member_spans (
    group_id   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    joined_seq BIGINT NOT NULL,
    left_seq   BIGINT,
    PRIMARY KEY (group_id, user_id, joined_seq)
);
CREATE INDEX member_spans_of_user ON member_spans (user_id, group_id);

-- Members before stretches were recorded find what they can read in the history: all of it
-- (from position 0) while they are members, of a group not dismissed; `anchorage replay`
-- into a new database makes the stretches exact from the streams.
INSERT INTO member_spans (group_id, user_id, joined_seq, left_seq)
SELECT m.group_id, m.user_id, 0, NULL
FROM group_members m JOIN groups g ON g.group_id = m.group_id
WHERE m.removed_seq IS NULL AND g.dismissed = 0;
