-- The search index: one document per message (rowid = its seq; its conversation kept beside,
-- to find the row), holding the terms of its current text (`text.rs` cuts them; FTS5's
-- `ascii` tokenizer only splits at the spaces between). The terms are stored with the
-- document, so removing one takes out exactly what was indexed, however the cutting of text
-- changes between versions; `secure-delete` takes a removed document's terms out of the index
-- pages at once, so a revoked or edited text leaves nothing behind (the tombstone list a
-- contentless table keeps instead would leave the terms in place).
CREATE VIRTUAL TABLE message_search USING fts5(terms, conv_id UNINDEXED, tokenize = 'ascii');
INSERT INTO message_search (message_search, rank) VALUES ('secure-delete', 1);
