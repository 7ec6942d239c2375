"""The grid: newest first, keyset pages, filters, and search by phrase."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from generate.errors import CuratorError
from search.query import Filters

from .web import get_store, searcher

bp = Blueprint("browse", __name__)


def grid_filters() -> dict:
    """The grid's filters from the query string (starred, job, keyword)."""
    job = request.args.get("job", type=int)
    return {"starred": request.args.get("starred") == "1", "job_id": job,
            "keyword": (request.args.get("keyword") or "").strip()[:200] or None}


@bp.route("/")
def index():
    """The grid, or search results when ``q`` is given."""
    store = get_store()
    f = grid_filters()
    q = (request.args.get("q") or "").strip()
    size = current_app.config["PAGE_SIZE"]
    error, hits, images, next_before = None, None, [], None
    if q:
        page = max(1, request.args.get("page", 1, type=int))
        try:
            found = searcher().text(q, k=size, offset=(page - 1) * size, filters=Filters(**f))
            hits = [(h.row, h.score) for h in found]
        except CuratorError as e:
            error = str(e)
            hits = []
        images = [row for row, _ in hits]
    else:
        before = request.args.get("before", type=int)
        images = store.page_images(before=before, limit=size, **f)
        if len(images) == size:
            next_before = images[-1]["id"]
    return render_template("browse/grid.html", images=images, hits=hits, q=q, filters=f, error=error,
                           next_before=next_before, page=request.args.get("page", 1, type=int),
                           favourites=False)


@bp.route("/favourites")
def favourites():
    """Starred images only."""
    store = get_store()
    before = request.args.get("before", type=int)
    size = current_app.config["PAGE_SIZE"]
    images = store.page_images(before=before, limit=size, starred=True)
    f = {"starred": True, "job_id": None, "keyword": None}
    return render_template("browse/grid.html", images=images, hits=None, q="", filters=f, error=None,
                           next_before=images[-1]["id"] if len(images) == size else None, page=1, favourites=True)
