"""The job queue page."""
from __future__ import annotations

from flask import Blueprint, render_template

from gallery.store import Job

from .context import get_store

bp = Blueprint("jobs", __name__)


def job_dict(job: Job) -> dict:
    """A job as the pages and the API show it."""
    return {"id": job.id, "kind": job.kind, "status": job.status, "done": job.done, "n": job.n,
            "step": job.step, "steps": job.steps, "prompt": job.prompt, "error": job.error, "created": job.created,
            "finished": job.finished, "cancel_requested": job.cancel_requested}


@bp.route("/jobs")
def index():
    """Queued, running, finished and failed jobs, newest first."""
    return render_template("jobs/list.html", jobs=[job_dict(j) for j in get_store().list_jobs(limit=100)])
