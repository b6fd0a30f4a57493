"""SQLite's schema, row mappers and the one place that writes rows (:func:`_apply`).

The connection, thread and group-commit machinery that drives them is in
:mod:`orchestrator.storage.sqlite`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, TypeAlias

from . import base
from .base import (
    ActorRecord,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    Op,
    RunRecord,
    ScheduleRecord,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actors (
    actor_id        TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    key             TEXT NOT NULL,
    state           TEXT NOT NULL,
    input           TEXT NOT NULL,
    created_at      REAL NOT NULL,
    sleeping        INTEGER NOT NULL DEFAULT 0,
    alarm_at        REAL,
    workflow_status TEXT,
    workflow_output TEXT,
    workflow_error  TEXT,
    UNIQUE (name, key)
);
CREATE INDEX IF NOT EXISTS actors_recover ON actors (sleeping, alarm_at);
CREATE TABLE IF NOT EXISTS workflow_history (
    actor_id    TEXT NOT NULL,
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  REAL,
    finished_at REAL,
    output      TEXT,
    error       TEXT,
    meta        TEXT,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (actor_id, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_messages (
    message_id INTEGER PRIMARY KEY,
    actor_id   TEXT NOT NULL,
    queue      TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_messages_actor ON queue_messages (actor_id, message_id);
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id INTEGER PRIMARY KEY,
    actor_id    TEXT NOT NULL,
    fire_at     REAL NOT NULL,
    action      TEXT NOT NULL,
    args        TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_actor ON schedules (actor_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id      INTEGER PRIMARY KEY,
    actor_id    TEXT NOT NULL,
    queue       TEXT NOT NULL,
    status      TEXT NOT NULL,
    input       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    result      TEXT,
    error       TEXT,
    meta        TEXT NOT NULL DEFAULT '{}',
    history_pruned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_actor ON runs (actor_id, run_id);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, run_id);
CREATE TABLE IF NOT EXISTS actor_logs (
    actor_id   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    payload    TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (actor_id, stream, seq)
) WITHOUT ROWID;
"""

_ACTOR_COLS = (
    "actor_id, name, key, state, input, created_at, sleeping, alarm_at, "
    "workflow_status, workflow_output, workflow_error"
)
_HISTORY_COLS = "path, kind, status, attempts, started_at, finished_at, output, error, meta, seq"
_RUN_COLS = (
    "r.run_id, r.actor_id, r.queue, r.status, r.input, r.created_at, r.started_at, "
    "r.finished_at, r.result, r.error, r.meta, a.name, a.key"
)
# History paths of runs sort in ["~run/", "~run0"): "/" + 1 == "0".
_NOT_RUN_PATH = "NOT (path >= '~run/' AND path < '~run0')"


# _apply writes through a connection or (the commit path: one per batch, not one per
# statement as Connection.execute makes) a cursor.
_Exec: TypeAlias = "sqlite3.Connection | sqlite3.Cursor"
# Operations _apply writes with one statement: alone in a commit, they need no
# BEGIN/COMMIT around them (SQLite's implicit transaction is as atomic).
_ONE_STATEMENT = frozenset(
    {
        base.PUT_HISTORY,
        base.SET_STATE,
        base.PUT_MESSAGE,
        base.DELETE_MESSAGE,
        base.DELETE_HISTORY_TREE,
        base.PUT_RUN,
        base.SET_SLEEP,
        base.SET_WORKFLOW,
        base.SET_META,
    }
)


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        actor_id=row[1],
        queue=row[2],
        status=row[3],
        input=row[4],
        created_at=row[5],
        started_at=row[6],
        finished_at=row[7],
        result=row[8],
        error=row[9],
        meta=row[10],
        name=row[11] or "",
        key=tuple(json.loads(row[12] or "[]")),
    )


def _delete_tree(conn: _Exec, actor_id: str, path: str) -> None:
    # The half-open range [path + "/", path + "0") is exactly the entries below ``path``.
    conn.execute(
        "DELETE FROM workflow_history WHERE actor_id = ? AND "
        "(path = ? OR (path >= ? AND path < ?))",
        (actor_id, path, path + "/", path + "0"),
    )


def _actor(row: tuple[Any, ...]) -> ActorRecord:
    return ActorRecord(
        actor_id=row[0],
        name=row[1],
        key=tuple(json.loads(row[2])),
        state=row[3],
        input=row[4],
        created_at=row[5],
        sleeping=bool(row[6]),
        alarm_at=row[7],
        workflow_status=row[8],
        workflow_output=row[9],
        workflow_error=row[10],
    )


def _history(row: tuple[Any, ...]) -> HistoryRecord:
    return HistoryRecord(*row)


def _message(row: tuple[Any, ...]) -> MessageRecord:
    return MessageRecord(*row)


def _apply(conn: _Exec, op: Op) -> None:
    """Translate one logical operation into SQL. The only place that writes rows."""
    code = op[0]
    if code == base.PUT_HISTORY:
        h: HistoryRecord = op[2]
        conn.execute(
            "INSERT OR REPLACE INTO workflow_history (actor_id, " + _HISTORY_COLS + ") "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                op[1],
                h.path,
                h.kind,
                h.status,
                h.attempts,
                h.started_at,
                h.finished_at,
                h.output,
                h.error,
                h.meta,
                h.seq,
            ),
        )
    elif code == base.SET_STATE:
        conn.execute("UPDATE actors SET state = ? WHERE actor_id = ?", (op[2], op[1]))
    elif code == base.PUT_MESSAGE:
        m: MessageRecord = op[1]
        conn.execute(
            "INSERT INTO queue_messages (message_id, actor_id, queue, body, created_at) "
            "VALUES (?,?,?,?,?)",
            (m.message_id, m.actor_id, m.queue, m.body, m.created_at),
        )
    elif code == base.DELETE_MESSAGE:
        conn.execute("DELETE FROM queue_messages WHERE message_id = ?", (op[1],))
    elif code == base.DELETE_HISTORY_TREE:
        _delete_tree(conn, op[1], op[2])
    elif code == base.PUT_RUN:
        r: RunRecord = op[1]
        conn.execute(
            "INSERT OR REPLACE INTO runs (run_id, actor_id, queue, status, input, created_at, "
            "started_at, finished_at, result, error, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.run_id,
                r.actor_id,
                r.queue,
                r.status,
                r.input,
                r.created_at,
                r.started_at,
                r.finished_at,
                r.result,
                r.error,
                r.meta,
            ),
        )
    elif code == base.PRUNE_RUN_HISTORY:
        # Finished runs beyond the newest ``keep`` lose their history (the run row stays).
        aid, keep = op[1], op[2]
        old = conn.execute(
            "SELECT run_id FROM (SELECT run_id, history_pruned FROM runs WHERE actor_id = ? "
            "AND status IN ('completed','failed','cancelled') ORDER BY run_id DESC "
            "LIMIT -1 OFFSET ?) WHERE history_pruned = 0",
            (aid, keep),
        ).fetchall()
        for (rid,) in old:
            _delete_tree(conn, aid, base.run_scope(rid))
            conn.execute("UPDATE runs SET history_pruned = 1 WHERE run_id = ?", (rid,))
    elif code == base.SET_SLEEP:
        conn.execute(
            "UPDATE actors SET sleeping = ?, alarm_at = ? WHERE actor_id = ?",
            (int(op[2]), op[3], op[1]),
        )
    elif code == base.SET_WORKFLOW:
        conn.execute(
            "UPDATE actors SET workflow_status = ?, workflow_output = ?, workflow_error = ? "
            "WHERE actor_id = ?",
            (op[2], op[3], op[4], op[1]),
        )
    elif code == base.PUT_ACTOR:
        a: ActorRecord = op[1]
        conn.execute(
            "INSERT INTO actors (" + _ACTOR_COLS + ") VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                a.actor_id,
                a.name,
                json.dumps(list(a.key), separators=(",", ":")),
                a.state,
                a.input,
                a.created_at,
                int(a.sleeping),
                a.alarm_at,
                a.workflow_status,
                a.workflow_output,
                a.workflow_error,
            ),
        )
    elif code == base.PUT_SCHEDULE:
        s: ScheduleRecord = op[1]
        conn.execute(
            "INSERT INTO schedules (schedule_id, actor_id, fire_at, action, args, created_at) "
            "VALUES (?,?,?,?,?,?)",
            (s.schedule_id, s.actor_id, s.fire_at, s.action, s.args, s.created_at),
        )
    elif code == base.DELETE_SCHEDULE:
        conn.execute("DELETE FROM schedules WHERE schedule_id = ?", (op[1],))
    elif code == base.REPLACE_LOG:
        one: LogRecord = op[1]
        conn.execute(
            "DELETE FROM actor_logs WHERE actor_id = ? AND stream = ?", (one.actor_id, one.stream)
        )
        conn.execute(
            "INSERT INTO actor_logs (actor_id, stream, seq, payload, created_at) "
            "VALUES (?,?,?,?,?)",
            (one.actor_id, one.stream, one.seq, one.payload, one.created_at),
        )
    elif code == base.APPEND_LOG:
        lg: LogRecord = op[1]
        conn.execute(
            "INSERT INTO actor_logs (actor_id, stream, seq, payload, created_at) "
            "VALUES (?,?,?,?,?)",
            (lg.actor_id, lg.stream, lg.seq, lg.payload, lg.created_at),
        )
    elif code == base.SET_META:
        conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (op[1], op[2]))
    elif code == base.CLEAR_HISTORY:
        conn.execute("DELETE FROM workflow_history WHERE actor_id = ?", (op[1],))
    elif code == base.DELETE_ACTOR:
        aid = op[1]
        conn.execute("DELETE FROM workflow_history WHERE actor_id = ?", (aid,))
        conn.execute("DELETE FROM queue_messages WHERE actor_id = ?", (aid,))
        conn.execute("DELETE FROM schedules WHERE actor_id = ?", (aid,))
        conn.execute("DELETE FROM actor_logs WHERE actor_id = ?", (aid,))
        conn.execute("DELETE FROM runs WHERE actor_id = ?", (aid,))
        conn.execute("DELETE FROM actors WHERE actor_id = ?", (aid,))
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown store operation {code!r}")


def _read_run_history(c: sqlite3.Connection, actor_id: str, run_id: int) -> list[HistoryRecord]:
    scope = base.run_scope(run_id)
    rows = c.execute(
        f"SELECT {_HISTORY_COLS} FROM workflow_history WHERE actor_id = ? "
        "AND path >= ? AND path < ? ORDER BY seq",
        (actor_id, scope + "/", scope + "0"),
    ).fetchall()
    return [_history(r) for r in rows]
