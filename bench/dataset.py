"""The benchmark's data set, written with SQL (not the API) in a few seconds.

Shapes, found again by the users' names so a second run reuses them:
- "bench hub": a user with 1,000 conversations (GET /conversations; the
  service's spread-posting scenario posts to these);
- "bench hot a/b": one empty conversation for the service's hot-posting run;
- "bench big a/b": a conversation of 100,000 messages, and "bench small a/b"
  one of 100 (one page of each is read);
- "bench chat N": CHAT_CONVERSATIONS pairs of users, each pair with a
  conversation of CHAT_HISTORY messages, for the mixed chat workload (users
  poll the tail of their conversation and post now and then); conversation i
  (from `chat_first`) is between users `chat_first_user + 2i` and `+ 2i + 1`;
- "pgbench hub" and "pgbench hot a/b": the same shapes for pgbench's bare
  transactions, kept apart so its rows never mix with the service's.

Generated messages get their outbox rows too (already marked sent), so the
integrity check "one outbox row per message" holds for the whole database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

SPREAD_CONVERSATIONS = 1000
BIG_MESSAGES = 100_000
SMALL_MESSAGES = 100
CHAT_CONVERSATIONS = 200
CHAT_HISTORY = 50


@dataclass
class Dataset:
    hub_user: int
    spread_first: int
    spread_last: int
    hot_conversation: int
    hot_user: int
    big_conversation: int
    small_conversation: int
    pg_hub_user: int
    pg_spread_first: int
    pg_spread_last: int
    pg_hot_conversation: int
    pg_hot_user: int
    small_member: int
    big_member: int
    chat_first: int
    chat_first_user: int

    def as_dict(self) -> dict:
        return asdict(self)


def _user(cur, name: str) -> int:
    row = cur.execute("SELECT id FROM users WHERE name = %s ORDER BY id LIMIT 1", [name]).fetchone()
    if row:
        return row[0]
    return cur.execute("INSERT INTO users (name, inserted_at) VALUES (%s, now()) RETURNING id", [name]).fetchone()[0]


def _pair(cur, a: int, b: int) -> int:
    low, high = sorted((a, b))
    row = cur.execute("SELECT id FROM channels WHERE user_low_id = %s AND user_high_id = %s", [low, high]).fetchone()
    if row:
        return row[0]
    conversation = cur.execute(
        "INSERT INTO channels (user_low_id, user_high_id, last_index, inserted_at) VALUES (%s, %s, 0, now()) RETURNING id",
        [low, high],
    ).fetchone()[0]
    cur.execute(
        "INSERT INTO users_channels (channel_id, user_id, last_viewed_index, inserted_at) VALUES (%s, %s, 0, now()), (%s, %s, 0, now())",
        [conversation, low, conversation, high],
    )
    return conversation


def _hub(cur, name: str) -> tuple[int, int, int]:
    """A user with SPREAD_CONVERSATIONS conversations; returns (user, first id, last id)."""
    hub = _user(cur, name)
    existing = cur.execute(
        "SELECT min(id), max(id), count(*) FROM channels WHERE user_low_id = %s OR user_high_id = %s", [hub, hub]
    ).fetchone()
    if existing[2] >= SPREAD_CONVERSATIONS:
        return hub, existing[0], existing[1]
    cur.execute(
        """
        WITH partners AS (
            INSERT INTO users (name, inserted_at)
            SELECT %(name)s || ' partner ' || n, now() FROM generate_series(1, %(count)s::int) AS n
            RETURNING id
        ), channels_made AS (
            INSERT INTO channels (user_low_id, user_high_id, last_index, inserted_at)
            SELECT %(hub)s, id, 0, now() FROM partners ORDER BY id
            RETURNING id, user_low_id, user_high_id
        )
        INSERT INTO users_channels (channel_id, user_id, last_viewed_index, inserted_at)
        SELECT id, user_low_id, 0, now() FROM channels_made
        UNION ALL
        SELECT id, user_high_id, 0, now() FROM channels_made
        """,
        {"name": name, "count": SPREAD_CONVERSATIONS, "hub": hub},
    )
    first, last = cur.execute("SELECT min(id), max(id) FROM channels WHERE user_low_id = %s", [hub]).fetchone()
    assert last - first + 1 == SPREAD_CONVERSATIONS, "spread conversations must have contiguous ids"
    return hub, first, last


def _chat(cur) -> tuple[int, int]:
    """CHAT_CONVERSATIONS pairs, each with CHAT_HISTORY messages; returns (first conversation, first user)."""
    first_user = cur.execute("SELECT min(id) FROM users WHERE name LIKE 'bench chat %'").fetchone()[0]
    if first_user is None:
        cur.execute(
            """
            WITH people AS (
                INSERT INTO users (name, inserted_at)
                SELECT 'bench chat ' || n, now() FROM generate_series(0, 2 * %(pairs)s::int - 1) AS n
                RETURNING id
            ), numbered AS (
                SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM people
            ), made AS (
                INSERT INTO channels (user_low_id, user_high_id, last_index, inserted_at)
                SELECT a.id, b.id, 0, now() FROM numbered a JOIN numbered b ON b.n = a.n + 1
                WHERE a.n %% 2 = 0 ORDER BY a.id
                RETURNING id, user_low_id, user_high_id
            )
            INSERT INTO users_channels (channel_id, user_id, last_viewed_index, inserted_at)
            SELECT id, user_low_id, 0, now() FROM made UNION ALL SELECT id, user_high_id, 0, now() FROM made
            """,
            {"pairs": CHAT_CONVERSATIONS},
        )
        first_user = cur.execute("SELECT min(id) FROM users WHERE name LIKE 'bench chat %'").fetchone()[0]
    first, last, count = cur.execute(
        "SELECT min(id), max(id), count(*) FROM channels WHERE user_low_id BETWEEN %s AND %s",
        [first_user, first_user + 2 * CHAT_CONVERSATIONS - 1],
    ).fetchone()
    assert count == CHAT_CONVERSATIONS and last - first + 1 == count, "chat conversations must have contiguous ids"
    for i in range(CHAT_CONVERSATIONS):
        _fill(cur, first + i, first_user + 2 * i, CHAT_HISTORY)
    return first, first_user


def _fill(cur, conversation: int, user: int, count: int) -> None:
    """Give a conversation `count` messages (and their sent outbox rows), once."""
    have = cur.execute("SELECT last_index FROM channels WHERE id = %s", [conversation]).fetchone()[0]
    if have >= count:
        return
    cur.execute(
        """
        INSERT INTO messages (content, user_id, channel_id, index, inserted_at)
        SELECT 'generated message ' || n, %(user)s, %(conversation)s, n, now()
        FROM generate_series(%(start)s::bigint, %(count)s::bigint) AS n
        """,
        {"user": user, "conversation": conversation, "start": have + 1, "count": count},
    )
    cur.execute(
        """
        INSERT INTO outbox (event_id, event_type, payload, created_at, sent_at, attempts)
        SELECT %(conversation)s || ':' || n, 'new_message', '{}'::jsonb, now(), now(), 0
        FROM generate_series(%(start)s::bigint, %(count)s::bigint) AS n
        """,
        {"conversation": conversation, "start": have + 1, "count": count},
    )
    cur.execute("UPDATE channels SET last_index = %s WHERE id = %s", [count, conversation])


def ensure(conninfo: str) -> Dataset:
    """Create whatever part of the data set is missing; return its ids."""
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        hub, first, last = _hub(cur, "bench hub")
        hot_a, hot_b = _user(cur, "bench hot a"), _user(cur, "bench hot b")
        big_a, big_b = _user(cur, "bench big a"), _user(cur, "bench big b")
        small_a, small_b = _user(cur, "bench small a"), _user(cur, "bench small b")
        big = _pair(cur, big_a, big_b)
        small = _pair(cur, small_a, small_b)
        _fill(cur, big, big_a, BIG_MESSAGES)
        _fill(cur, small, small_a, SMALL_MESSAGES)
        chat_first, chat_first_user = _chat(cur)
        pg_hub, pg_first, pg_last = _hub(cur, "pgbench hub")
        pg_hot_a, pg_hot_b = _user(cur, "pgbench hot a"), _user(cur, "pgbench hot b")
        # fmt: off
        dataset = Dataset(
            hub_user=hub, spread_first=first, spread_last=last,
            hot_conversation=_pair(cur, hot_a, hot_b), hot_user=hot_a,
            big_conversation=big, small_conversation=small, small_member=small_b, big_member=big_b,
            pg_hub_user=pg_hub, pg_spread_first=pg_first, pg_spread_last=pg_last,
            pg_hot_conversation=_pair(cur, pg_hot_a, pg_hot_b), pg_hot_user=pg_hot_a,
            chat_first=chat_first, chat_first_user=chat_first_user,
        )
        # fmt: on
        conn.commit()
        cur.execute("ANALYZE users; ANALYZE channels; ANALYZE users_channels; ANALYZE messages; ANALYZE outbox")
        conn.commit()
    return dataset


INTEGRITY_SQL = {
    "conversations whose indexes are not exactly 1..last_index": """
        SELECT count(*) FROM (
            SELECT c.id FROM channels c LEFT JOIN messages m ON m.channel_id = c.id
            GROUP BY c.id, c.last_index
            HAVING count(m.id) <> c.last_index OR coalesce(max(m.index), 0) <> c.last_index
                OR coalesce(min(m.index), 1) <> 1
        ) AS broken
    """,
    "messages without exactly one outbox row": """
        SELECT count(*) FROM messages m
        WHERE (SELECT count(*) FROM outbox o WHERE o.event_id = m.channel_id || ':' || m.index) <> 1
    """,
    "outbox rows without their message": """
        SELECT count(*) FROM outbox o
        WHERE o.event_type = 'new_message' AND NOT EXISTS (
            SELECT 1 FROM messages m WHERE m.channel_id || ':' || m.index = o.event_id)
    """,
}


def integrity_problems(conninfo: str) -> dict[str, int]:
    """Each integrity rule with the number of rows breaking it (all zero when sound)."""
    with psycopg.connect(conninfo) as conn:
        return {rule: conn.execute(sql).fetchone()[0] for rule, sql in INTEGRITY_SQL.items()}
