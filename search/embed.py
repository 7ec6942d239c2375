"""CLIP embeddings of gallery images and query texts, with the same loading code as generation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gallery.errors import BadRequest
from gallery.imaging import center_square, load_rgb
from gallery.instance import Instance
from gallery.store import Store
from generate.presets import clip_name_for_id

BATCH = 32


def search_clip_name(store: Store | None, instance: Instance) -> str:
    """Which CLIP the gallery searches with.

    The instance setting ``search_clip`` (or $CLIP_CURATOR_SEARCH_CLIP) wins; otherwise the CLIP
    that embedded most of the gallery, so a fresh gallery searches without re-embedding; an empty
    gallery uses the tiny CLIP.
    """
    name = instance.config().search_clip
    if name:
        return name
    counts = store.embedding_models() if store is not None else {}
    return clip_name_for_id(next(iter(counts))) if counts else "tiny"


class Embedder:
    """Embeds texts and image files with one CLIP; ``id`` labels the vectors it makes."""

    def __init__(self, clip):
        self.clip = clip
        self.id = clip.id

    def texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 embeddings of texts."""
        return self.clip.encode_text(texts).cpu().numpy().astype(np.float32)

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        """Unit-norm float32 embeddings of PIL images (centre square, resized)."""
        size = self.clip.image_size
        batch = [torch.from_numpy(np.array(center_square(im.convert("RGB"), size))).permute(2, 0, 1).float().div(255)
                 for im in images]
        return self.clip.embed_pixels(torch.stack(batch)).cpu().numpy().astype(np.float32)

    def files(self, paths: list[Path], progress=None) -> list[np.ndarray | BadRequest]:
        """Embeddings of image files in batches; an unreadable file gives its BadRequest in its place."""
        out: list = [None] * len(paths)
        for start in range(0, len(paths), BATCH):
            chunk = list(range(start, min(start + BATCH, len(paths))))
            good, images = [], []
            for i in chunk:
                try:
                    images.append(load_rgb(paths[i]))
                    good.append(i)
                except BadRequest as e:
                    out[i] = e
            if images:
                for i, v in zip(good, self.pixels(images)):
                    out[i] = v
            if progress:
                progress(len(chunk))
        return out
