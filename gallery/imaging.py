"""Opening image files safely, and the one centre-crop every consumer of pixels uses.

Every image a user hands the product (an init image, an image prompt, a file to reproduce, a
folder to import, a gallery file to thumbnail) is opened here: the size in its header is checked
against ``MAX_PIXELS`` before a single pixel is decoded, so a 20000x20000 PNG costs nothing and
gets one line naming the file and the limit, and every decoding failure is one line too.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from .errors import BadRequest, ImageTooLarge
from .files import atomic_write

# 8192 x 8192: well above any photograph or upscale the product handles, and below Pillow's own
# decompression-bomb threshold, so a larger file is refused here with a clear line.
MAX_PIXELS = 8192 * 8192
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _refused(error: type[BadRequest], message: str, reason: str) -> BadRequest:
    # ``reason`` is the message without the file's name, for reports that list names already.
    err = error(message)
    err.reason = reason
    return err


@contextmanager
def open_image(path: str | Path, error: type[BadRequest] = BadRequest,
               max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """Open and fully decode an image file, or raise ``error`` in one line naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise _refused(error, f"image file not found: {path}", "not found") from None
    except IsADirectoryError:
        raise _refused(error, f"{path} is a folder, not an image file", "a folder") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        reason = f"over the limit of {max_pixels:,} pixels"
        raise _refused(ImageTooLarge, f"{path}: image is {reason}", reason) from None
    except _DECODE_ERRORS as e:
        raise _refused(error, f"cannot read image {path}: {type(e).__name__}", f"unreadable ({type(e).__name__})") \
            from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            reason = f"{w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,}"
            raise _refused(ImageTooLarge, f"{path}: {reason}", reason)
        try:
            im.load()
        except _DECODE_ERRORS as e:
            reason = f"truncated or corrupt ({type(e).__name__})"
            raise _refused(error, f"cannot read image {path}: {reason}", reason) from None
        yield im


def load_rgb(path: str | Path, error: type[BadRequest] = BadRequest) -> Image.Image:
    """An image file as a decoded RGB image (see ``open_image``)."""
    with open_image(path, error) as im:
        return im.convert("RGB")


def center_square(im: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """The largest centred square of an image, resized to size x size."""
    w, h = im.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return im.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), resample)


def write_png(image: Image.Image, dest: Path, pnginfo=None) -> None:
    """Write a PNG atomically (temp file, fsync, rename), with optional text chunks."""
    with atomic_write(dest) as tmp:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
