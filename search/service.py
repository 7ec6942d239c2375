"""Building the real search objects, and keeping the embeddings and the index complete.

The CLI and the site both get their ``Searcher`` from ``open_searcher``: the gallery's search CLIP
(loaded through the model cache), its index (the instance's index folder, with the exact-scan
threshold from the instance settings) and the store, passed in whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from gallery.instance import Instance
from gallery.store import Store
from generate.models import ModelCache

from .embed import Embedder, search_clip_name
from .index import GalleryIndex
from .query import Searcher


def open_index(store: Store, instance: Instance, model_id: str, background: bool = False) -> GalleryIndex:
    """The vector index of one CLIP's embeddings, in the instance's index folder."""
    return GalleryIndex(store, model_id, instance.index_dir, exact_below=instance.config().exact_below,
                        background_repair=background)


def open_embedder(store: Store, instance: Instance, models: ModelCache, device: torch.device | None = None) -> Embedder:
    """An Embedder with the gallery's search CLIP."""
    return Embedder(models.clip(search_clip_name(store, instance), device or torch.device("cpu")))


def open_searcher(store: Store, instance: Instance, models: ModelCache, device: torch.device | None = None) -> Searcher:
    """A Searcher over the store with the gallery's search CLIP and its index."""
    embedder = open_embedder(store, instance, models, device)
    return Searcher(store, embedder, open_index(store, instance, embedder.id))


@dataclass
class IndexReport:
    """What bringing the embeddings and the index up to date did."""

    embedded: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    total: int = 0
    kind: str = "exact"
    status: str = ""


def update_index(searcher: Searcher, instance: Instance, rebuild: bool = False,
                 on_embed: Callable[[int], None] | None = None, on_index: Callable[[int], None] | None = None,
                 on_total: Callable[[int, int], None] | None = None) -> IndexReport:
    """Embed the images the search CLIP has not seen, then bring (or rebuild) the index in step."""
    store, emb = searcher.store, searcher.embedder
    report = IndexReport()
    todo = store.images_without_embedding(emb.id)
    if on_total:
        on_total(len(todo), store.embedding_stats(emb.id)[0] + len(todo))
    if todo:
        vectors = emb.files([instance.root / r.path for r in todo], progress=on_embed)
        good = [(r.id, v) for r, v in zip(todo, vectors) if not isinstance(v, Exception)]
        report.skipped = [(r.id, str(v)) for r, v in zip(todo, vectors) if isinstance(v, Exception)]
        store.put_embeddings(emb.id, good)
        report.embedded = len(good)
    report.total = store.embedding_stats(emb.id)[0]
    if rebuild:
        searcher.index.sync(force_rebuild=True, progress=on_index)
    else:
        searcher.index.repair(progress=on_index)
    report.kind = searcher.index.kind
    report.status = searcher.index.status
    return report
