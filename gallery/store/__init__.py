"""The store: every SQL statement of the project, over one SQLite file in the instance folder.

SQLite is the single source of truth (files are written before their rows, and a row exists only
for a complete file). WAL mode lets the site read while a worker writes; a busy timeout rides
out short write locks. The schema has a version and one-step migrations (``schema``).
The statements are grouped by concern: jobs, images, curation (stars, ratings, the trash),
embeddings, sessions.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from ..errors import DatabaseBusy, SchemaTooNew
from .collections import Collection, CollectionsMixin, KeepRow
from .curation import CurationMixin
from .embeddings import EmbeddingsMixin
from .images import ImagesMixin
from .jobs import JobsMixin, now, worker_id
from .rows import JOB_KINDS, JOB_STATUSES, Embedding, Filters, ImageRow, Job, NewImage
from .schema import SCHEMA_VERSION, target_after, upgrade
from .sessions import SessionsMixin

# SQLite gives up on a write lock with SQLITE_BUSY after the busy timeout, and on the WAL's read
# marks with SQLITE_PROTOCOL after about ten seconds of losing the race for them. A lost race is
# run again, a few times, where that is safe: a statement outside a transaction (it did nothing) and
# a whole migration step (it re-checks the version). Then the user gets DatabaseBusy, nothing changed.
LOCK_ATTEMPTS = 3


def _code(error: BaseException | None) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF  # the primary code under an extended one


def _lost_race(error: BaseException | None) -> bool:
    return _code(error) == sqlite3.SQLITE_PROTOCOL


class _Connection(sqlite3.Connection):
    """A connection that runs a statement again after a lost lock race, and names a lock it cannot get."""

    path: Path

    def execute(self, sql, parameters=()):
        attempt = 1
        while True:
            again = not self.in_transaction  # inside one, the statement may have changed something
            try:
                return super().execute(sql, parameters)
            except sqlite3.OperationalError as e:
                if _code(e) not in (sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_BUSY):
                    raise
                if not (again and _lost_race(e)) or attempt == LOCK_ATTEMPTS:
                    raise DatabaseBusy(f"{self.path} stayed locked by another process ({e}); nothing was "
                                       "changed, try again") from e
            time.sleep(0.05 * attempt)
            attempt += 1


__all__ = ["Store", "Collection", "KeepRow", "Job", "ImageRow", "NewImage", "Embedding", "Filters", "JOB_KINDS", "JOB_STATUSES",
           "SCHEMA_VERSION", "now", "worker_id"]


class Store(JobsMixin, ImagesMixin, CurationMixin, CollectionsMixin, EmbeddingsMixin, SessionsMixin):
    """Named operations over the gallery database."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False,
                               factory=_Connection)
        conn.path = self.path
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self._stats_cache: dict = {}  # embedding_stats by model, valid while the embeddings counter stands
        try:
            self.migrate()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite leaves some failed commits open, rolls back others
                self.conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        """The schema version this file is at."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION, one step per transaction."""
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema {version}, newer than this clip-curator "
                               f"({SCHEMA_VERSION}): upgrade clip-curator")
        db = sqlite_utils.Database(self.conn)
        attempt = 1
        while version < SCHEMA_VERSION:
            try:
                with self.transaction():
                    if self.schema_version == version:  # else another process migrated meanwhile
                        upgrade(db, version)
                        self.conn.execute(f"PRAGMA user_version = {target_after(version)}")
            except DatabaseBusy as e:  # the step was rolled back whole
                if not _lost_race(e.__cause__) or attempt == LOCK_ATTEMPTS:
                    raise
                attempt += 1
            version = self.schema_version

    def _rows(self, sql: str, args=()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def _row(self, sql: str, args=()) -> sqlite3.Row | None:
        return self.conn.execute(sql, args).fetchone()
