"""Reproduce an image from its recipe: a gallery id, or any PNG clip-curator wrote."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gallery.errors import BadRequest, ImageNotFound
from gallery.imaging import load_rgb, write_png
from gallery.instance import Instance
from gallery.recipe import png_info, read_png_recipe
from gallery.store import Store

from .diffusion import to_uint8
from .generators import make, prepare
from .models import ModelCache, pick_device


@dataclass(frozen=True)
class Reproduction:
    """Where the new PNG went and how far its pixels are from the original's (None: sizes differ)."""

    path: Path
    max_difference: int | None


def source_file(source: str, instance: Instance, store: Store | None) -> Path:
    """The PNG a ``reproduce`` source names: a gallery image id, or a file path."""
    if not source.isdigit():
        return Path(source)
    if store is None:
        raise ImageNotFound(f"image {source} doesn't exist")
    path = instance.file(store.get_image(int(source)).path)
    if path is None:
        raise BadRequest(f"image {source} has no file inside the gallery")
    return path


def default_output(original: Path, instance: Instance) -> Path:
    """Where a reproduction goes when no file is named: the instance's own folder for them.

    Never beside the original: a job's folder is swept of files no row claims when it resumes.
    """
    return instance.reproduced_dir / f"{original.stem}-reproduced.png"


def reproduce(source: str, instance: Instance, store: Store | None, models: ModelCache, device: str = "auto",
              out: Path | None = None) -> Reproduction:
    """Regenerate the image a source names from the recipe in its PNG, and compare the pixels."""
    original = source_file(source, instance, store)
    recipe, extra = read_png_recipe(original)
    recipe = prepare(recipe, instance, store)
    pixels = to_uint8(make(recipe, models, pick_device(device), store).run([recipe.seed]))[0]
    out = Path(out) if out else default_output(original, instance)
    if out.suffix.lower() != ".png":
        raise BadRequest(f"{out}: reproductions are written as PNG; give the file a .png suffix")
    write_png(Image.fromarray(pixels), out, png_info(recipe, extra))
    before = np.asarray(load_rgb(original))
    diff = int(np.abs(before.astype(int) - pixels.astype(int)).max()) if before.shape == pixels.shape else None
    return Reproduction(out, diff)
