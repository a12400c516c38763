"""The optional on-disk history of requests (``ui.history: path.sqlite``): it survives a restart.

Python's own sqlite3, one connection used by one worker thread only: rows are written in batches
off the event loop (:meth:`History.write`, once a second at most, from the hub), and the
retention limits (rows, age) are applied as they are written.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from .activity import COLUMNS, FILTERS, Record

_TYPES = {"time": "REAL", "stream": "INTEGER", "mtp": "INTEGER", "retries": "INTEGER"}
_CREATE = ("CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, "
           + ", ".join(f'"{c}" {_TYPES.get(c, "")}'.rstrip() for c in COLUMNS) + ")")
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM requests"


class History:
    """Called from one thread at a time (the hub's single worker); never from the event loop."""

    def __init__(self, path: str, max_rows: int, max_age: float) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_age = max_age
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_CREATE)
            db.execute("CREATE INDEX IF NOT EXISTS requests_time ON requests(time)")
        except BaseException:  # not an SQLite file, or not writable: nothing left open
            db.close()
            raise
        self._db = db
        self.trim()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "History.open() first"
        return self._db

    def write(self, records: list[Record]) -> None:
        db = self.db
        with db:
            db.execute("BEGIN")
            db.executemany(_INSERT, records)
        self.trim()

    def trim(self) -> None:
        """Apply the retention limits: rows older than max_age, then all but the newest max_rows."""
        db = self.db
        db.execute("DELETE FROM requests WHERE time < ?", (time.time() - self.max_age,))
        db.execute("DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?", (self.max_rows,))

    def latest(self, n: int) -> list[Record]:
        """The newest ``n`` rows, oldest first (to fill the ring at start)."""
        rows = self.db.execute(f"{_SELECT} ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        return [_record(r) for r in reversed(rows)]

    def query(self, wanted: Mapping[str, str], limit: int) -> list[Record]:
        """The newest ``limit`` rows that pass the filters (activity.filters), oldest first."""
        where = " AND ".join(f"CAST({k} AS TEXT) = ?" for k in wanted if k in FILTERS)
        sql = f"{_SELECT}{' WHERE ' + where if where else ''} ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(sql, (*wanted.values(), limit)).fetchall()
        return [_record(r) for r in reversed(rows)]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def _record(row: tuple) -> Record:
    out = list(row)
    for i in (COLUMNS.index("stream"), COLUMNS.index("mtp")):
        out[i] = bool(out[i])
    return tuple(out)
