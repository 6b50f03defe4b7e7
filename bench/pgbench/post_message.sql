-- The bare writes of one message post: take the next index (the counter row
-- stays locked until commit), insert the message, insert its outbox row
-- (marked sent, so the relay never publishes pgbench's rows). The ceiling the
-- service is measured against. Each transaction picks a conversation from
-- :first_conversation..:last_conversation: one id for the hot-conversation
-- run, the data set's 1,000 for the spread run.
\set cid random(:first_conversation, :last_conversation)
\set uid :user
BEGIN;
UPDATE channels SET last_index = last_index + 1 WHERE id = :cid RETURNING last_index AS idx \gset
INSERT INTO messages (content, user_id, channel_id, index, inserted_at) VALUES ('pgbench message', :uid, :cid, :idx, now());
INSERT INTO outbox (event_id, event_type, payload, created_at, sent_at, attempts)
  VALUES (:cid || ':' || :idx, 'new_message',
          json_build_object('type', 'new_message', 'channel_id', :cid, 'user_id', :uid, 'index', :idx, 'participant_ids', json_build_array(:uid)),
          now(), now(), 0);
COMMIT;
