-- Only entries that change a message have a target: the index of changes by target holds
-- those alone, and the messages themselves (nearly every row) go in without touching it.
-- Every lookup by target asks for one (`target = …`), which implies it is not null, so both
-- databases still use the index for them.
DROP INDEX messages_target;
CREATE INDEX messages_target ON messages (conv_id, target) WHERE target IS NOT NULL;
