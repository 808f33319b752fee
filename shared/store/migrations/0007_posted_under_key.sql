-- The server API finds a post by its idempotency key within a conversation, whoever it was
-- for (a user's post and a system post under one key are one request).
CREATE INDEX messages_conv_client ON messages (conv_id, client_msg_id);
