"""The JSON API under /api/: what the pages' scripts call, and what other tools may call."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from generate.errors import BadRequest, CuratorError, ImageNotFound, JobNotFound
from search.query import Filters

from .actions import queue_regenerate, queue_upscale
from .jobs import job_dict
from .web import get_store, image_or_404, instance, job_or_404, searcher

bp = Blueprint("api", __name__, url_prefix="/api")


def image_json(row: dict, score: float | None = None) -> dict:
    """An image row as the API returns it."""
    d = {"id": row["id"], "prompt": row["prompt"], "starred": bool(row["starred"]), "seed": row["seed"],
         "job_id": row["job_id"], "kind": row["kind"], "parent_id": row["parent_id"],
         "width": row["width"], "height": row["height"], "created": row["created"],
         "url": url_for("images.page", image_id=row["id"]), "thumb": url_for("images.thumb", image_id=row["id"]),
         "file": url_for("images.file", image_id=row["id"])}
    if score is not None:
        d["score"] = round(score, 4)
    return d


def _body() -> dict:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


@bp.errorhandler(HTTPException)
def http_error(e):
    """Errors as JSON: {"error": message}."""
    return jsonify(error=e.description), e.code


@bp.errorhandler(CuratorError)
def domain_error(e):
    """Bad input as a 400 (a missing id as a 404), with the message."""
    code = 404 if isinstance(e, (ImageNotFound, JobNotFound)) else 400
    return jsonify(error=str(e)), code


@bp.get("/images")
def images():
    """A page of images, newest first: ?before=ID&starred=1&job=ID&keyword=WORDS&limit=N."""
    limit = min(max(request.args.get("limit", 60, type=int), 1), 500)
    rows = get_store().page_images(before=request.args.get("before", type=int), limit=limit,
                                   starred=request.args.get("starred") == "1", job_id=request.args.get("job", type=int),
                                   keyword=request.args.get("keyword") or None)
    return jsonify(images=[image_json(r) for r in rows], next_before=rows[-1]["id"] if len(rows) == limit else None)


@bp.get("/search")
def search():
    """?q=PHRASE or ?like=ID, with k, page, starred, job and keyword."""
    k = request.args.get("k", 24, type=int)
    page = max(1, request.args.get("page", 1, type=int))
    f = Filters(starred=request.args.get("starred") == "1", job_id=request.args.get("job", type=int),
                keyword=request.args.get("keyword") or None)
    like = request.args.get("like", type=int)
    s = searcher()
    hits = s.like(like, k, (page - 1) * k, f) if like is not None else s.text(request.args.get("q", ""), k,
                                                                             (page - 1) * k, f)
    return jsonify(results=[image_json(h.row, h.score) for h in hits])


@bp.post("/images/<int:image_id>/star")
def star(image_id: int):
    """Set or toggle the star: body {"starred": true|false}, or none to toggle."""
    row = image_or_404(image_id)
    value = _body().get("starred", not row["starred"])
    if not isinstance(value, bool):
        raise BadRequest("starred must be true or false")
    get_store().star(image_id, value)
    return jsonify(id=image_id, starred=value)


@bp.post("/images/<int:image_id>/upscale")
def upscale(image_id: int):
    """Queue a 4x upscale: body {"model": "x4plus"|"x4plus-anime"|"compact"}."""
    image_or_404(image_id)
    job = queue_upscale(get_store(), [image_id], _body().get("model", "x4plus"))
    return jsonify(job=job), 202


@bp.post("/images/<int:image_id>/regenerate")
def regenerate(image_id: int):
    """Queue new images from this recipe: {"prompt", "n", "init_strength", "image_prompt_weight"}."""
    image_or_404(image_id)
    b = _body()
    job = queue_regenerate(get_store(), instance(), image_id, prompt=b.get("prompt"), n=b.get("n", 4),
                           init_strength=b.get("init_strength", 0), image_prompt_weight=b.get("image_prompt_weight", 0))
    return jsonify(job=job), 202


@bp.get("/jobs")
def jobs():
    """The newest 100 jobs with their progress."""
    return jsonify(jobs=[job_dict(j) for j in get_store().list_jobs(limit=100)])


@bp.post("/jobs/<int:job_id>/cancel")
def cancel(job_id: int):
    """Cancel a queued job, or stop a running one after its current image."""
    job_or_404(job_id)
    get_store().request_cancel(job_id)
    return jsonify(job_dict(get_store().get_job(job_id)))


@bp.route("/<path:_rest>")
def not_found(_rest):
    """Unknown API paths are JSON 404s too."""
    abort(404, "No such API endpoint.")
