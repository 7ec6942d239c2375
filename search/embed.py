"""CLIP embeddings of gallery images and query texts, with the same loading code as generation."""
from __future__ import annotations

import threading
from collections import OrderedDict
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
TEXT_CACHE = 1024  # query texts whose embeddings are kept (a few hundred KB at 512 dimensions)


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
    """Embeds texts and image files with one CLIP; ``id`` labels the vectors it makes.

    Text embeddings are kept in a small LRU cache: a search typed letter by letter, or the
    same phrase asked again, costs the text tower nothing the second time.
    """

    def __init__(self, clip, cache_size: int = TEXT_CACHE):
        self.clip = clip
        self.id = clip.id
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 embeddings of texts."""
        with self._lock:
            known = {t: self._cache[t] for t in texts if t in self._cache}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            fresh = self.clip.encode_text(missing, real_tokens_only=True).cpu().numpy().astype(np.float32)
            known.update(zip(missing, fresh))
        with self._lock:
            for t in dict.fromkeys(texts):
                self._cache[t] = known[t]
                self._cache.move_to_end(t)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return np.stack([known[t] for t in texts])

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
