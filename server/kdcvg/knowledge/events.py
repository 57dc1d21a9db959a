"""Durable retrieval and feedback events (SQLite, WAL). The retrieval policy of a later issue trains on them."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retrievals (
  retrieval_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  query TEXT NOT NULL,
  entry_ids TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
  event_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  retrieval_id TEXT NOT NULL,
  entry_id TEXT NOT NULL,
  reward REAL NOT NULL,
  note TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_tenant ON feedback(tenant, created_ms);
"""


@dataclass(frozen=True)
class FeedbackEvent:
    event_id: str
    tenant: str
    retrieval_id: str
    entry_id: str
    reward: float
    note: str
    created_ms: int


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


class EventLog:
    """Thread-safe. Feedback is fsynced before `add_feedback` returns (synchronous=FULL). Retrievals sit on
    the Search hot path, so they are committed to the WAL without an fsync (synchronous=NORMAL): they
    survive a killed process, and only a power loss can drop the last few."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path, "FULL")
        self._db.executescript(_SCHEMA)
        self._fast = _connect(path, "NORMAL")
        self._lock = threading.Lock()
        self._fast_lock = threading.Lock()

    def add_retrieval(self, tenant: str, query: dict, entry_ids: list[str]) -> str:
        retrieval_id = uuid.uuid4().hex
        with self._fast_lock:
            self._fast.execute(
                "INSERT INTO retrievals VALUES (?, ?, ?, ?, ?)",
                (retrieval_id, tenant, json.dumps(query), json.dumps(entry_ids), int(time.time() * 1000)),
            )
        return retrieval_id

    def retrieval_entries(self, tenant: str, retrieval_id: str) -> list[str] | None:
        with self._fast_lock:
            row = self._fast.execute(
                "SELECT entry_ids FROM retrievals WHERE retrieval_id = ? AND tenant = ?",
                (retrieval_id, tenant),
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def add_feedback(self, tenant: str, retrieval_id: str, entry_id: str, reward: float, note: str) -> FeedbackEvent:
        event = FeedbackEvent(uuid.uuid4().hex, tenant, retrieval_id, entry_id, reward, note, int(time.time() * 1000))
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, tenant, retrieval_id, entry_id, reward, note, event.created_ms),
            )
        return event

    def feedback(self, tenant: str) -> list[FeedbackEvent]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM feedback WHERE tenant = ? ORDER BY created_ms", (tenant,)).fetchall()
        return [FeedbackEvent(*row) for row in rows]

    def close(self) -> None:
        with self._lock, self._fast_lock:
            self._db.close()
            self._fast.close()
