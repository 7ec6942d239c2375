"""What every view needs: the store per request, the app's models, thumbnails, and queries."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from flask import abort, current_app, g
from PIL import Image

from generate.errors import ImageNotFound, JobNotFound

from .store import Store


def init_app(app) -> None:
    """Close the request's store on teardown; models are shared per app, loaded on first use."""
    app.teardown_appcontext(close_store)
    app.extensions["clip_curator"] = {"models": None, "searcher_lock": threading.Lock(), "searchers": {}}


def instance() -> Path:
    """The instance folder."""
    return Path(current_app.config["INSTANCE"])


def get_store() -> Store:
    """This request's store connection (opened lazily)."""
    if "store" not in g:
        g.store = Store(current_app.config["DATABASE"])
    return g.store


def close_store(_exc=None) -> None:
    """Close the request's connection, if it opened one."""
    store = g.pop("store", None)
    if store is not None:
        store.close()


def image_or_404(image_id: int) -> dict:
    """An image row, or a 404 naming the id."""
    try:
        return get_store().get_image(image_id)
    except ImageNotFound:
        abort(404, f"Image id {image_id} doesn't exist.")


def job_or_404(job_id: int):
    """A job, or a 404 naming the id."""
    try:
        return get_store().get_job(job_id)
    except JobNotFound:
        abort(404, f"Job id {job_id} doesn't exist.")


def models():
    """The app's ModelCache (one per app, loaded lazily)."""
    ext = current_app.extensions["clip_curator"]
    if ext["models"] is None:
        from generate.models import ModelCache

        ext["models"] = ModelCache(instance(), progress=False)
    return ext["models"]


def searcher():
    """A Searcher over this request's store with the gallery's search CLIP."""
    import torch

    from search.embed import Embedder, search_clip_name
    from search.index import GalleryIndex
    from search.query import Searcher

    ext = current_app.extensions["clip_curator"]
    store = get_store()
    name = search_clip_name(store, instance())
    with ext["searcher_lock"]:
        embedder = ext["searchers"].get(name)
        if embedder is None:
            embedder = ext["searchers"][name] = Embedder(models().clip(name, torch.device("cpu")))
        index = ext.setdefault("indexes", {}).get(embedder.id)
        if index is None:
            # The index outlives requests, so it reads through a connection of its own.
            index = ext["indexes"][embedder.id] = _LockedIndex(
                GalleryIndex(Store(current_app.config["DATABASE"]), embedder.id, instance() / "index"))
    s = Searcher(store, embedder, instance() / "index")
    s.index = index
    return s


class _LockedIndex:
    """A GalleryIndex shared by request threads: one sync or search at a time."""

    def __init__(self, index):
        self.index = index
        self.lock = threading.Lock()

    def search(self, *args, **kwargs):
        with self.lock:
            return self.index.search(*args, **kwargs)


def thumbnail_path(row: dict) -> Path:
    """The cached thumbnail of an image, made once on first request."""
    size = current_app.config["THUMB_SIZE"]
    dest = instance() / "thumbs" / f"{row['id'] // 1000:04d}" / f"{row['id']}-{size}.webp"
    if dest.exists():
        return dest
    src = instance() / row["path"]
    if not src.is_file():
        abort(404, f"Image id {row['id']} has no file.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = size / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        elif max(im.size) < size // 2:  # tiny-preset images: enlarge crisply so they are visible
            k = max(1, size // max(im.size))
            im = im.resize((im.width * k, im.height * k), Image.NEAREST)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        im.save(tmp, format="WEBP", quality=85)
        os.replace(tmp, dest)
    return dest
