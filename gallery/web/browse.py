"""The grid: newest first, keyset pages, filters, and search by phrase."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template

from gallery.errors import CuratorError
from gallery.store import Filters

from .context import get_store, searcher
from .params import grid_query

bp = Blueprint("browse", __name__)


@bp.route("/")
def index():
    """The grid, or search results when ``q`` is given."""
    args = grid_query()
    size = current_app.config["PAGE_SIZE"]
    error, hits, images, next_before = None, None, [], None
    if args.phrase:
        try:
            found = searcher().text(args.phrase, k=size, offset=(args.page - 1) * size, filters=args.filters)
            hits = [(h.row, h.score) for h in found]
        except CuratorError as e:
            error, hits = str(e), []
        images = [row for row, _ in hits]
    else:
        images = get_store().page_images(args.filters, before=args.before, limit=size)
        if len(images) == size:
            next_before = images[-1].id
    return render_template("browse/grid.html", images=images, hits=hits, q=args.phrase, filters=args.filters,
                           error=error, next_before=next_before, page=args.page, favourites=False)


@bp.route("/favourites")
def favourites():
    """Starred images only."""
    args = grid_query()
    size = current_app.config["PAGE_SIZE"]
    filters = Filters(starred=True)
    images = get_store().page_images(filters, before=args.before, limit=size)
    return render_template("browse/grid.html", images=images, hits=None, q="", filters=filters, error=None,
                           next_before=images[-1].id if len(images) == size else None, page=1, favourites=True)
