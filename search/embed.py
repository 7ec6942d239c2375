"""CLIP embeddings of gallery images and query texts, with the same loading code as generation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generate import presets as P
from generate.errors import BadRequest

CONFIG_NAME = "config.json"
BATCH = 32


def clip_name_for_id(model_id: str) -> str:
    """The CLIP preset name or open_clip 'MODEL/TAG' that produces embeddings labelled ``model_id``."""
    for name, spec in P.CLIP_PRESETS.items():
        if spec.id == model_id:
            return name
    return model_id


def read_config(instance: Path) -> dict:
    """The instance's settings file (empty when absent or unreadable)."""
    try:
        return json.loads((Path(instance) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return {}


def search_clip_name(store, instance: Path) -> str:
    """Which CLIP the gallery searches with.

    The instance setting ``search_clip`` (or $CLIP_CURATOR_SEARCH_CLIP) wins; otherwise the CLIP
    that embedded most of the gallery, so a fresh gallery searches without re-embedding; an empty
    gallery uses the tiny CLIP.
    """
    name = os.environ.get("CLIP_CURATOR_SEARCH_CLIP") or read_config(instance).get("search_clip")
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
        batch = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((size, size), Image.BICUBIC)
            batch.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255))
        return self.clip.embed_pixels(torch.stack(batch)).cpu().numpy().astype(np.float32)

    def files(self, paths: list[Path], progress=None) -> list[np.ndarray | BadRequest]:
        """Embeddings of image files in batches; an unreadable file gives a BadRequest in its place."""
        out: list = [None] * len(paths)
        for start in range(0, len(paths), BATCH):
            chunk = list(range(start, min(start + BATCH, len(paths))))
            good, images = [], []
            for i in chunk:
                try:
                    with Image.open(paths[i]) as im:
                        images.append(im.convert("RGB"))
                    good.append(i)
                except (OSError, SyntaxError, ValueError) as e:
                    out[i] = BadRequest(f"cannot read {paths[i]}: {type(e).__name__}")
            if images:
                for i, v in zip(good, self.pixels(images)):
                    out[i] = v
            if progress:
                progress(len(chunk))
        return out
