"""Job records in SQLite, so a restart loses nothing: finished items stay reported, queued ones still run, and
the item that was running when the process died runs again from the start (its record says so).

A job's state follows from its items: `queued` (nothing started), `running` (something started, something left),
then `cancelled` (cancel was asked), `failed` (every item failed) or `done` (each item done or failed: one
failing item does not stop the others, and its own record carries the error).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
RESTART_NOTE = "the server stopped while this item was running; it was run again from the start"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    image TEXT,
    audio TEXT,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    video TEXT,
    seed INTEGER,
    frames INTEGER,
    runs INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    started REAL,
    finished REAL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items(state);
"""


@dataclass(frozen=True)
class ItemRecord:
    job_id: str
    index: int
    name: str
    image: str | None  # stored input file (or an allowed server path)
    audio: str | None
    options: dict[str, Any]
    state: str
    error: dict[str, Any] | None
    video: str | None
    seed: int | None
    frames: int | None
    runs: int
    note: str | None
    started: float | None
    finished: float | None


@dataclass(frozen=True)
class JobRecord:
    id: str
    created: float
    cancel_requested: bool
    options: dict[str, Any]
    items: tuple[ItemRecord, ...]

    @property
    def state(self) -> str:
        states = [item.state for item in self.items]
        if RUNNING in states or (QUEUED in states and len(set(states)) > 1):
            return RUNNING
        if QUEUED in states:
            return QUEUED
        if self.cancel_requested or all(s == CANCELLED for s in states):
            return CANCELLED
        return FAILED if all(s == FAILED for s in states) else DONE

    @property
    def finished(self) -> float | None:
        if any(item.state not in FINISHED for item in self.items):
            return None
        return max((item.finished or self.created for item in self.items), default=self.created)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for item in self.items:
            counts[item.state] += 1
        return counts


class JobStore:
    """One SQLite file; safe to use from the request threads and the worker at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")  # durable across a killed process; readers never block
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ----------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, options: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """items: dicts with name, image, audio, options (the item's effective options)."""
        with self._transaction() as db:
            db.execute("INSERT INTO jobs (id, created, options) VALUES (?, ?, ?)",
                       (job_id, time.time(), json.dumps(options)))
            db.executemany(
                "INSERT INTO items (job_id, idx, name, image, audio, options, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(job_id, i, item["name"], item["image"], item["audio"], json.dumps(item["options"]), QUEUED)
                 for i, item in enumerate(items)])

    def recover(self) -> list[ItemRecord]:
        """After a restart: items left `running` by a dead process go back to the queue, marked as re-runs (or
        to `cancelled` when their job was being cancelled). Returns the re-queued items."""
        with self._transaction() as db:
            db.execute("UPDATE items SET state = ?, finished = ?, error = ? WHERE state IN (?, ?) AND job_id IN "
                       "(SELECT id FROM jobs WHERE cancel_requested = 1)",
                       (CANCELLED, time.time(), json.dumps({"code": "cancelled", "message": "cancelled"}),
                        RUNNING, QUEUED))
            rows = db.execute("SELECT * FROM items WHERE state = ?", (RUNNING,)).fetchall()
            db.execute("UPDATE items SET state = ?, note = ?, started = NULL WHERE state = ?",
                       (QUEUED, RESTART_NOTE, RUNNING))
        return [_item(row) for row in rows]

    def next_queued(self) -> ItemRecord | None:
        """The oldest job's first queued item."""
        with self._lock:
            row = self._db.execute(
                "SELECT items.* FROM items JOIN jobs ON jobs.id = items.job_id WHERE items.state = ? "
                "AND jobs.cancel_requested = 0 ORDER BY jobs.created, jobs.rowid, items.idx LIMIT 1",
                (QUEUED,)).fetchone()
        return _item(row) if row is not None else None

    def start_item(self, job_id: str, index: int) -> bool:
        """queued -> running (one more run). False when it is no longer queued (cancelled meanwhile)."""
        with self._transaction() as db:
            return db.execute("UPDATE items SET state = ?, runs = runs + 1, started = ? WHERE job_id = ? AND "
                              "idx = ? AND state = ?", (RUNNING, time.time(), job_id, index, QUEUED)).rowcount == 1

    def finish_item(self, job_id: str, index: int, state: str, *, video: str | None = None, seed: int | None = None,
                    frames: int | None = None, error: dict[str, Any] | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE items SET state = ?, video = ?, seed = ?, frames = ?, error = ?, finished = ? "
                       "WHERE job_id = ? AND idx = ?",
                       (state, video, seed, frames, json.dumps(error) if error else None, time.time(), job_id, index))

    def requeue_item(self, job_id: str, index: int, note: str) -> None:
        """A run stopped by the server shutting down: it runs again from the start next time."""
        with self._transaction() as db:
            db.execute("UPDATE items SET state = ?, note = ?, started = NULL WHERE job_id = ? AND idx = ?",
                       (QUEUED, note, job_id, index))

    def cancel_job(self, job_id: str) -> bool:
        """Ask to cancel: queued items are cancelled now, the running one at its next batch of frames.
        False when nothing was left to cancel."""
        with self._transaction() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            pending = db.execute("SELECT COUNT(*) FROM items WHERE job_id = ? AND state IN (?, ?)",
                                 (job_id, QUEUED, RUNNING)).fetchone()[0]
            if row[0] or not pending:
                return False
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            db.execute("UPDATE items SET state = ?, error = ?, finished = ? WHERE job_id = ? AND state = ?",
                       (CANCELLED, json.dumps({"code": "cancelled", "message": "cancelled before it started"}),
                        time.time(), job_id, QUEUED))
            return True

    # -- reading ----------------------------------------------------------------------------------------------
    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            items = self._db.execute("SELECT * FROM items WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return _job(row, items)

    def jobs(self, limit: int) -> list[JobRecord]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?",
                                    (limit,)).fetchall()
            items = {row["id"]: self._db.execute("SELECT * FROM items WHERE job_id = ? ORDER BY idx",
                                                 (row["id"],)).fetchall() for row in rows}
        return [_job(row, items[row["id"]]) for row in rows]


def _item(row: sqlite3.Row) -> ItemRecord:
    return ItemRecord(job_id=row["job_id"], index=row["idx"], name=row["name"], image=row["image"],
                      audio=row["audio"], options=json.loads(row["options"]), state=row["state"],
                      error=json.loads(row["error"]) if row["error"] else None, video=row["video"], seed=row["seed"],
                      frames=row["frames"], runs=row["runs"], note=row["note"], started=row["started"],
                      finished=row["finished"])


def _job(row: sqlite3.Row, items: list[sqlite3.Row]) -> JobRecord:
    return JobRecord(id=row["id"], created=row["created"], cancel_requested=bool(row["cancel_requested"]),
                     options=json.loads(row["options"]), items=tuple(_item(r) for r in items))
