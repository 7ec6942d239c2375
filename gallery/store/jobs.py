"""SQL of the jobs table: the durable queue, claims, heartbeats and cancellation."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone

from ..errors import BadRequest, JobNotFound
from .rows import JOB_KINDS, JOB_STATUSES, Job, storable_id

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


def _params_json(params: dict | None) -> str:
    return json.dumps(params or {}, sort_keys=True)


class JobsMixin:
    """Jobs: queued, claimed by one live worker, heartbeating, finished."""

    def create_job(self, kind: str, recipe_json: str, n: int, seed: int, params: dict | None = None,
                   steps: int = 0) -> int:
        """Queue a job and return its id."""
        if kind not in JOB_KINDS:
            raise BadRequest(f"unknown job kind {kind!r}")
        t = now()
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO jobs (kind, status, recipe, params, n, seed, steps, created, updated) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (kind, recipe_json, _params_json(params), n, seed, steps, t, t))
            return cur.lastrowid

    def get_job(self, job_id: int) -> Job:
        """A job by id, or JobNotFound."""
        row = self._row("SELECT * FROM jobs WHERE id = ?", (job_id,)) if storable_id(job_id) else None
        if row is None:
            raise JobNotFound(f"job {job_id} doesn't exist")
        return Job.from_row(row)

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        """Newest jobs first, optionally of one status."""
        sql, args = "SELECT * FROM jobs", []
        if status:
            if status not in JOB_STATUSES:
                raise BadRequest(f"status must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
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
        args = [kind, recipe_json, n, _params_json(params)]
        if seed is not None:
            sql += " AND seed = ?"
            args.append(seed)
        row = self._row(sql + " ORDER BY id DESC LIMIT 1", args)
        return Job.from_row(row) if row else None

    @staticmethod
    def _claimable(job: Job, me: str) -> bool:
        if job.status in ("queued", "failed"):
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
            if not self._claimable(self.get_job(job_id), me):
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
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND kind IN (SELECT value FROM json_each(?)) "
            "AND cancel_requested = 0 ORDER BY status = 'running' DESC, id", (json.dumps(list(kinds)),)).fetchall()
        for (job_id,) in rows:
            if self.claim_job(job_id, me):
                return self.get_job(job_id)
        return None

    def heartbeat(self, job_id: int, step: int, steps: int) -> bool:
        """Record progress within the current item; returns whether cancel was requested."""
        row = self.conn.execute(
            "UPDATE jobs SET heartbeat = ?, step = ?, steps = ?, updated = ? WHERE id = ? RETURNING cancel_requested",
            (time.time(), step, steps, now(), job_id)).fetchone()
        return bool(row and row[0])

    def finish_job(self, job_id: int, status: str, error: str | None = None) -> None:
        """Set a job's final status (done, failed or cancelled)."""
        if status not in JOB_STATUSES:
            raise BadRequest(f"unknown job status {status!r}")
        t = now()
        self.conn.execute("UPDATE jobs SET status = ?, error = ?, finished = ?, updated = ?, worker = NULL "
                          "WHERE id = ?", (status, error, t, t, job_id))

    def request_cancel(self, job_id: int) -> Job:
        """Ask a job to stop (a queued one is cancelled at once); returns the job as it now is."""
        self.get_job(job_id)
        t = now()
        with self.transaction():
            self.conn.execute("UPDATE jobs SET cancel_requested = 1, updated = ? WHERE id = ?", (t, job_id))
            self.conn.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                              (t, job_id))
        return self.get_job(job_id)

    def release_job(self, job_id: int) -> None:
        """Put a job this worker stops running back on the queue, to resume where it stopped."""
        self.conn.execute("UPDATE jobs SET status = 'queued', worker = NULL, updated = ? WHERE id = ? "
                          "AND status = 'running'", (now(), job_id))

    def set_job_done(self, job_id: int, done: int) -> None:
        """Record how many of a job's items are finished (jobs whose items are not all new rows)."""
        self.conn.execute("UPDATE jobs SET done = ?, updated = ? WHERE id = ?", (done, now(), job_id))
