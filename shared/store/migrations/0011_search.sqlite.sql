-- The search index: one document per message (rowid = its seq; its conversation kept beside,
-- to find the row), holding the terms of its current text (`text.rs` cuts them; FTS5's
-- `ascii` tokenizer only splits at the spaces between). Contentless: the text is not stored
-- twice. A document is removed with FTS5's `delete` command and the terms it was indexed
-- under (read from the message's row), and `secure-delete` takes those terms out of the
-- index pages at once: a revoked or edited text leaves nothing behind (the tombstone list
-- `contentless_delete` keeps instead would leave the terms in place).
CREATE VIRTUAL TABLE message_search USING fts5(
    terms, conv_id UNINDEXED,
    content = '', contentless_unindexed = 1, tokenize = 'ascii'
);
INSERT INTO message_search (message_search, rank) VALUES ('secure-delete', 1);
