-- The same transaction as post_message_hot.sql, spread over the bench's
-- 1,000 conversations (ids :spread_first .. :spread_last).
\set cid random(:spread_first, :spread_last)
\set uid :spread_user
BEGIN;
UPDATE channels SET last_index = last_index + 1 WHERE id = :cid RETURNING last_index AS idx \gset
INSERT INTO messages (content, user_id, channel_id, index, inserted_at) VALUES ('pgbench message', :uid, :cid, :idx, now());
INSERT INTO outbox (event_id, event_type, payload, created_at, sent_at, attempts)
  VALUES (:cid || ':' || :idx, 'new_message',
          json_build_object('type', 'new_message', 'channel_id', :cid, 'user_id', :uid, 'index', :idx, 'participant_ids', json_build_array(:uid)),
          now(), now(), 0);
COMMIT;
