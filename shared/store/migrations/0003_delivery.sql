-- 1:1 conversations are groups of two with fixed membership.
ALTER TABLE groups ADD COLUMN direct BIGINT NOT NULL DEFAULT 0;

-- What each device has acknowledged receiving, per conversation: on reconnect, what lies
-- beyond is offered again. Written by the edges on the devices' acknowledgements; it is device
-- state, not derived from the streams, so a rebuilt database simply offers everything again.
CREATE TABLE device_cursors (
    user_id       TEXT NOT NULL,
    device        TEXT NOT NULL,
    conv_id       TEXT NOT NULL,
    delivered_seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, device, conv_id)
);
