"""One image: its page, its files, and the regenerate form."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for

from gallery.errors import CuratorError
from generate import generators
from generate.queue import regenerate as queue_regenerate

from .context import get_store, instance, searcher
from .params import grid_query
from .thumbs import thumbnail

bp = Blueprint("images", __name__)


def _send(rel: str | None, max_age: int):
    """Send a file that lies inside the instance folder, never anything else."""
    path = instance().file(rel)
    if path is None or not path.is_file():
        abort(404, "No such file.")
    return send_file(path, max_age=max_age)


@bp.route("/image/<id:image_id>")
def page(image_id: int):
    """The image page: full image, animation, recipe, lineage, similar images, actions."""
    store = get_store()
    row = store.get_image(image_id)
    filters = grid_query().filters
    newer, older = store.neighbours(image_id, filters)
    similar = []
    try:
        similar = [h.row for h in searcher().like(image_id, k=8)]
    except CuratorError:  # no embedding yet, or the search CLIP is unavailable
        pass
    parent = store.get_image(row.parent_id) if row.parent_id else None
    origin = None  # the image a regeneration started from
    if row.job_id is not None:
        origin_id = store.get_job(row.job_id).params.get("parent")
        origin = store.images_by_ids([origin_id])[0] if origin_id and store.images_by_ids([origin_id]) else None
    recipe = row.recipe_dict
    guide_ids = [int(str(g).split(":")[0]) for g in recipe.get("guide_images") or [] if str(g).split(":")[0].isdigit()]
    present = {r.id: r for r in store.images_by_ids(guide_ids)}
    guides = [(i, present.get(i)) for i in guide_ids]  # None: deleted since
    return render_template("images/image.html", image=row, recipe=recipe, newer=newer, older=older,
                           similar=similar, parent=parent, children=store.children(image_id), filters=filters,
                           origin=origin, presets=available_presets(), source_name=_source_name(row),
                           guides=guides, collections=store.collections_of(image_id))


def _source_name(row) -> str | None:
    """The file name an imported image came from."""
    return row.source_path.replace("\\", "/").rsplit("/", 1)[-1] if row.source_path else None


def available_presets() -> list[str]:
    """Model presets whose weights this machine has (what a regeneration can use right now)."""
    return [name for name in generators.presets() if generators.weights_present(name, instance())]


@bp.route("/image/<id:image_id>/file")
def file(image_id: int):
    """The image file itself."""
    return _send(get_store().get_image(image_id).path, 3600)


@bp.route("/image/<id:image_id>/download")
def download(image_id: int):
    """The image file as a download named after its id."""
    response = _send(get_store().get_image(image_id).path, 3600)
    response.headers["Content-Disposition"] = f'attachment; filename="clip-curator-{image_id}.png"'
    return response


@bp.route("/image/<id:image_id>/animation")
def animation(image_id: int):
    """The image's growing-out-of-noise animation."""
    return _send(get_store().get_image(image_id).animation_path, 3600)


@bp.route("/image/<id:image_id>/thumb")
def thumb(image_id: int):
    """A cached WebP thumbnail."""
    path = thumbnail(instance(), get_store().get_image(image_id), current_app.config["THUMB_SIZE"])
    return send_file(path, mimetype="image/webp", max_age=86400)


@bp.route("/image/<id:image_id>/regenerate", methods=["POST"])
def regenerate(image_id: int):
    """Queue new images from this one's recipe (form version of the API call)."""
    get_store().get_image(image_id)
    form = {k: v for k, v in request.form.items() if k != "csrf_token"}
    try:
        job = queue_regenerate(get_store(), instance(), image_id, form)
    except CuratorError as e:  # bad settings, or weights this machine lacks
        flash(str(e), "error")
        return redirect(url_for("images.page", image_id=image_id))
    flash(f"Queued job {job.job_id}.", "success")
    return redirect(url_for("jobs.index"))
