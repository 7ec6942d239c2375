"""Nearest-neighbour search over unit-norm CLIP embeddings: an exact scan, or hnswlib when large.

Below ``EXACT_BELOW`` vectors an exact numpy scan is used: at 20k x 512 it answers in about a
millisecond with perfect recall and needs no build, no file and no staleness checks, so an
approximate index would only add cost. Above it an hnswlib HNSW graph (Malkov & Yashunin 2018)
answers in well under a millisecond at 1M vectors.

The hnswlib file is a derived cache of the database: it is saved beside a small JSON header
(model, dimension, ids, size and a checksum of the file) and any mismatch with the database, a
truncated file or another model's file makes it be rebuilt or topped up, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXACT_BELOW = 20_000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128


def exact_search(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, cosine scores) of unit-norm vectors against one unit-norm query."""
    if len(ids) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = vectors @ query.astype(np.float32)
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return ids[top], scores[top]


def _fingerprint(path: Path) -> str:
    """Cheap checksum of an index file: its size and the hashes of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()


@dataclass
class IndexHeader:
    """What the saved index claims to hold."""

    model: str
    dim: int
    count: int
    last_id: int
    max_elements: int
    fingerprint: str
    ids_sum: int
    deleted: list

    @classmethod
    def read(cls, path: Path) -> "IndexHeader | None":
        """The header, or None if missing or unreadable."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class HnswIndex:
    """An hnswlib inner-product index over unit vectors, keyed by image id."""

    def __init__(self, dim: int, max_elements: int = 1024):
        import hnswlib

        self.dim = dim
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=max(max_elements, 16), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M,
                              allow_replace_deleted=True)
        self.index.set_ef(HNSW_EF_SEARCH)
        self.live: set[int] = set()
        self.deleted: set[int] = set()

    @property
    def max_elements(self) -> int:
        """Capacity before a resize."""
        return self.index.get_max_elements()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or update) vectors; grows the index as needed."""
        if len(ids) == 0:
            return
        need = self.index.get_current_count() + len(ids)
        if need > self.max_elements:
            self.index.resize_index(max(need, self.max_elements * 2))
        self.index.add_items(vectors.astype(np.float32), ids.astype(np.int64), replace_deleted=True)
        self.live.update(int(i) for i in ids)
        self.deleted.difference_update(int(i) for i in ids)

    def remove(self, ids) -> None:
        """Mark ids deleted so they are never returned."""
        for i in ids:
            if int(i) in self.live:
                self.index.mark_deleted(int(i))
                self.live.discard(int(i))
                self.deleted.add(int(i))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, cosine scores)."""
        k = min(k, len(self.live))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        self.index.set_ef(max(HNSW_EF_SEARCH, k))
        labels, dist = self.index.knn_query(query.astype(np.float32)[None], k=k)
        return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)

    def save(self, path: Path, model: str, last_id: int) -> None:
        """Write the index and its header atomically (header last: it vouches for the file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        self.index.save_index(str(tmp))
        os.replace(tmp, path)
        header = IndexHeader(model, self.dim, len(self.live), last_id, self.max_elements, _fingerprint(path),
                             int(sum(self.live)), sorted(self.deleted))
        htmp = path.with_suffix(".json.tmp")
        htmp.write_text(json.dumps(header.__dict__))
        os.replace(htmp, path.with_suffix(".json"))

    @classmethod
    def load(cls, path: Path, model: str, dim: int) -> "tuple[HnswIndex, IndexHeader] | None":
        """Load a saved index if its header matches the file and the model; None otherwise."""
        import hnswlib

        header = IndexHeader.read(path.with_suffix(".json"))
        if header is None or not path.is_file():
            return None
        if header.model != model or header.dim != dim or _fingerprint(path) != header.fingerprint:
            return None
        self = cls.__new__(cls)
        self.dim = dim
        self.index = hnswlib.Index(space="ip", dim=dim)
        try:
            self.index.load_index(str(path), max_elements=header.max_elements, allow_replace_deleted=True)
        except (RuntimeError, ValueError):
            return None
        self.index.set_ef(HNSW_EF_SEARCH)
        # hnswlib still lists labels marked deleted; the header remembers which they are.
        self.deleted = set(header.deleted)
        live = set(self.index.get_ids_list()) - self.deleted
        self.live = live
        if len(live) != header.count or sum(live) != header.ids_sum:
            return None
        return self, header


class GalleryIndex:
    """The vectors of one CLIP model in the store, searchable, kept in step with the database.

    Small galleries are scanned exactly from memory; large ones use an hnswlib file under
    ``folder`` that is checked against the database on every open and query (count, last id,
    sum of ids, model) and topped up, pruned or rebuilt when it disagrees.
    """

    def __init__(self, store, model: str, folder: Path, exact_below: int = EXACT_BELOW):
        self.store = store
        self.model = model
        self.folder = Path(folder)
        self.exact_below = exact_below
        self._stats = None
        self._exact: tuple[np.ndarray, np.ndarray] | None = None
        self._hnsw: HnswIndex | None = None
        self.rebuilt = False  # whether the last sync had to rebuild from scratch (for reports and tests)

    @property
    def path(self) -> Path:
        """The hnswlib file of this model."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model)
        return self.folder / f"{safe}.hnsw"

    @property
    def kind(self) -> str:
        """'exact' or 'hnsw', whichever serves the current size."""
        return "exact" if self.store.embedding_stats(self.model)[0] < self.exact_below else "hnsw"

    def sync(self, force_rebuild: bool = False, progress=None) -> None:
        """Bring the in-memory (and on-disk) index in step with the database."""
        stats = self.store.embedding_stats(self.model)
        if stats == self._stats and not force_rebuild:
            return
        self.rebuilt = False
        if stats[0] < self.exact_below:
            ids, mats = [], []
            for i, m in self.store.iter_embeddings(self.model):
                ids.append(i)
                mats.append(m)
            self._exact = (np.concatenate(ids), np.concatenate(mats)) if ids else (
                np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32))
            self._hnsw = None
        else:
            self._exact = None
            self._sync_hnsw(stats, force_rebuild, progress)
        self._stats = stats

    def _sync_hnsw(self, stats, force_rebuild: bool, progress) -> None:
        count, last_id, ids_sum = stats
        dim = self._dim()
        loaded = None if force_rebuild else (
            (self._hnsw, None) if self._hnsw is not None else HnswIndex.load(self.path, self.model, dim))
        if loaded is None:
            index = HnswIndex(dim, max(count, 1024))
            for ids, mat in self.store.iter_embeddings(self.model):
                index.add(ids, mat)
                if progress:
                    progress(len(ids))
            self.rebuilt = True
        else:
            index = loaded[0]
            added = self.store.iter_embeddings(self.model, after_id=max(index.live, default=0))
            for ids, mat in added:
                index.add(ids, mat)
                if progress:
                    progress(len(ids))
            if len(index.live) != count or sum(index.live) != ids_sum:
                # Deletions, or rows added below the last id: reconcile by set difference.
                in_db = self.store.embedding_ids(self.model)
                index.remove(index.live - in_db)
                missing = in_db - index.live
                for ids, mat in self.store.iter_embeddings(self.model, ids=missing):
                    index.add(ids, mat)
        index.save(self.path, self.model, last_id)
        self._hnsw = index

    def _dim(self) -> int:
        for _, mat in self.store.iter_embeddings(self.model, chunk=1):
            return mat.shape[1]
        return 0

    def search(self, query: np.ndarray, k: int, allowed: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) for a unit query, optionally among ``allowed`` ids only."""
        self.sync()
        if allowed is not None and (len(allowed) <= self.exact_below or self._hnsw is None):
            # A filter that leaves few candidates: scan exactly those, from the database.
            ids, mats = [], []
            for i, m in self.store.iter_embeddings(self.model, ids=allowed):
                ids.append(i)
                mats.append(m)
            if not ids:
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            return exact_search(np.concatenate(mats), np.concatenate(ids), query, k)
        if self._hnsw is None:
            ids, mat = self._exact
            return exact_search(mat, ids, query, k)
        if allowed is None:
            return self._hnsw.search(query, k)
        # A broad filter on a large gallery: over-fetch approximate results and filter them.
        allow = set(allowed)
        fetch = k * 4
        while True:
            ids, scores = self._hnsw.search(query, fetch)
            keep = np.array([i in allow for i in ids.tolist()], dtype=bool)
            if keep.sum() >= k or fetch >= len(self._hnsw.live):
                return ids[keep][:k], scores[keep][:k]
            fetch *= 4
