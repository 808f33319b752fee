-- Only entries that change a message have a target: the index of changes by target holds
-- those alone, and the messages themselves (nearly every row) go in without touching it.
-- Every lookup by target asks for one (`target = …`), which implies it is not null, so both
-- databases still use the index for them. The new index is built before the old one goes, so
-- readers of a large table are held up only by the drop at the end.
CREATE INDEX messages_changes_by_target ON messages (conv_id, target) WHERE target IS NOT NULL;
DROP INDEX messages_target;
