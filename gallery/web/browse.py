"""The grid's views: the gallery, favourites, the trash and likely rejects; search by phrase; sorting.

Every view renders its first page of cells on the server and serves later pages as HTML
fragments of the same cells (``/cells``), which the page's script appends as you go; the cell
markup exists once, in ``browse/cells.html``, so escaping is Jinja's everywhere.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from flask import Blueprint, current_app, flash, redirect, render_template, url_for

from gallery.curate import empty_trash as empty
from gallery.errors import CuratorError
from gallery.store import Filters, ImageRow
from search.stacks import Stack, stack_page

from .context import get_store, instance, searcher, services
from .params import GridQuery, grid_query

bp = Blueprint("browse", __name__)

VIEWS = {
    "gallery": ("Gallery", Filters(originals=True)),
    "favourites": ("Favourites", Filters(starred=True, originals=True)),
    "trash": ("Trash", Filters(trash=True)),
    "rejects": ("Likely rejects", Filters(originals=True)),
}
EMPTY = {
    "gallery": "No images yet: run `clip-curator generate -p \"...\"`, or queue a prompt with New prompt.",
    "favourites": "No favourites yet: star an image with s (or its ☆ button) to keep it here.",
    "trash": "The trash is empty: images you reject with x wait here until it is emptied.",
    "rejects": "Nothing to clear: every image has a star, a rating or a reject already.",
}


@dataclass
class Listing:
    """One page of a view: its cells, their scores, and links onwards."""

    stacks: list[Stack] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    next: dict | None = None
    newer: dict | None = None
    notice: str | None = None
    error: str | None = None


def _filters(view: str, args: GridQuery) -> Filters:
    base = VIEWS[view][1]
    own = args.filters
    return dataclasses.replace(base, starred=base.starred or own.starred, job_id=own.job_id, keyword=own.keyword,
                               min_rating=own.min_rating, collection=own.collection, backend=own.backend)


def _flat(rows: list[ImageRow]) -> list[Stack]:
    return [Stack(r) for r in rows]


def _search(args: GridQuery, filters: Filters, size: int) -> Listing:
    offset = (args.page - 1) * size
    # Only originals are embedded: saying so again would only cost a list of every id.
    filters = dataclasses.replace(filters, originals=False)
    try:
        found = (searcher().like(args.like, size, offset, filters) if args.like is not None
                 else searcher().text(args.phrase, size, offset, filters))
    except CuratorError as e:
        return Listing(error=str(e))
    nxt = args.link(page=args.page + 1, like=args.like) if found.more else None
    return Listing(_flat([h.row for h in found]), {h.id: h.score for h in found}, nxt)


def _ranked(view: str, args: GridQuery, filters: Filters, size: int) -> Listing:
    # Likely keepers first (or, for the likely-rejects view, likely rejects first), by offset.
    store = get_store()
    taste = services().taste(store)
    model = taste.current(store) if taste is not None else None
    if view == "rejects":
        ids = store.unlabeled_ids()
    else:
        ids = store.ids_matching(filters)
    offset = (args.page - 1) * size
    notice = (f"Sorted by what you keep: learnt from {model.keepers} keepers and {model.rejects} rejects."
              if model else "The taste model needs a few more stars and rejects (8 of each) before it can sort.")
    if model is None and view == "rejects":
        return Listing(notice=notice)
    ranked = taste.rank(store, ids, reverse=view == "rejects") if model else ids
    rows = store.images_by_ids(ranked[offset:offset + size])
    more = len(ranked) > offset + size
    return Listing(_flat(rows), next=args.link(page=args.page + 1) if more else None, notice=notice)


def listing(view: str, args: GridQuery) -> Listing:
    """The page of a view these query parameters ask for."""
    size = current_app.config["PAGE_SIZE"]
    filters = _filters(view, args)
    if args.phrase or args.like is not None:
        return _search(args, filters, size)
    if view == "rejects" or args.order == "taste":
        return _ranked(view, args, filters, size)
    store = get_store()
    if args.order == "rating":
        rows = store.page_images(filters, by_rating=True, limit=size + 1, offset=(args.page - 1) * size)
        return Listing(_flat(rows[:size]), next=args.link(page=args.page + 1) if len(rows) > size else None)
    rows = store.page_images(filters, before=args.before, after=args.after, limit=size + 1)
    more, rows = (len(rows) > size, rows[:size]) if args.after is None else (True, rows[-size:])
    stacks = stack_page(store, rows, services().search_model(store), services().config().stack_threshold)
    newer = None
    if rows and (args.before is not None or args.after is not None) and store.page_images(
            filters, after=rows[0].id, limit=1):
        newer = args.link(after=rows[0].id)
    return Listing(stacks, next=args.link(before=rows[-1].id) if rows and more else None, newer=newer)


def render(view: str, fragment: bool = False):
    """A view's page (or, with ``fragment``, just its cells)."""
    args = grid_query()
    page = listing(view, args)
    title, _ = VIEWS[view]
    context = dict(view=view, title=title, listing=page, q=args.phrase, args=args, filters=_filters(view, args),
                   empty=EMPTY[view] if not args.phrase else "No match for this search and these filters.")
    if not fragment:
        context["collections"] = get_store().collections()
    return render_template("browse/cells.html" if fragment else "browse/grid.html", **context)


@bp.route("/")
def index():
    """The gallery grid, or search results when ``q`` (or ``like``) is given."""
    return render("gallery")


@bp.route("/favourites")
def favourites():
    """Starred images only."""
    return render("favourites")


@bp.route("/trash")
def trash():
    """Rejected images, until the trash is emptied."""
    return render("trash")


@bp.route("/likely-rejects")
def likely_rejects():
    """Images not triaged yet, those the taste model expects you to reject first."""
    return render("rejects")


@bp.route("/cells/<any(gallery, favourites, trash, rejects):view>")
def cells(view: str):
    """A page of a view as a fragment of cells, for the grid to append."""
    return render(view, fragment=True)


@bp.post("/trash/empty")
def empty_trash():
    """Delete every image in the trash for good (the form on the trash page)."""
    deleted = empty(get_store(), instance())
    flash(f"Deleted {len(deleted)} image(s) for good.", "success")
    return redirect(url_for("browse.trash"))
