"""Thumbnails: made once per image on first request, re-made when the image changes, never stale."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from gallery.errors import BadRequest, NotFound
from gallery.files import atomic_write
from gallery.imaging import open_image
from gallery.instance import Instance
from gallery.store import ImageRow


class ThumbnailUnavailable(NotFound):
    """The image's file is gone, or cannot be decoded."""


def thumbnail(instance: Instance, row: ImageRow, size: int) -> Path:
    """The cached WebP thumbnail of an image, made (or re-made) from its file when needed."""
    src = instance.file(row.path)
    dest = instance.thumb_path(row.id, size)
    if src is None or not src.is_file():
        dest.unlink(missing_ok=True)  # never serve a thumbnail of a file that is gone
        raise ThumbnailUnavailable(f"image {row.id} has no file")
    if dest.is_file() and dest.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return dest
    try:
        with open_image(src) as im:
            im = im.convert("RGB")
    except BadRequest:
        dest.unlink(missing_ok=True)
        raise ThumbnailUnavailable(f"image {row.id}'s file cannot be read") from None
    scale = size / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    elif max(im.size) < size // 2:  # tiny-preset images: enlarge crisply so they are visible
        k = max(1, size // max(im.size))
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    with atomic_write(dest) as tmp:
        im.save(tmp, format="WEBP", quality=85)
    return dest
