"""The job queue page, and the form that queues a new prompt."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, flash, redirect, render_template, request, url_for

from gallery.errors import CuratorError
from gallery.store import Job
from generate.modifiers import by_kind
from generate.generators import presets
from generate.queue import prompt_recipe, submit

from .context import get_store, instance

bp = Blueprint("jobs", __name__)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    stop = parse(end) if end else datetime.utcnow()
    return max(0.0, (stop - parse(start)).total_seconds())


def job_dict(job: Job, made_on: list | None = None) -> dict:
    """A job as the pages and the API show it, with its duration, while it runs an ETA in seconds, and
    where its images were made (node, device, images)."""
    duration = _seconds(job.started, job.finished)
    eta = None
    if job.status == "running" and duration and job.n:
        done = job.done + (job.step / job.steps if job.steps else 0)
        eta = duration / done * (job.n - done) if done > 0 else None
    return {"id": job.id, "kind": job.kind, "status": job.status, "done": job.done, "n": job.n,
            "step": job.step, "steps": job.steps, "prompt": job.prompt, "error": job.error, "created": job.created,
            "started": job.started, "finished": job.finished, "duration": duration, "eta": eta,
            "cancel_requested": job.cancel_requested,
            "made_on": [{"node": n, "device": d, "images": k} for n, d, k in made_on or []]}


def job_dicts(store, jobs: list[Job]) -> list[dict]:
    """job_dict of each job, with where its images were made (one query for them all)."""
    made_on = store.made_on([j.id for j in jobs])
    return [job_dict(j, made_on.get(j.id)) for j in jobs]


@bp.route("/jobs")
def index():
    """Queued, running, finished and failed jobs, newest first."""
    store = get_store()
    return render_template("jobs/list.html", jobs=job_dicts(store, store.list_jobs(limit=100)))


@bp.route("/jobs/new", methods=["GET", "POST"])
def new():
    """Queue a job for a prompt of your own, without starting from an image."""
    form = request.form
    if request.method == "POST":
        fields = {k: form[k] for k in ("n", "seed") if form.get(k, "").strip()}
        asked = {k: form[k] for k in ("prompt", "model", "variations", "guides", "guide_pool", "guide_weight",
                                      "guide_init") if form.get(k, "").strip()}
        try:
            recipe = prompt_recipe(instance(), {**asked, "prompt": form.get("prompt", ""),
                                                "modifiers": form.getlist("modifiers")})
            job = submit(get_store(), instance(), recipe, fields, resume=False)
        except CuratorError as e:
            flash(str(e), "error")
            return _form(form), 400
        flash(f"Queued job {job.job_id}: {job.n} image(s).", "success")
        return redirect(url_for("jobs.index"))
    return _form(form)


def _form(form):
    try:
        library = by_kind(instance())
    except CuratorError as e:  # a broken modifiers file of the user's: say so, keep the form usable
        flash(str(e), "error")
        library = {}
    return render_template("jobs/new.html", presets=presets(), form=form, modifiers=library,
                           chosen=set(form.getlist("modifiers")), collections=get_store().collections())
