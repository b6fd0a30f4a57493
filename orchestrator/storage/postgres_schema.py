"""The PostgreSQL store's versioned schema migrations.

Each migration runs once, in order, inside the transaction that records it in
``schema_migrations``; :meth:`PostgresStore.open` takes a transaction-scoped advisory
lock first, so hosts starting at once apply each migration exactly once. Never edit a
released migration: append a new one (``CREATE OR REPLACE FUNCTION`` for a change to
``agentvm_apply``).

The tables mirror the SQLite store's (``double precision`` for times, ``text`` for
JSON, ``bigint`` ids). History paths are ``COLLATE "C"`` because subtree ranges
(``path >= 'a/' AND path < 'a0'``) rely on byte order, whatever the database's locale.

``agentvm_apply(batch jsonb) -> int[]`` applies one group commit in one round trip:
``batch`` is a list of submissions ``{"f": [[actor_id, token], ...], "o": [op, ...]}``
in submission order. A submission whose fenced actor's lease token differs (or whose
lease is gone) is skipped; the function returns the indexes of those submissions.
The lease rows are locked ``FOR SHARE``, so a takeover waits for this commit.
"""

from __future__ import annotations

# Any fixed number: the advisory lock that serialises migrations across hosts.
MIGRATION_LOCK = 0x6167_656E_7476_6D01

_V1_TABLES = """
CREATE TABLE meta (
    k text PRIMARY KEY,
    v text NOT NULL
);
CREATE TABLE actors (
    actor_id        text PRIMARY KEY,
    name            text NOT NULL,
    key             text NOT NULL,
    state           text NOT NULL,
    input           text NOT NULL,
    created_at      double precision NOT NULL,
    sleeping        boolean NOT NULL DEFAULT false,
    alarm_at        double precision,
    workflow_status text,
    workflow_output text,
    workflow_error  text,
    UNIQUE (name, key)
);
CREATE INDEX actors_recover ON actors (sleeping, alarm_at);
CREATE TABLE workflow_history (
    actor_id    text NOT NULL,
    path        text COLLATE "C" NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    started_at  double precision,
    finished_at double precision,
    output      text,
    error       text,
    meta        text,
    seq         bigint NOT NULL,
    PRIMARY KEY (actor_id, path)
);
CREATE TABLE queue_messages (
    message_id bigint PRIMARY KEY,
    actor_id   text NOT NULL,
    queue      text NOT NULL,
    body       text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX queue_messages_actor ON queue_messages (actor_id, message_id);
CREATE TABLE schedules (
    schedule_id bigint PRIMARY KEY,
    actor_id    text NOT NULL,
    fire_at     double precision NOT NULL,
    action      text NOT NULL,
    args        text NOT NULL,
    created_at  double precision NOT NULL
);
CREATE INDEX schedules_actor ON schedules (actor_id);
CREATE TABLE runs (
    run_id      bigint PRIMARY KEY,
    actor_id    text NOT NULL,
    queue       text NOT NULL,
    status      text NOT NULL,
    input       text NOT NULL,
    created_at  double precision NOT NULL,
    started_at  double precision,
    finished_at double precision,
    result      text,
    error       text,
    meta        text NOT NULL DEFAULT '{}',
    history_pruned boolean NOT NULL DEFAULT false
);
CREATE INDEX runs_actor ON runs (actor_id, run_id);
CREATE INDEX runs_status ON runs (status, run_id);
CREATE TABLE actor_logs (
    actor_id   text NOT NULL,
    stream     text NOT NULL,
    seq        bigint NOT NULL,
    payload    text NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (actor_id, stream, seq)
);
-- Id blocks (hi-lo): each nextval reserves 1000 ids for one host.
CREATE SEQUENCE message_ids INCREMENT BY 1000 MINVALUE 1 START 1;
CREATE SEQUENCE schedule_ids INCREMENT BY 1000 MINVALUE 1 START 1;
CREATE SEQUENCE history_seqs INCREMENT BY 1000 MINVALUE 1 START 1;

-- The cluster: hosts heartbeat; each actor is owned through a lease with a fencing token.
CREATE TABLE hosts (
    host_id      text PRIMARY KEY,
    url          text NOT NULL,
    engine_id    text NOT NULL DEFAULT '',
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    load         text NOT NULL DEFAULT '{}',
    stopped      boolean NOT NULL DEFAULT false
);
CREATE TABLE leases (
    actor_id   text PRIMARY KEY,
    host_id    text NOT NULL,
    token      bigint NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX leases_host ON leases (host_id);
CREATE SEQUENCE lease_tokens;
"""

_V1_APPLY = r"""
CREATE OR REPLACE FUNCTION agentvm_delete_tree(aid text, p text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM workflow_history
    WHERE actor_id = aid AND (path = p OR (path >= p || '/' AND path < p || '0'));
$$;

CREATE OR REPLACE FUNCTION agentvm_apply(batch jsonb) RETURNS int[]
LANGUAGE plpgsql AS $$
DECLARE
    sub jsonb;
    op jsonb;
    code text;
    idx int := -1;
    lost int[] := '{}';
    fenced jsonb;
    ok boolean;
    aid text;
    rid bigint;
BEGIN
    FOR sub IN SELECT value FROM jsonb_array_elements(batch) LOOP
        idx := idx + 1;
        fenced := sub->'f';
        IF fenced IS NOT NULL AND jsonb_array_length(fenced) > 0 THEN
            -- Every fenced actor this submission touches must still be ours.
            PERFORM 1 FROM leases
              WHERE actor_id IN (SELECT value->>0 FROM jsonb_array_elements(fenced))
              FOR SHARE;
            SELECT bool_and(l.token IS NOT NULL AND l.token = (f.value->>1)::bigint)
              INTO ok
              FROM jsonb_array_elements(fenced) AS f
              LEFT JOIN leases l ON l.actor_id = f.value->>0;
            IF NOT ok THEN
                lost := lost || idx;
                CONTINUE;
            END IF;
        END IF;
        FOR op IN SELECT value FROM jsonb_array_elements(sub->'o') LOOP
            code := op->>0;
            IF code = 'put_history' THEN
                INSERT INTO workflow_history (actor_id, path, kind, status, attempts,
                    started_at, finished_at, output, error, meta, seq)
                VALUES (op->>1, op->>2, op->>3, op->>4, (op->>5)::int,
                    (op->>6)::double precision, (op->>7)::double precision,
                    op->>8, op->>9, op->>10, (op->>11)::bigint)
                ON CONFLICT (actor_id, path) DO UPDATE SET kind = excluded.kind,
                    status = excluded.status, attempts = excluded.attempts,
                    started_at = excluded.started_at, finished_at = excluded.finished_at,
                    output = excluded.output, error = excluded.error, meta = excluded.meta,
                    seq = excluded.seq;
            ELSIF code = 'set_state' THEN
                UPDATE actors SET state = op->>2 WHERE actor_id = op->>1;
            ELSIF code = 'put_message' THEN
                INSERT INTO queue_messages (message_id, actor_id, queue, body, created_at)
                VALUES ((op->>1)::bigint, op->>2, op->>3, op->>4, (op->>5)::double precision);
            ELSIF code = 'delete_message' THEN
                DELETE FROM queue_messages WHERE message_id = (op->>1)::bigint;
            ELSIF code = 'delete_history_tree' THEN
                PERFORM agentvm_delete_tree(op->>1, op->>2);
            ELSIF code = 'put_run' THEN
                INSERT INTO runs (run_id, actor_id, queue, status, input, created_at,
                    started_at, finished_at, result, error, meta)
                VALUES ((op->>1)::bigint, op->>2, op->>3, op->>4, op->>5,
                    (op->>6)::double precision, (op->>7)::double precision,
                    (op->>8)::double precision, op->>9, op->>10, op->>11)
                ON CONFLICT (run_id) DO UPDATE SET actor_id = excluded.actor_id,
                    queue = excluded.queue, status = excluded.status, input = excluded.input,
                    created_at = excluded.created_at, started_at = excluded.started_at,
                    finished_at = excluded.finished_at, result = excluded.result,
                    error = excluded.error, meta = excluded.meta,
                    history_pruned = false;
            ELSIF code = 'prune_run_history' THEN
                aid := op->>1;
                FOR rid IN
                    SELECT s.run_id FROM (
                        SELECT run_id, history_pruned FROM runs WHERE actor_id = aid
                        AND status IN ('completed', 'failed', 'cancelled')
                        ORDER BY run_id DESC OFFSET (op->>2)::bigint) s
                    WHERE NOT s.history_pruned
                LOOP
                    PERFORM agentvm_delete_tree(aid, '~run/' || rid);
                    UPDATE runs SET history_pruned = true WHERE run_id = rid;
                END LOOP;
            ELSIF code = 'set_sleep' THEN
                UPDATE actors SET sleeping = (op->>2)::boolean,
                    alarm_at = (op->>3)::double precision WHERE actor_id = op->>1;
            ELSIF code = 'set_workflow' THEN
                UPDATE actors SET workflow_status = op->>2, workflow_output = op->>3,
                    workflow_error = op->>4 WHERE actor_id = op->>1;
            ELSIF code = 'put_actor' THEN
                INSERT INTO actors (actor_id, name, key, state, input, created_at, sleeping,
                    alarm_at, workflow_status, workflow_output, workflow_error)
                VALUES (op->>1, op->>2, op->>3, op->>4, op->>5, (op->>6)::double precision,
                    (op->>7)::boolean, (op->>8)::double precision, op->>9, op->>10, op->>11);
            ELSIF code = 'put_schedule' THEN
                INSERT INTO schedules (schedule_id, actor_id, fire_at, action, args, created_at)
                VALUES ((op->>1)::bigint, op->>2, (op->>3)::double precision, op->>4, op->>5,
                    (op->>6)::double precision);
            ELSIF code = 'delete_schedule' THEN
                DELETE FROM schedules WHERE schedule_id = (op->>1)::bigint;
            ELSIF code = 'replace_log' THEN
                DELETE FROM actor_logs WHERE actor_id = op->>1 AND stream = op->>2;
                INSERT INTO actor_logs (actor_id, stream, seq, payload, created_at)
                VALUES (op->>1, op->>2, (op->>3)::bigint, op->>4, (op->>5)::double precision);
            ELSIF code = 'append_log' THEN
                INSERT INTO actor_logs (actor_id, stream, seq, payload, created_at)
                VALUES (op->>1, op->>2, (op->>3)::bigint, op->>4, (op->>5)::double precision);
            ELSIF code = 'set_meta' THEN
                INSERT INTO meta (k, v) VALUES (op->>1, op->>2)
                ON CONFLICT (k) DO UPDATE SET v = excluded.v;
            ELSIF code = 'clear_history' THEN
                DELETE FROM workflow_history WHERE actor_id = op->>1;
            ELSIF code = 'delete_actor' THEN
                aid := op->>1;
                DELETE FROM workflow_history WHERE actor_id = aid;
                DELETE FROM queue_messages WHERE actor_id = aid;
                DELETE FROM schedules WHERE actor_id = aid;
                DELETE FROM actor_logs WHERE actor_id = aid;
                DELETE FROM runs WHERE actor_id = aid;
                DELETE FROM actors WHERE actor_id = aid;
            ELSE
                RAISE EXCEPTION 'unknown store operation %', code USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END LOOP;
    RETURN lost;
END;
$$;
"""

# (version, SQL). Append only.
MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1_TABLES + _V1_APPLY),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
