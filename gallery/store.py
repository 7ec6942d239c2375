"""The store: every SQL statement of the project, over one SQLite file in the instance folder.

SQLite is the single source of truth (files are written before their rows, and a row exists only
for a complete file). WAL mode lets the site read while a worker writes; a busy timeout rides
out short write locks. The schema has a version (``PRAGMA user_version``) and one-step migrations.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from generate.errors import ImageNotFound, JobNotFound

JOB_KINDS = ("generate", "upscale")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
# A running job whose worker has not been heard from for this long is taken to be dead.
STALE_AFTER_S = 120


def now() -> str:
    """UTC timestamp with microseconds, sortable as text."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def worker_id() -> str:
    """host:pid of this process, so a dead worker on this host is recognised at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(wid: str | None) -> bool:
    if not wid or ":" not in wid:
        return False
    host, pid = wid.rsplit(":", 1)
    if host != socket.gethostname():
        return True  # cannot tell; rely on the heartbeat
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


# --- migrations: each takes the schema from version i to i+1 -----------------------------------

def _m1_initial(db: sqlite_utils.Database) -> None:
    # Jobs hold the recipe as JSON (the per-image seed is the job's seed + index) plus kind-specific
    # params; images hold their own complete recipe so an image never depends on its job row.
    db.execute("""
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'queued',
            recipe TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            n INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            step INTEGER NOT NULL DEFAULT 0,
            steps INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL,
            started TEXT,
            finished TEXT,
            updated TEXT NOT NULL,
            error TEXT,
            worker TEXT,
            heartbeat REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )""")
    db.execute("CREATE INDEX jobs_status ON jobs(status, id)")
    db.execute("""
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id),
            idx INTEGER,
            kind TEXT NOT NULL DEFAULT 'generated',
            seed INTEGER,
            path TEXT NOT NULL UNIQUE,
            animation_path TEXT,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            recipe TEXT NOT NULL,
            model TEXT,
            clip_model TEXT,
            device TEXT,
            created TEXT NOT NULL,
            starred INTEGER NOT NULL DEFAULT 0,
            parent_id INTEGER REFERENCES images(id),
            embedding BLOB,
            embedding_model TEXT,
            sha256 TEXT,
            UNIQUE (job_id, idx)
        )""")
    db.execute("CREATE INDEX images_created ON images(created DESC, id DESC)")
    db.execute("CREATE INDEX images_starred ON images(starred, id)")
    db.execute("CREATE INDEX images_parent ON images(parent_id)")


def _m2_search(db: sqlite_utils.Database) -> None:
    # Search compares embeddings of one CLIP only, and the gallery may search with a CLIP other
    # than the one that guided an image: embeddings move to their own table keyed by model.
    db.execute("""
        CREATE TABLE embeddings (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (model, image_id)
        )""")
    db.execute("INSERT INTO embeddings (image_id, model, vector) SELECT id, embedding_model, embedding "
               "FROM images WHERE embedding IS NOT NULL AND embedding_model IS NOT NULL")
    db.execute("CREATE INDEX embeddings_image ON embeddings(image_id)")
    db.execute("ALTER TABLE images DROP COLUMN embedding")
    db.execute("ALTER TABLE images DROP COLUMN embedding_model")
    # Imported files are recognised by where they came from, their size and mtime.
    db.execute("ALTER TABLE images ADD COLUMN source_path TEXT")
    db.execute("ALTER TABLE images ADD COLUMN source_size INTEGER")
    db.execute("ALTER TABLE images ADD COLUMN source_mtime REAL")
    db.execute("CREATE INDEX images_source ON images(source_path)")
    db.execute("CREATE INDEX images_sha ON images(sha256)")
    db.execute("CREATE INDEX images_job ON images(job_id, idx)")
    # Prompt keyword filter: FTS5 over prompts, kept in step by triggers.
    db["images"].enable_fts(["prompt"], fts_version="FTS5", create_triggers=True, tokenize="porter")


def _m3_upscales(db: sqlite_utils.Database) -> None:
    # An upscale is a child row; which upscaler made it decides whether a request is a duplicate.
    db.execute("ALTER TABLE images ADD COLUMN upscaler TEXT")
    db.execute("CREATE UNIQUE INDEX images_upscale ON images(parent_id, upscaler) WHERE upscaler IS NOT NULL")


MIGRATIONS = [_m1_initial, _m2_search, _m3_upscales]


def fts_query(keyword: str) -> str:
    """Quote each word of a keyword filter so FTS5 syntax in user text is taken literally."""
    words = [w for w in keyword.replace('"', " ").split() if w]
    return " ".join(f'"{w}"' for w in words) or '""'


SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class Job:
    """A row of the jobs table."""

    id: int
    kind: str
    status: str
    recipe: str
    params: dict
    n: int
    seed: int
    done: int
    step: int
    steps: int
    created: str
    started: str | None
    finished: str | None
    updated: str
    error: str | None
    worker: str | None
    heartbeat: float | None
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        """Decode a sqlite row dict."""
        d = dict(row)
        d["params"] = json.loads(d["params"] or "{}")
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)


class Store:
    """Named operations over the gallery database."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self.migrate()

    @property
    def instance(self) -> Path:
        """The instance folder: the database lives at its top, beside images/ and the rest."""
        return self.path.parent

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
        self.conn.execute("COMMIT")

    # --- schema ----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version this file is at."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION, one step per transaction."""
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema {version}, newer than this clip-curator ({SCHEMA_VERSION})")
        for i in range(version, SCHEMA_VERSION):
            with self.transaction():
                if self.schema_version != i:  # another process migrated meanwhile
                    continue
                MIGRATIONS[i](self.db)
                self.conn.execute(f"PRAGMA user_version = {i + 1}")

    # --- jobs ------------------------------------------------------------------------------

    def create_job(self, kind: str, recipe_json: str, n: int, seed: int, params: dict | None = None,
                   steps: int = 0) -> int:
        """Queue a job and return its id."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        t = now()
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO jobs (kind, status, recipe, params, n, seed, steps, created, updated) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (kind, recipe_json, json.dumps(params or {}, sort_keys=True), n, seed, steps, t, t))
            return cur.lastrowid

    def get_job(self, job_id: int) -> Job:
        """A job by id, or JobNotFound."""
        row = self._row("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise JobNotFound(f"job {job_id} doesn't exist")
        return Job.from_row(row)

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        """Newest jobs first, optionally of one status."""
        sql, args = "SELECT * FROM jobs", []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [Job.from_row(r) for r in self._rows(sql, args)]

    def find_unfinished_job(self, kind: str, recipe_json: str, n: int, seed: int | None,
                            params: dict | None = None) -> Job | None:
        """The newest job with this recipe that has not finished (what a re-run resumes)."""
        sql = ("SELECT * FROM jobs WHERE kind = ? AND recipe = ? AND n = ? AND params = ? "
               "AND status IN ('queued', 'running', 'failed')")
        args = [kind, recipe_json, n, json.dumps(params or {}, sort_keys=True)]
        if seed is not None:
            sql += " AND seed = ?"
            args.append(seed)
        row = self._row(sql + " ORDER BY id DESC LIMIT 1", args)
        return Job.from_row(row) if row else None

    def _claimable(self, job: Job, me: str) -> bool:
        if job.status == "queued":
            return True
        if job.status == "failed":
            return True
        if job.status != "running":
            return False
        if job.worker == me:
            return True
        stale = job.heartbeat is None or time.time() - job.heartbeat > STALE_AFTER_S
        return stale or not _pid_alive(job.worker)

    def claim_job(self, job_id: int, me: str | None = None) -> bool:
        """Mark a job running for this worker if nobody alive holds it; True when claimed."""
        me = me or worker_id()
        with self.transaction():
            job = self.get_job(job_id)
            if not self._claimable(job, me):
                return False
            t = now()
            self.conn.execute(
                "UPDATE jobs SET status = 'running', worker = ?, heartbeat = ?, error = NULL, "
                "started = COALESCE(started, ?), updated = ?, finished = NULL WHERE id = ?",
                (me, time.time(), t, t, job_id))
            return True

    def claim_next_job(self, me: str | None = None, kinds=JOB_KINDS) -> Job | None:
        """Claim the oldest queued job, or a running one whose worker died; None when idle."""
        me = me or worker_id()
        marks = ",".join("?" * len(kinds))
        rows = self.conn.execute(
            f"SELECT id FROM jobs WHERE status IN ('queued', 'running') AND kind IN ({marks}) "
            "AND cancel_requested = 0 ORDER BY status = 'running' DESC, id", list(kinds)).fetchall()
        for (job_id,) in rows:
            job = self.get_job(job_id)
            if job.status == "running" and not self._claimable(job, me):
                continue
            if self.claim_job(job_id, me):
                return self.get_job(job_id)
        return None

    def heartbeat(self, job_id: int, step: int, steps: int) -> bool:
        """Record progress within the current image; returns whether cancel was requested."""
        self.conn.execute("UPDATE jobs SET heartbeat = ?, step = ?, steps = ?, updated = ? WHERE id = ?",
                          (time.time(), step, steps, now(), job_id))
        row = self.conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def finish_job(self, job_id: int, status: str, error: str | None = None) -> None:
        """Set a job's final status (done, failed or cancelled)."""
        if status not in JOB_STATUSES:
            raise ValueError(status)
        t = now()
        self.conn.execute("UPDATE jobs SET status = ?, error = ?, finished = ?, updated = ?, worker = NULL "
                          "WHERE id = ?", (status, error, t, t, job_id))

    def request_cancel(self, job_id: int) -> None:
        """Ask a job to stop; a queued one is cancelled at once."""
        self.get_job(job_id)
        t = now()
        with self.transaction():
            self.conn.execute("UPDATE jobs SET cancel_requested = 1, updated = ? WHERE id = ?", (t, job_id))
            self.conn.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                              (t, job_id))

    # --- images ----------------------------------------------------------------------------

    def done_indices(self, job_id: int) -> set[int]:
        """Indices within a job that already have their image row."""
        return {r[0] for r in self.conn.execute("SELECT idx FROM images WHERE job_id = ?", (job_id,))}

    def add_image(self, *, job_id: int | None, idx: int | None, seed: int | None, path: str, width: int,
                  height: int, recipe_json: str, prompt: str, model: str | None, clip_model: str | None,
                  embedding: np.ndarray | None, embedding_model: str | None, animation_path: str | None = None,
                  kind: str = "generated", parent_id: int | None = None, device: str | None = None,
                  sha256: str | None = None, source: tuple | None = None, upscaler: str | None = None) -> int:
        """Insert an image row, its embedding and its job's new count in one transaction; returns the id.

        ``source`` is (path, size, mtime) of an imported file.
        """
        src = source or (None, None, None)
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO images (job_id, idx, kind, seed, path, animation_path, width, height, prompt, recipe, "
                "model, clip_model, device, created, parent_id, sha256, source_path, source_size, source_mtime, "
                "upscaler) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, idx, kind, seed, path, animation_path, width, height, prompt, recipe_json, model,
                 clip_model, device, now(), parent_id, sha256, *src, upscaler))
            image_id = cur.lastrowid
            if embedding is not None:
                self._put_embedding(image_id, embedding_model, embedding)
            if job_id is not None and kind == "generated":
                self.conn.execute("UPDATE jobs SET done = (SELECT COUNT(*) FROM images WHERE job_id = ?), "
                                  "updated = ?, heartbeat = ? WHERE id = ?", (job_id, now(), time.time(), job_id))
            return image_id

    def set_job_done(self, job_id: int, done: int) -> None:
        """Record how many of a job's items are finished (jobs whose items are not all new rows)."""
        self.conn.execute("UPDATE jobs SET done = ?, updated = ? WHERE id = ?", (done, now(), job_id))

    def _put_embedding(self, image_id: int, model: str, vector: np.ndarray) -> None:
        v = np.asarray(vector, dtype=np.float32).ravel()
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        self.conn.execute("INSERT OR REPLACE INTO embeddings (image_id, model, vector) VALUES (?, ?, ?)",
                          (image_id, model, v.astype(np.float32).tobytes()))

    def put_embeddings(self, model: str, items: list[tuple[int, np.ndarray]]) -> None:
        """Store unit-normalised embeddings of one model for existing images."""
        with self.transaction():
            for image_id, vector in items:
                self._put_embedding(image_id, model, vector)

    def get_image(self, image_id: int) -> dict:
        """An image row, or ImageNotFound."""
        row = self._row("SELECT * FROM images WHERE id = ?", (image_id,))
        if row is None:
            raise ImageNotFound(f"image {image_id} doesn't exist")
        return row

    def images_by_ids(self, ids) -> list[dict]:
        """Rows for these ids, in the order given (missing ids are left out)."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        rows = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for r in self._rows(f"SELECT * FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                rows[r["id"]] = r
        return [rows[i] for i in ids if i in rows]

    def embedding(self, image_id: int, model: str | None = None) -> np.ndarray | None:
        """An image's unit-norm float32 CLIP embedding (of ``model``, or of the CLIP that made it)."""
        row = self.get_image(image_id)
        model = model or row["clip_model"]
        got = self.conn.execute("SELECT vector FROM embeddings WHERE image_id = ? AND model = ?",
                                (image_id, model)).fetchone()
        return None if got is None else np.frombuffer(got[0], dtype=np.float32).copy()

    def embedding_models(self) -> dict[str, int]:
        """How many embeddings each CLIP model has."""
        return dict(self.conn.execute("SELECT model, COUNT(*) FROM embeddings GROUP BY model ORDER BY 2 DESC"))

    def embedding_stats(self, model: str) -> tuple[int, int, int]:
        """(count, largest image id, sum of image ids) of a model's embeddings: a cheap fingerprint."""
        n, last, total = self.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(image_id), 0), COALESCE(SUM(image_id), 0) FROM embeddings WHERE model = ?",
            (model,)).fetchone()
        return n, last, total

    def iter_embeddings(self, model: str, after_id: int = 0, ids=None, chunk: int = 50_000):
        """Yield (ids, [n, d] float32 matrix) chunks of a model's embeddings, by image id."""
        if ids is not None:
            ids = sorted(int(i) for i in ids)
            for start in range(0, len(ids), 900):
                part = ids[start:start + 900]
                rows = self.conn.execute(
                    f"SELECT image_id, vector FROM embeddings WHERE model = ? AND image_id IN "
                    f"({','.join('?' * len(part))}) ORDER BY image_id", [model, *part]).fetchall()
                if rows:
                    yield self._unpack(rows)
            return
        last = after_id
        while True:
            rows = self.conn.execute("SELECT image_id, vector FROM embeddings WHERE model = ? AND image_id > ? "
                                     "ORDER BY image_id LIMIT ?", (model, last, chunk)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield self._unpack(rows)

    @staticmethod
    def _unpack(rows) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, mat

    def embedding_ids(self, model: str) -> set[int]:
        """Ids of the images that have an embedding of this model."""
        return {r[0] for r in self.conn.execute("SELECT image_id FROM embeddings WHERE model = ?", (model,))}

    def images_without_embedding(self, model: str) -> list[dict]:
        """Images that have no embedding of this model yet."""
        return self._rows("SELECT * FROM images WHERE id NOT IN (SELECT image_id FROM embeddings WHERE model = ?) "
                          "ORDER BY id", (model,))

    def filter_ids(self, *, starred: bool = False, job_id: int | None = None, since: str | None = None,
                   until: str | None = None, keyword: str | None = None) -> list[int] | None:
        """Ids matching the filters, or None when no filter is set (everything matches)."""
        where, args = self._grid_where(starred, job_id, keyword)
        if since:
            where.append("created >= ?")
            args.append(since)
        if until:
            where.append("created < ?")
            args.append(until)
        if not where:
            return None
        return [r[0] for r in self.conn.execute(f"SELECT id FROM images WHERE {' AND '.join(where)}", args)]

    GRID_COLUMNS = "id, job_id, idx, kind, seed, path, width, height, prompt, starred, parent_id, created"

    def _grid_where(self, starred: bool, job_id: int | None, keyword: str | None) -> tuple[list, list]:
        where, args = [], []
        if starred:
            where.append("starred = 1")
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if keyword:
            where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
            args.append(fts_query(keyword))
        return where, args

    def page_images(self, *, before: int | None = None, limit: int = 60, starred: bool = False,
                    job_id: int | None = None, keyword: str | None = None) -> list[dict]:
        """Newest first, keyset-paginated by id (``before``: the last id of the previous page)."""
        where, args = self._grid_where(starred, job_id, keyword)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        sql = f"SELECT {self.GRID_COLUMNS} FROM images"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])

    def neighbours(self, image_id: int, *, starred: bool = False, job_id: int | None = None,
                   keyword: str | None = None) -> tuple[int | None, int | None]:
        """(newer id, older id) around an image in the grid's order, under the same filters."""
        where, args = self._grid_where(starred, job_id, keyword)
        cond = (" AND " + " AND ".join(where)) if where else ""
        newer = self.conn.execute(f"SELECT MIN(id) FROM images WHERE id > ?{cond}", [image_id, *args]).fetchone()[0]
        older = self.conn.execute(f"SELECT MAX(id) FROM images WHERE id < ?{cond}", [image_id, *args]).fetchone()[0]
        return newer, older

    def upscale_of(self, image_id: int, upscaler: str) -> int | None:
        """The id of this image's upscale by ``upscaler``, if it has one."""
        row = self.conn.execute("SELECT id FROM images WHERE parent_id = ? AND upscaler = ?",
                                (image_id, upscaler)).fetchone()
        return row[0] if row else None

    def starred_ids(self) -> list[int]:
        """Ids of starred images that are not themselves upscales, oldest first."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM images WHERE starred = 1 AND upscaler IS NULL ORDER BY id")]

    def children(self, image_id: int) -> list[dict]:
        """Images derived from this one (upscales), oldest first."""
        return self._rows(f"SELECT {self.GRID_COLUMNS} FROM images WHERE parent_id = ? ORDER BY id", (image_id,))

    def image_by_source(self, source_path: str) -> dict | None:
        """The image imported from this file path, if any."""
        return self._row("SELECT * FROM images WHERE source_path = ? ORDER BY id DESC LIMIT 1", (source_path,))

    def path_in_use(self, rel: str) -> bool:
        """Whether any image row still points at this file (imports share files by content)."""
        return self.conn.execute("SELECT 1 FROM images WHERE path = ?", (rel,)).fetchone() is not None

    def image_by_sha256(self, sha256: str) -> dict | None:
        """An image with exactly these bytes, if any."""
        return self._row("SELECT * FROM images WHERE sha256 = ? ORDER BY id LIMIT 1", (sha256,))

    def update_source(self, image_id: int, source: tuple) -> None:
        """Remember an imported file's path, size and mtime."""
        self.conn.execute("UPDATE images SET source_path = ?, source_size = ?, source_mtime = ? WHERE id = ?",
                          (*source, image_id))

    def delete_image(self, image_id: int) -> list[str]:
        """Delete an image row (and its embeddings); returns the relative paths of its files."""
        row = self.get_image(image_id)
        with self.transaction():
            self.conn.execute("UPDATE images SET parent_id = NULL WHERE parent_id = ?", (image_id,))
            self.conn.execute("DELETE FROM embeddings WHERE image_id = ?", (image_id,))
            self.conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            if row["job_id"] is not None:
                self.conn.execute("UPDATE jobs SET done = (SELECT COUNT(*) FROM images WHERE job_id = ?) WHERE id = ?",
                                  (row["job_id"], row["job_id"]))
        return [p for p in (row["path"], row["animation_path"]) if p]

    def images_for_job(self, job_id: int) -> list[dict]:
        """A job's images in index order."""
        return self._rows("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))

    def image_paths(self, job_id: int) -> set[str]:
        """Relative paths (images and animations) that rows of this job point at."""
        out = set()
        for p, a in self.conn.execute("SELECT path, animation_path FROM images WHERE job_id = ?", (job_id,)):
            out.add(p)
            if a:
                out.add(a)
        return out

    def star(self, image_id: int, starred: bool = True) -> None:
        """Star or unstar an image."""
        self.get_image(image_id)
        self.conn.execute("UPDATE images SET starred = ? WHERE id = ?", (int(bool(starred)), image_id))

    def count_images(self) -> int:
        """How many images the gallery holds."""
        return self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def _rows(self, sql: str, args=()) -> list[dict]:
        cur = self.conn.execute(sql, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def _row(self, sql: str, args=()) -> dict | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None
