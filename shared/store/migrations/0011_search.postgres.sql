-- The search index: one document per message, holding the terms of its current text with
-- their positions (`text.rs` cuts them; they are cast to `tsvector`, not parsed by a text
-- search configuration, so both databases index the same terms).
CREATE TABLE message_search (
    seq     BIGINT PRIMARY KEY,
    conv_id TEXT NOT NULL,
    terms   TSVECTOR NOT NULL
);
CREATE INDEX message_search_terms ON message_search USING GIN (terms);
