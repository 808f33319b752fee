-- A message is identified by the device that wrote it as well: two devices of one user may
-- number their messages alike (`m-17`), and each is a message of its own.
DROP INDEX messages_client_id;
CREATE UNIQUE INDEX messages_client_id ON messages (conv_id, sender, device, client_msg_id);
