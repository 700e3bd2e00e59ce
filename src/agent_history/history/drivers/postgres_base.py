"""SQL shared by the sync and the async PostgreSQL drivers, and the project's own migrations.

The drivers write LangGraph's ``store`` table (schema version `STORE_SCHEMA_VERSION`) as
its PostgreSQL store does, plus server-side functions installed by `MIGRATIONS`, an
append-only list whose index is the version (recorded in ``agent_history_migrations``),
applied by `migrate` under the setup lock, like LangGraph's own:

- ``agent_history_append_v4`` (``_v1`` to ``_v3`` before migrations 2 to 4, kept for
  older workers): a whole append in one statement, so one round trip. It takes the
  conversation's advisory lock, reads the head, the id entries and the open chunk, and
  writes exactly what `layout.plan_append` would (the property test in
  ``tests/integration/test_postgres_append.py`` runs both on random states); the records
  arrive already encoded by the Python codec, the function only numbers them;
- ``agent_history_put_v1``: the writes of any other procedure (delete, ...), with the
  conversation's expiry;
- ``agent_history_expiry_v1`` / ``agent_history_touch_v1``: the TTL rule of
  `base.TtlPolicy` (one ``expires_at`` for every item of a conversation).

Every item is read or written by its full primary key ``(prefix, key)`` (or, for the
newest chunks, a key range read backwards with a limit), never by a condition that the
planner might answer by scanning a whole conversation: with statistics taken before a
conversation grew, ``prefix = $1 AND key = ANY($2)`` was planned as a scan of its 41k
items (43 ms) in a test.

Nothing here does I/O; `postgres` and `postgres_async` execute it.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import psycopg

from agent_history.history.drivers.base import REFRESH_FRACTION, AppendRequest, TtlPolicy
from agent_history.history.layout import msgid_key, new_head
from agent_history.history.records import AppendResult
from agent_history.history.steps import Get

__all__ = [
    "APPEND_SQL",
    "HEADS_SQL",
    "INSPECT_SQL",
    "LOCK_SQL",
    "MIGRATIONS",
    "MIGRATIONS_TABLE",
    "NEXT_PREFIXES_SQL",
    "OWN_VERSION_SQL",
    "PUT_SQL",
    "RECORD_VERSION_SQL",
    "SETUP_LOCK_ID",
    "SETUP_TRY_LOCK_SQL",
    "SETUP_UNLOCK_SQL",
    "STORE_SCHEMA_VERSION",
    "STORE_VERSION_SQL",
    "TOUCH_SKIPPED",
    "TOUCH_SQL",
    "append_params",
    "append_result",
    "lock_timeout_ms",
    "migration_statements",
    "put_params",
    "select",
    "shut_socket",
    "text_array",
]

STORE_SCHEMA_VERSION = 3
"""The last migration of LangGraph's PostgreSQL store (langgraph-checkpoint-postgres 3.x)
this SQL was written for: ``store(prefix, key, value jsonb, created_at, updated_at,
expires_at, ttl_minutes)``, primary key ``(prefix, key)``."""

SETUP_LOCK_ID = 0x6167_6831_5345_5450
"""The session advisory lock that serialises set-up (LangGraph's and ours) across
processes. It is taken with ``pg_try_advisory_lock`` in a polling loop, so a waiting
session never sits inside a statement (holding a snapshot) while the holder runs
``CREATE INDEX CONCURRENTLY``, which waits for every older snapshot to finish."""
SETUP_TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({SETUP_LOCK_ID})"
SETUP_UNLOCK_SQL = f"SELECT pg_advisory_unlock({SETUP_LOCK_ID})"

_KEEP = 1 - REFRESH_FRACTION

_FUNCTIONS = f"""
-- One item by its primary key, found so that no plan can do it by scanning its
-- conversation: the first row at or after (prefix, key) in primary-key order (only the
-- primary key index gives that order cheaply), kept if it is the one asked for. A plain
-- `prefix = $1 AND key = $2` is planned with the prefix index and a filter when the
-- statistics make every prefix look small, which they do once conversations are many.
CREATE OR REPLACE FUNCTION agent_history_item_v1(p_prefix text, p_key text)
RETURNS TABLE (key text, value jsonb, expires_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT s.key, s.value, s.expires_at
    FROM (SELECT prefix, key, value, expires_at FROM store
          WHERE (prefix, key) >= (p_prefix, p_key)
          ORDER BY prefix, key LIMIT 1) AS s
    WHERE s.prefix = p_prefix AND s.key = p_key
$$;

CREATE OR REPLACE FUNCTION agent_history_chunk_key_v1(p_index bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'chunk:' || CASE WHEN p_index < 10000000000 THEN lpad(p_index::text, 10, '0')
                            ELSE p_index::text END
$$;

-- The expiry every item of a conversation gets when it is written now; when more than
-- {REFRESH_FRACTION:g} of the TTL has passed, every item of the conversation is given the new one.
-- The caller holds the conversation's advisory lock.
CREATE OR REPLACE FUNCTION agent_history_expiry_v1(
    p_prefix text, p_exists boolean, p_current timestamptz, p_ttl_minutes double precision
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_expiry timestamptz;
BEGIN
    IF p_ttl_minutes IS NULL THEN
        RETURN p_current;
    END IF;
    IF p_exists AND p_current IS NOT NULL
       AND p_current >= now() + make_interval(secs => p_ttl_minutes * 60 * {_KEEP!r}) THEN
        RETURN p_current;
    END IF;
    v_expiry := now() + make_interval(secs => p_ttl_minutes * 60);
    IF p_exists THEN
        UPDATE store SET expires_at = v_expiry, ttl_minutes = NULL WHERE prefix = p_prefix;
    END IF;
    RETURN v_expiry;
END
$$;

CREATE OR REPLACE FUNCTION agent_history_lock_v1(p_prefix text, p_lock_timeout_ms integer)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_lock_timeout_ms > 0 THEN
        PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_prefix, 0));
END
$$;

-- Push a conversation's expiry back after a read (refresh_on_read).
CREATE OR REPLACE FUNCTION agent_history_touch_v1(
    p_prefix text, p_ttl_minutes double precision, p_lock_timeout_ms integer
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_current timestamptz;
BEGIN
    PERFORM agent_history_lock_v1(p_prefix, p_lock_timeout_ms);
    SELECT s.expires_at INTO v_current FROM agent_history_item_v1(p_prefix, 'head') s;
    IF FOUND THEN
        PERFORM agent_history_expiry_v1(p_prefix, true, v_current, p_ttl_minutes);
    END IF;
END
$$;

-- The writes of a procedure run in a transaction that holds the conversation's lock:
-- upserts with the conversation's expiry, then deletes.
CREATE OR REPLACE FUNCTION agent_history_put_v1(
    p_prefix text, p_keys text[], p_values jsonb[], p_deletes text[],
    p_ttl_minutes double precision
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_current timestamptz;
    v_exists boolean;
    v_expiry timestamptz;
    v_key text;
BEGIN
    IF cardinality(p_keys) > 0 THEN
        SELECT s.expires_at INTO v_current FROM agent_history_item_v1(p_prefix, 'head') s;
        v_exists := FOUND;
        v_expiry := agent_history_expiry_v1(p_prefix, v_exists, v_current, p_ttl_minutes);
        INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
        SELECT p_prefix, u.k, u.v, now(), now(), v_expiry, NULL
        FROM unnest(p_keys, p_values) AS u(k, v)
        ON CONFLICT (prefix, key) DO UPDATE
        SET value = EXCLUDED.value, updated_at = now(),
            expires_at = EXCLUDED.expires_at, ttl_minutes = NULL;
    END IF;
    FOREACH v_key IN ARRAY p_deletes LOOP
        DELETE FROM store
        WHERE ctid = (SELECT ctid FROM store WHERE (prefix, key) >= (p_prefix, v_key)
                      ORDER BY prefix, key LIMIT 1)
          AND prefix = p_prefix AND key = v_key;
    END LOOP;
END
$$;

"""

# Pieces of the append functions' text (``_v1``'s, which migrations 1 to 3 edit, and
# ``_v4``'s): the signature and the first declarations, the lock and the head read, the
# open chunk read, the upsert with the conversation's expiry.
_APPEND_SIGNATURE = """    p_prefix text,
    p_records jsonb,
    p_ids text[],
    p_id_keys text[],
    p_anchor_id text,
    p_anchor_key text,
    p_anchor_next text,
    p_new_head jsonb,
    p_now text,
    p_ttl_minutes double precision,
    p_lock_timeout_ms integer,
    OUT appended integer,
    OUT duplicates integer,
    OUT first_seq bigint,
    OUT last_seq bigint,
    OUT total bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_head jsonb;
    v_exists boolean;
    v_current timestamptz;
    v_size bigint;
    v_epoch jsonb;
    v_last bigint;
"""
_APPEND_LOCK_AND_HEAD = """    IF p_lock_timeout_ms > 0 THEN
        PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_prefix, 0));
    SELECT s.value, s.expires_at INTO v_head, v_current
    FROM agent_history_item_v1(p_prefix, 'head') s;
    v_exists := FOUND;
    IF NOT v_exists THEN
        v_head := p_new_head;
    END IF;
    v_size := trunc((v_head->>'chunk_size')::numeric);
    v_epoch := v_head->'epoch';
    v_last := trunc((v_head->>'last_seq')::numeric);
"""
_APPEND_OPEN_CHUNK = """    IF v_last % v_size <> 0 THEN
        v_chunk := (v_last - 1) / v_size;
        v_key := CASE WHEN v_chunk < 10000000000 THEN 'chunk:' || lpad(v_chunk::text, 10, '0')
                      ELSE 'chunk:' || v_chunk END;
        SELECT s.value->'turns' INTO v_turns FROM agent_history_item_v1(p_prefix, v_key) s;
        IF v_turns IS NULL THEN
            v_turns := '[]'::jsonb;
        ELSIF trunc((v_turns->-1->>'seq')::numeric) > v_last THEN
            SELECT coalesce(jsonb_agg(t.r ORDER BY t.o), '[]'::jsonb) INTO v_turns
            FROM jsonb_array_elements(v_turns) WITH ORDINALITY AS t(r, o)
            WHERE trunc((t.r->>'seq')::numeric) <= v_last;
        END IF;
    END IF;
"""
_APPEND_WRITE = """    IF p_ttl_minutes IS NULL THEN
        v_expiry := v_current;
    ELSE
        v_expiry := agent_history_expiry_v1(p_prefix, v_exists, v_current, p_ttl_minutes);
    END IF;
    INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
    SELECT p_prefix, u.k, u.v, now(), now(), v_expiry, NULL
    FROM unnest(v_keys, v_values) AS u(k, v)
    ON CONFLICT (prefix, key) DO UPDATE
    SET value = EXCLUDED.value, updated_at = now(),
        expires_at = EXCLUDED.expires_at, ttl_minutes = NULL;
"""

_APPEND_FUNCTION = (
    """
-- layout.plan_append, server side: one statement per append. The records arrive built
-- by the codec (with their time); the function numbers them.
CREATE OR REPLACE FUNCTION agent_history_append_v1(
"""
    + _APPEND_SIGNATURE
    + """    v_known text[] := '{}';
    v_checked text[] := '{}';
    v_anchor jsonb;
    v_key text;
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_seen text[] := '{}';
    v_fresh integer[] := '{}';
    v_dups integer := 0;
    v_keys text[] := '{}';
    v_values jsonb[] := '{}';
    v_chunk bigint;
    v_turns jsonb;
    v_seq bigint;
    v_index bigint;
    v_entry jsonb;
    v_expiry timestamptz;
    i integer;
BEGIN
    -- (Helpers are inlined here: a plpgsql call of a function costs more than its body.)
"""
    + _APPEND_LOCK_AND_HEAD
    + """
    -- Id entries of this epoch among the pending ids and the anchor, one primary-key
    -- lookup each (a conversation may hold a hundred thousand id entries).
    FOREACH v_key IN ARRAY array_append(p_id_keys, p_anchor_key) LOOP
        CONTINUE WHEN v_key IS NULL OR v_key = ANY(v_checked);
        v_checked := array_append(v_checked, v_key);
        SELECT s.value INTO v_entry FROM agent_history_item_v1(p_prefix, v_key) s;
        IF FOUND AND v_entry->'epoch' = v_epoch THEN
            v_known := array_append(v_known, v_key);
            IF v_key = p_anchor_key THEN
                v_anchor := v_entry;
            END IF;
        END IF;
    END LOOP;

    -- The anchor stored by another run (another token, or none): a re-delivered exchange.
    IF v_anchor IS NOT NULL
       AND (p_anchor_next IS NULL OR v_anchor->'next' IS DISTINCT FROM to_jsonb(p_anchor_next)) THEN
        appended := 0;
        duplicates := v_n;
        total := v_last;
        RETURN;
    END IF;

    FOR i IN 1 .. v_n LOOP
        IF p_ids[i] IS NOT NULL THEN
            IF p_ids[i] = ANY(v_seen) OR p_id_keys[i] = ANY(v_known) THEN
                v_dups := v_dups + 1;
                CONTINUE;
            END IF;
            v_seen := array_append(v_seen, p_ids[i]);
        END IF;
        v_fresh := array_append(v_fresh, i);
    END LOOP;
    IF cardinality(v_fresh) = 0 THEN
        appended := 0;
        duplicates := v_dups;
        total := v_last;
        RETURN;
    END IF;

    -- The open chunk, without records above the head (an abandoned epoch's, written
    -- after the others: when the last record is not above the head, none is).
    v_seq := v_last;
"""
    + _APPEND_OPEN_CHUNK
    + """
    FOREACH i IN ARRAY v_fresh LOOP
        v_seq := v_seq + 1;
        v_index := (v_seq - 1) / v_size;
        IF v_chunk IS DISTINCT FROM v_index THEN
            IF v_chunk IS NOT NULL THEN
                v_keys := array_append(v_keys, agent_history_chunk_key_v1(v_chunk));  -- rare
                v_values := array_append(v_values, jsonb_build_object(
                    'kind', 'chunk', 'index', v_chunk, 'turns', v_turns));
            END IF;
            v_chunk := v_index;
            v_turns := '[]'::jsonb;
        END IF;
        v_turns := v_turns || jsonb_build_array(
            (p_records->(i - 1)) || jsonb_build_object('seq', v_seq));
        IF p_ids[i] IS NOT NULL THEN
            v_entry := jsonb_build_object('kind', 'msgid', 'seq', v_seq, 'epoch', v_epoch);
            IF p_ids[i] = p_anchor_id AND p_anchor_next IS NOT NULL THEN
                v_entry := v_entry || jsonb_build_object('next', p_anchor_next);
            END IF;
            v_keys := array_append(v_keys, p_id_keys[i]);
            v_values := array_append(v_values, v_entry);
        END IF;
    END LOOP;
    v_keys := array_append(v_keys, CASE
        WHEN v_chunk < 10000000000 THEN 'chunk:' || lpad(v_chunk::text, 10, '0')
        ELSE 'chunk:' || v_chunk END);
    v_values := array_append(v_values, jsonb_build_object(
        'kind', 'chunk', 'index', v_chunk, 'turns', v_turns));
    v_keys := array_append(v_keys, 'head'::text);
    v_values := array_append(v_values,
        v_head || jsonb_build_object('last_seq', v_seq, 'updated_at', p_now));

"""
    + _APPEND_WRITE
    + """
    appended := cardinality(v_fresh);
    duplicates := v_dups;
    first_seq := v_last + 1;
    last_seq := v_seq;
    total := v_seq;
END
$$;
"""
)

_HEAD_READ = """    v_exists := FOUND;
    IF NOT v_exists THEN
        v_head := p_new_head;
    END IF;
"""

# LangGraph's sweeper deletes expired rows without the conversation's advisory lock. An
# append that read the head of a conversation the sweeper was deleting (its DELETE not
# committed yet) wrote its chunk and head back after the sweep: half a conversation, with
# expired turns revived. So a conversation within a minute of its expiry has its rows
# locked first (which waits for a sweep holding them), then its head read again: after a
# sweep it is a new conversation; otherwise the sweep, once it gets the rows, finds them
# refreshed by this append. (A sweep started later sees the new expiry.)
_SWEEP_GUARD = """    IF FOUND AND v_current IS NOT NULL
       AND v_current < now() + interval '1 minute' THEN
        PERFORM 1 FROM store WHERE prefix = p_prefix FOR UPDATE;
        SELECT s.value, s.expires_at INTO v_head, v_current
        FROM agent_history_item_v1(p_prefix, 'head') s;
    END IF;
"""

if _HEAD_READ not in _APPEND_FUNCTION:  # pragma: no cover - a guard on the text above
    raise RuntimeError("agent_history_append_v1: head read not found")

_APPEND_V1 = _APPEND_FUNCTION.replace(_HEAD_READ, _SWEEP_GUARD + _HEAD_READ)

# agent_history_append_v2: v1 with the anchor rule of `layout.plan_append` that also takes
# the ids following the anchor in the run's conversation (``p_anchor_seen``): a token
# among them is an earlier pass of the same run. (v1 stays, for workers of an older
# release during a rolling deploy.)
_ANCHOR_SEEN_PARAMETER = (
    "    p_anchor_next text,\n",
    "    p_anchor_next text,\n    p_anchor_seen text[],\n",
)
_V2_EDITS = (
    ("FUNCTION agent_history_append_v1(", "FUNCTION agent_history_append_v2("),
    _ANCHOR_SEEN_PARAMETER,
    (
        "AND (p_anchor_next IS NULL OR v_anchor->'next' IS DISTINCT FROM to_jsonb(p_anchor_next))",
        "AND (p_anchor_next IS NULL OR v_anchor->>'next' IS NULL\n"
        "            OR NOT (v_anchor->>'next' = p_anchor_next\n"
        "                    OR v_anchor->>'next' = ANY(p_anchor_seen)))",
    ),
)


# agent_history_append_v3: v2 where a later pass of a run (the anchor stored with a
# token among ``p_anchor_seen``) makes its answer the anchor's token and its first
# message the entry's ``from``, as `layout.plan_append` does.
_V3_EDITS = (
    ("FUNCTION agent_history_append_v2(", "FUNCTION agent_history_append_v3("),
    (
        "    v_keys := array_append(v_keys, 'head'::text);\n",
        "    IF v_anchor IS NOT NULL AND v_anchor->>'next' IS DISTINCT FROM p_anchor_next THEN\n"
        "        v_keys := array_append(v_keys, p_anchor_key);\n"
        "        v_values := array_append(v_values, (v_anchor - 'from')\n"
        "            || jsonb_build_object('next', p_anchor_next)\n"
        "            || CASE WHEN p_ids[v_fresh[1]] IS NULL THEN '{}'::jsonb\n"
        "                    ELSE jsonb_build_object('from', p_ids[v_fresh[1]]) END);\n"
        "    END IF;\n"
        "    v_keys := array_append(v_keys, 'head'::text);\n",
    ),
)


def _edited(text: str, edits: Sequence[tuple[str, str]]) -> str:
    for old, new in edits:
        if text.count(old) != 1:  # pragma: no cover - a guard on the texts above
            raise RuntimeError(f"migration text not found once: {old!r}")
        text = text.replace(old, new)
    return text


_APPEND_V4 = (
    """
-- layout.plan_append, server side (v3's rules; see the module's list). Every step over the
-- pending messages is one set-based statement (v3 looped, testing each id against the
-- arrays built so far: 10,000 messages with ids took 5 s).
CREATE OR REPLACE FUNCTION agent_history_append_v4(
"""
    + _edited(_APPEND_SIGNATURE, [_ANCHOR_SEEN_PARAMETER])
    + """    v_anchor jsonb;
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_fresh integer[];
    v_chunk bigint;
    v_key text;
    v_turns jsonb := '[]'::jsonb;
    v_renewed jsonb;
    v_keys text[];
    v_values jsonb[];
    v_expiry timestamptz;
BEGIN
"""
    + _APPEND_LOCK_AND_HEAD.replace(_HEAD_READ, _SWEEP_GUARD + _HEAD_READ)
    + """
    -- The anchor stored by another run (another token, or none): a re-delivered exchange.
    IF p_anchor_key IS NOT NULL THEN
        SELECT s.value INTO v_anchor FROM agent_history_item_v1(p_prefix, p_anchor_key) s
        WHERE s.value->'epoch' = v_epoch;
    END IF;
    IF v_anchor IS NOT NULL
       AND (p_anchor_next IS NULL OR v_anchor->>'next' IS NULL
            OR NOT (v_anchor->>'next' = p_anchor_next
                    OR v_anchor->>'next' = ANY(p_anchor_seen))) THEN
        appended := 0;
        duplicates := v_n;
        total := v_last;
        RETURN;
    END IF;

    -- The messages to write: those without an id, and the first of each id that no entry
    -- of this epoch holds (one primary-key lookup per distinct id).
    SELECT coalesce(array_agg(p.o ORDER BY p.o), '{}') INTO v_fresh
    FROM (SELECT u.o, u.id, u.k,
                 row_number() OVER (PARTITION BY u.id ORDER BY u.o) AS rank
          FROM unnest(p_ids, p_id_keys) WITH ORDINALITY AS u(id, k, o)) AS p
    WHERE p.id IS NULL
       OR (p.rank = 1 AND NOT EXISTS (
               SELECT FROM agent_history_item_v1(p_prefix, p.k) s
               WHERE s.value->'epoch' = v_epoch));
    IF cardinality(v_fresh) = 0 THEN
        appended := 0;
        duplicates := v_n;
        total := v_last;
        RETURN;
    END IF;

    -- The open chunk (v_chunk, v_turns), without records above the head (an abandoned
    -- epoch's, written after the others: when the last record is not above the head,
    -- none is).
"""
    + _APPEND_OPEN_CHUNK
    + """
    -- A later pass of the run: its answer becomes the anchor's token, and its first
    -- message the entry's "from".
    IF v_anchor IS NOT NULL AND v_anchor->>'next' IS DISTINCT FROM p_anchor_next THEN
        v_renewed := (v_anchor - 'from') || jsonb_build_object('next', p_anchor_next)
            || CASE WHEN p_ids[v_fresh[1]] IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('from', p_ids[v_fresh[1]]) END;
    END IF;

    WITH fresh AS (
        SELECT v_last + f.n AS seq, e.rec || jsonb_build_object('seq', v_last + f.n) AS rec,
               p_ids[f.o] AS id, p_id_keys[f.o] AS k
        FROM unnest(v_fresh) WITH ORDINALITY AS f(o, n)
        JOIN jsonb_array_elements(p_records) WITH ORDINALITY AS e(rec, o) ON e.o = f.o
    ), chunks AS (
        SELECT (seq - 1) / v_size AS idx, jsonb_agg(rec ORDER BY seq) AS turns
        FROM fresh GROUP BY 1
    ), items(k, v) AS (
        SELECT agent_history_chunk_key_v1(c.idx), jsonb_build_object(
            'kind', 'chunk', 'index', c.idx,
            'turns', CASE WHEN c.idx = v_chunk THEN v_turns || c.turns ELSE c.turns END)
        FROM chunks c
        UNION ALL
        SELECT f.k, jsonb_build_object('kind', 'msgid', 'seq', f.seq, 'epoch', v_epoch)
            || CASE WHEN f.id = p_anchor_id AND p_anchor_next IS NOT NULL
                    THEN jsonb_build_object('next', p_anchor_next) ELSE '{}'::jsonb END
        FROM fresh f WHERE f.id IS NOT NULL
        UNION ALL
        SELECT p_anchor_key, v_renewed WHERE v_renewed IS NOT NULL
        UNION ALL
        SELECT 'head', v_head || jsonb_build_object(
            'last_seq', v_last + cardinality(v_fresh), 'updated_at', p_now)
    )
    SELECT array_agg(i.k), array_agg(i.v) INTO v_keys, v_values FROM items i;

"""
    + _APPEND_WRITE
    + """
    appended := cardinality(v_fresh);
    duplicates := v_n - appended;
    first_seq := v_last + 1;
    last_seq := v_last + appended;
    total := last_seq;
END
$$;
"""
)

MIGRATIONS: Sequence[str] = [
    _FUNCTIONS + _APPEND_FUNCTION,
    # 1: the append waits for a sweep of the conversation it appends to (see _SWEEP_GUARD).
    _APPEND_V1,
    # 2: agent_history_append_v2, whose anchor rule knows the passes of one run.
    _edited(_APPEND_V1, _V2_EDITS),
    # 3: agent_history_append_v3, where a later pass of a run renews the anchor's token.
    _edited(_edited(_APPEND_V1, _V2_EDITS), _V3_EDITS),
    # 4: agent_history_append_v4, v3 in set-based statements (its cost was quadratic in
    # the number of messages appended at once).
    _APPEND_V4,
]

MIGRATIONS_TABLE = "agent_history_migrations"

INSPECT_SQL = (
    "SELECT to_regclass('store_migrations') IS NOT NULL AS has_store, "
    f"to_regclass('{MIGRATIONS_TABLE}') IS NOT NULL AS has_own"
)
STORE_VERSION_SQL = "SELECT max(v) FROM store_migrations"
OWN_VERSION_SQL = f"SELECT max(v) FROM {MIGRATIONS_TABLE}"
RECORD_VERSION_SQL = f"INSERT INTO {MIGRATIONS_TABLE} (v) VALUES (%s)"

APPEND_SQL = (
    "SELECT appended, duplicates, first_seq, last_seq, total FROM agent_history_append_v4("
    "%s, %s::jsonb, %s::text[], %s::text[], %s, %s, %s, %s::text[], %s::jsonb, %s, %s, %s)"
)
PUT_SQL = "SELECT agent_history_put_v1(%s, %s::text[], %s::jsonb[], %s::text[], %s)"
TOUCH_SQL = "SELECT agent_history_touch_v1(%s, %s, %s)"
TOUCH_SKIPPED = (
    # A writer holds the conversation: its append sets the expiry anyway.
    psycopg.errors.LockNotAvailable,
    # A read-only replica (a hot standby, a read-only default) or a role that may only
    # read: the read stands, unrefreshed; the primary's writers keep the expiry.
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.InsufficientPrivilege,
)
"""Errors of a read's expiry refresh (`TOUCH_SQL`) that leave the read standing."""
LOCK_SQL = "SELECT agent_history_lock_v1(%s, %s)"

# The requested keys, each by its primary key (`agent_history_item_v1`), then the newest
# chunks: the rows just below the highest chunk key in primary-key order, read backwards
# and stopped by the LIMIT, kept when they are chunks of this conversation. Written so
# that no plan can scan the conversation (see the module).
# The LIMIT is part of the text, not a parameter: with a parameter there, the server's
# generic plan for the prepared statement looks dearer than a custom one, so it planned
# the query again on every call (0.2 ms, twice the query itself). A text per limit keeps
# one cached generic plan each.
# Values come as JSON text, which the drivers decode with orjson: registering a json
# loader on a cursor costs more than the query.
_NEWEST = (
    " UNION ALL SELECT c.key, c.value::text, c.expires_at FROM ("
    "SELECT prefix, key, value, expires_at FROM store WHERE (prefix, key) <= (%s, %s) "
    "ORDER BY prefix DESC, key DESC LIMIT {limit:d}) AS c WHERE c.prefix = %s AND c.key >= %s"
)
_SELECT_ONE = "SELECT key, value::text, expires_at FROM agent_history_item_v1(%s, %s)"
_SELECT = (
    "SELECT i.key, i.value::text, i.expires_at FROM unnest(%s::text[]) AS k(key), "
    "LATERAL agent_history_item_v1(%s, k.key) AS i"
)
# The conversations among the given prefixes (those with a head): a plain SELECT, so a
# listing works on a read-only standby too (LangGraph's own reads run an UPDATE).
HEADS_SQL = (
    "SELECT k.prefix FROM unnest(%s::text[]) AS k(prefix), "
    "LATERAL agent_history_item_v1(k.prefix, 'head') AS i"
)
# Up to %(size)s distinct prefixes strictly between %(low)s and %(high)s in byte order, one
# seek each on LangGraph's `prefix text_pattern_ops` index (its operators compare bytes,
# as the bounds are meant; the primary key's collation may interleave other prefixes).
NEXT_PREFIXES_SQL = """
WITH RECURSIVE walk(prefix, n) AS (
    SELECT (SELECT s.prefix FROM store s WHERE s.prefix ~>~ %(low)s AND s.prefix ~<~ %(high)s
            ORDER BY s.prefix USING ~<~ LIMIT 1), 1
    UNION ALL
    SELECT (SELECT s.prefix FROM store s WHERE s.prefix ~>~ w.prefix AND s.prefix ~<~ %(high)s
            ORDER BY s.prefix USING ~<~ LIMIT 1), w.n + 1
    FROM walk w WHERE w.prefix IS NOT NULL AND w.n < %(size)s
)
SELECT prefix FROM walk WHERE prefix IS NOT NULL ORDER BY n
"""
# Chunk keys are zero-padded: this range holds exactly the chunk items.
_CHUNK_LOW, _CHUNK_HIGH = "chunk:0000000000", "chunk:9999999999"


def migration_statements(current: int | None) -> list[tuple[int, str]]:
    """The migrations to apply after version ``current`` (None: none applied yet)."""
    start = -1 if current is None else current
    return [(v, sql) for v, sql in enumerate(MIGRATIONS) if v > start]


# Up to this many keys are looked up with one `agent_history_item_v1` each, joined by
# UNION ALL; more go through ``unnest`` of an array. The array's length is unknown to a
# generic plan, which can then look dearer than a custom one and not be kept (the query
# was planned again on every call, 0.15 ms, in a measurement), so the common few-key
# reads (head, summary, id entries) avoid the array.
_UNION_KEYS = 8


@functools.lru_cache(maxsize=64)
def _select_sql(keys: int, newest: int) -> str:
    text = " UNION ALL ".join([_SELECT_ONE] * keys) if 0 < keys <= _UNION_KEYS else _SELECT
    return text + _NEWEST.format(limit=newest) if newest > 0 else text


def select(prefix: str, request: Get) -> tuple[str, tuple[Any, ...]]:
    """One query for a `Get`: the keys, and the newest chunks when hinted."""
    newest = max(0, int(request.newest_chunks))
    tail = (prefix, _CHUNK_HIGH, prefix, _CHUNK_LOW) if newest else ()
    keys = request.keys
    if 0 < len(keys) <= _UNION_KEYS:
        pairs = [value for key in keys for value in (prefix, key)]
        return _select_sql(len(keys), newest), (*pairs, *tail)
    return _select_sql(_UNION_KEYS + 1, newest), (list(keys), prefix, *tail)


def lock_timeout_ms(left: float | None) -> int:
    """The server-side lock wait for ``left`` seconds of budget: a little less, so the
    server gives up first and the connection stays usable (0: no limit)."""
    if left is None:
        return 0
    return max(1, int(left * 900))


def append_params(
    prefix: str, request: AppendRequest, ttl: TtlPolicy, lock_ms: int
) -> tuple[Any, ...]:
    """The arguments of ``agent_history_append_v4`` for ``request``.

    Records are built by the codec here (``PendingTurn.record``, with their time); the
    function sets their ``seq``.
    """
    pending = request.pending
    records = [t.record(0, request.now, request.value_field) for t in pending]
    ids = [t.id for t in pending]
    anchor = request.anchor_id
    return (
        prefix,
        orjson.dumps(records).decode(),
        text_array(ids),
        text_array([None if i is None else msgid_key(i) for i in ids]),
        anchor,
        None if anchor is None else msgid_key(anchor),
        request.anchor_next,
        text_array(request.anchor_seen),
        orjson.dumps(new_head(request.chunk_size, request.now)).decode(),
        request.now,
        ttl.minutes,
        lock_ms,
    )


def text_array(values: Sequence[str | None]) -> str:
    """The ``text[]`` literal of ``values``: every element quoted, with its backslashes and
    double quotes escaped, which is all the server's array syntax asks of a quoted
    element (None is NULL).

    The append's arrays go as text: psycopg adapts a list by looking for its element type
    on every call, which cost more than the rest of the append's arguments together
    (20 µs against 3 µs in a measurement).
    """
    parts = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    return "{" + ",".join(parts) + "}"


def append_result(row: Sequence[Any], skipped: int) -> AppendResult:
    """The function's row as an `AppendResult`."""
    appended, duplicates, first_seq, last_seq, total = row
    if not appended:
        first_seq = last_seq = None
    return AppendResult(int(appended), int(duplicates), skipped, first_seq, last_seq, int(total))


def put_params(
    prefix: str, items: Mapping[str, dict[str, Any] | None], ttl: TtlPolicy
) -> tuple[Any, ...]:
    """The arguments of ``agent_history_put_v1`` for buffered writes."""
    keys = [k for k, v in items.items() if v is not None]
    values = [orjson.dumps(v).decode() for v in items.values() if v is not None]
    deletes = [k for k, v in items.items() if v is None]
    return prefix, keys, values, deletes, ttl.minutes


def shut_socket(fileno: int) -> None:
    """Shut a connection's socket down from any thread: whoever waits on it wakes with
    an error at once (the connection becomes unusable and is dropped by its pool)."""
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
