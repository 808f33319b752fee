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

-- Members before spans were recorded: from their row's version (the last change, so no
-- earlier than their joining) while they are members; `anchorage replay` makes them exact.
INSERT INTO member_spans (group_id, user_id, joined_seq, left_seq)
SELECT group_id, user_id, version, NULL FROM group_members WHERE removed_seq IS NULL;
