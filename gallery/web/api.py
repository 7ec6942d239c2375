"""The JSON API under /api/: what the pages' scripts call, and what other tools may call.

Every body and query string is validated by one schema; a bad one is a 4xx with
``{"error": "<one line>"}`` and changes nothing.
"""
from __future__ import annotations

import dataclasses

from flask import Blueprint, abort, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gallery.curate import BulkRequest, apply, empty_trash as empty
from gallery.errors import BadRequest
from gallery.store import ImageRow
from gallery.validate import parse
from generate.queue import queue_upscale, regenerate as queue_regenerate

from .context import get_store, instance, searcher
from .jobs import job_dict, job_dicts
from .params import grid_query

bp = Blueprint("api", __name__, url_prefix="/api")


class StarBody(BaseModel):
    """{"starred": true|false}, or no body to flip the star."""

    model_config = ConfigDict(extra="forbid")

    starred: StrictBool | None = Field(default=None, description="true or false")


def image_json(row: ImageRow, score: float | None = None) -> dict:
    """An image row as the API returns it."""
    d = {"id": row.id, "prompt": row.prompt, "starred": row.starred, "rating": row.rating,
         "rejected": row.rejected is not None, "seed": row.seed, "job_id": row.job_id,
         "kind": row.kind, "parent_id": row.parent_id, "width": row.width, "height": row.height,
         "created": row.created, "url": url_for("images.page", image_id=row.id),
         "thumb": url_for("images.thumb", image_id=row.id), "file": url_for("images.file", image_id=row.id)}
    if score is not None:
        d["score"] = round(score, 4)
    return d


def body() -> dict:
    """The request's JSON object body ({} when there is none); BadRequest if it is not one."""
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


@bp.get("/images")
def images():
    """A page of images, newest first: ?before=ID&starred=1&job=ID&keyword=WORDS&limit=N."""
    args = grid_query()
    rows = get_store().page_images(args.filters, before=args.before, limit=args.limit)
    return jsonify(images=[image_json(r) for r in rows], next_before=rows[-1].id if len(rows) == args.limit else None)


@bp.get("/search")
def search():
    """?q=PHRASE or ?like=ID, with k, page, starred, job and keyword."""
    args = grid_query()
    offset = (args.page - 1) * args.k
    s = searcher()
    if args.like is not None:
        hits = s.like(args.like, args.k, offset, args.filters)
    else:
        hits = s.text(args.q or "", args.k, offset, args.filters)
    return jsonify(results=[image_json(h.row, h.score) for h in hits])


@bp.post("/images/<id:image_id>/star")
def star(image_id: int):
    """Set the star: body {"starred": true|false}, or none to flip it (atomically)."""
    wanted = parse(StarBody, body()).starred
    store = get_store()
    if wanted is None:
        return jsonify(id=image_id, starred=store.toggle_star(image_id))
    store.star(image_id, wanted)
    return jsonify(id=image_id, starred=wanted)


@bp.post("/images/<id:image_id>/upscale")
def upscale(image_id: int):
    """Queue a 4x upscale: body {"model": "x4plus"|"x4plus-anime"|"compact"}."""
    return jsonify(job=queue_upscale(get_store(), [image_id], body())), 202


@bp.post("/images/<id:image_id>/regenerate")
def regenerate(image_id: int):
    """Queue new images from this recipe: {"prompt", "n", "init_strength", "image_prompt_weight"}."""
    job = queue_regenerate(get_store(), instance(), image_id, body())
    return jsonify(job=job.job_id), 202


@bp.post("/images/bulk")
def bulk():
    """One action on a selection, in one request and one transaction:
    {"ids": [...], "action": "star"|"unstar"|"reject"|"restore"|"rate"|"upscale", "rating": 0-5}."""
    req = parse(BulkRequest, body())
    if req.action == "upscale":
        return jsonify(action="upscale", ids=req.ids, job=queue_upscale(get_store(), req.ids, {})), 202
    result = apply(get_store(), req)
    return jsonify(action=result.action, ids=result.ids)


@bp.get("/report")
def report():
    """Keep rate by modifier, guide pool, model, guidance scale and template: {"rows": [...]}."""
    return jsonify(rows=[{**dataclasses.asdict(r), "keep_rate": r.keep_rate} for r in get_store().keep_report()])


@bp.post("/trash/empty")
def empty_trash():
    """Delete every image in the trash for good (rows, embeddings, files)."""
    return jsonify(deleted=empty(get_store(), instance()))


@bp.get("/jobs")
def jobs():
    """The newest 100 jobs with their progress (``?active=1``: only queued and running ones)."""
    active = request.args.get("active") == "1"
    store = get_store()
    listed = [j for j in store.list_jobs(limit=100) if not active or j.status in ("queued", "running")]
    return jsonify(jobs=job_dicts(store, listed))


@bp.post("/jobs/<id:job_id>/cancel")
def cancel(job_id: int):
    """Cancel a queued job, or stop a running one after its current image."""
    return jsonify(job_dict(get_store().request_cancel(job_id)))


@bp.route("/<path:_rest>")
def not_found(_rest):
    """Unknown API paths are JSON 404s too."""
    abort(404, "No such API endpoint.")
