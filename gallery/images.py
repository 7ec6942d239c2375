"""One image: its page, its files, star, upscale and regenerate."""
from __future__ import annotations

import json

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for

from generate.errors import CuratorError

from .actions import queue_regenerate
from .browse import grid_filters
from .web import get_store, image_or_404, instance, searcher, thumbnail_path

bp = Blueprint("images", __name__)


def _file(rel: str | None):
    """Send a file that lies inside the instance folder, never anything else."""
    if not rel:
        abort(404, "No such file.")
    root = instance().resolve()
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file():
        abort(404, "No such file.")
    return send_file(path, max_age=3600)


@bp.route("/image/<int:image_id>")
def page(image_id: int):
    """The image page: full image, animation, recipe, lineage, similar images, actions."""
    store = get_store()
    row = image_or_404(image_id)
    f = grid_filters()
    newer, older = store.neighbours(image_id, **f)
    try:
        recipe = json.loads(row["recipe"])
    except ValueError:
        recipe = {}
    similar = []
    try:
        similar = [h.row for h in searcher().like(image_id, k=8)]
    except CuratorError:  # no embedding yet, or the search CLIP is unavailable
        pass
    parent = store.get_image(row["parent_id"]) if row["parent_id"] else None
    return render_template("images/image.html", image=row, recipe=recipe, newer=newer, older=older,
                           similar=similar, parent=parent, children=store.children(image_id), filters=f)


@bp.route("/image/<int:image_id>/file")
def file(image_id: int):
    """The image file itself."""
    return _file(image_or_404(image_id)["path"])


@bp.route("/image/<int:image_id>/download")
def download(image_id: int):
    """The image file as a download named after its recipe."""
    row = image_or_404(image_id)
    response = _file(row["path"])
    response.headers["Content-Disposition"] = f'attachment; filename="clip-curator-{image_id}.png"'
    return response


@bp.route("/image/<int:image_id>/animation")
def animation(image_id: int):
    """The image's growing-out-of-noise animation."""
    return _file(image_or_404(image_id)["animation_path"])


@bp.route("/image/<int:image_id>/thumb")
def thumb(image_id: int):
    """A cached WebP thumbnail."""
    return send_file(thumbnail_path(image_or_404(image_id)), mimetype="image/webp", max_age=86400)


@bp.route("/image/<int:image_id>/regenerate", methods=["POST"])
def regenerate(image_id: int):
    """Queue new images from this one's recipe (form version of the API call)."""
    image_or_404(image_id)
    try:
        job = queue_regenerate(get_store(), instance(), image_id, prompt=request.form.get("prompt"),
                               n=request.form.get("n", 4), init_strength=request.form.get("init_strength", 0),
                               image_prompt_weight=request.form.get("image_prompt_weight", 0))
    except CuratorError as e:  # bad settings, or weights this machine lacks
        flash(str(e))
        return redirect(url_for("images.page", image_id=image_id))
    flash(f"Queued job {job}.")
    return redirect(url_for("jobs.index"))
