-- Events from other systems that were applied, by (source, id), with the sequence of the
-- native event they became: a retry of one — however late, whatever the stream's duplicate
-- window — changes nothing. Written by the projections in the transaction that applies the
-- native event, so a rebuild by replay has them too.
CREATE TABLE ingested_events (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    native_seq BIGINT NOT NULL,
    PRIMARY KEY (source, event_id)
);
