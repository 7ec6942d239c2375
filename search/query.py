"""Queries: a phrase, weighted text arithmetic, or "more like this", with filters and paging.

A query is a plain phrase (``child's drawing``) or quoted terms added and subtracted, as in
rclip: ``"owl" + "watercolor" - "photo"``. Term embeddings are summed with their signs and
re-normalised. Results are ranked by cosine similarity and returned with their scores; there is
no fixed similarity cutoff, since no single threshold fits every query.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gallery.errors import BadRequest
from gallery.store import Filters, ImageRow, Store

from .embed import Embedder
from .index import GalleryIndex

MAX_QUERY_CHARS = 1000
MAX_K = 500
_TERM = re.compile(r'\s*([+-]?)\s*"([^"]*)"\s*')


@dataclass
class Hit:
    """One search result."""

    id: int
    score: float
    row: ImageRow


class Results(list):
    """A page of hits, and whether more follow it."""

    def __init__(self, hits: list[Hit], more: bool):
        super().__init__(hits)
        self.more = more


def parse_query(text: str) -> list[tuple[str, float]]:
    """(phrase, sign) terms of a query; BadRequest when there is nothing to search for."""
    if text is None or not text.strip():
        raise BadRequest("the search query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise BadRequest(f"the search query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    text = text.strip()
    terms = []
    if '"' in text:
        pos = 0
        while pos < len(text):
            m = _TERM.match(text, pos)
            if not m or m.end() == pos:
                raise BadRequest('malformed query: write a phrase, or quoted terms like "owl" + "watercolor" - "photo"')
            terms.append((m.group(2).strip(), -1.0 if m.group(1) == "-" else 1.0))
            pos = m.end()
    else:
        terms = [(text, 1.0)]
    terms = [(t, s) for t, s in terms if t]
    if not terms or not any(re.search(r"\w", t) for t, _ in terms):
        raise BadRequest("the search query has no words to search for")
    if not any(s > 0 for _, s in terms):
        raise BadRequest("the search query only subtracts; add a term to look for")
    return terms


class Searcher:
    """Answers queries over one CLIP's embeddings in the store, through an index of them."""

    def __init__(self, store: Store, embedder: Embedder, index: GalleryIndex):
        self.store = store
        self.embedder = embedder
        self.index = index

    def text_vector(self, query: str) -> np.ndarray:
        """The unit query vector of a phrase or of text arithmetic."""
        terms = parse_query(query)
        vecs = self.embedder.texts([t for t, _ in terms])
        v = (vecs * np.array([s for _, s in terms], dtype=np.float32)[:, None]).sum(0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def text(self, query: str, k: int = 12, offset: int = 0, filters: Filters = Filters()) -> Results:
        """Images best matching a text query."""
        return self._run(self.text_vector(query), k, offset, filters, exclude=set())

    def like(self, image_id: int, k: int = 12, offset: int = 0, filters: Filters = Filters()) -> Results:
        """Images most like a gallery image (itself, its parent and its upscales left out)."""
        row = self.store.get_image(image_id)
        v = self.store.embedding(image_id, self.embedder.id)
        if v is None:
            raise BadRequest(f"image {image_id} has no {self.embedder.id} embedding yet; run: clip-curator index")
        family = {image_id} | ({row.parent_id} if row.parent_id else set())
        family |= {c.id for c in self.store.children(image_id)}
        return self._run(v, k, offset, filters, exclude=family)

    def _run(self, vector: np.ndarray, k: int, offset: int, filters: Filters, exclude: set) -> Results:
        if not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be from 1 to {MAX_K}, not {k}")
        if offset < 0:
            raise BadRequest(f"offset must not be negative, not {offset}")
        allowed = self.store.filter_ids(filters)
        if not filters.trash:
            exclude = exclude | self.store.rejected_ids()  # the trash is out of sight until restored
        if allowed is not None and exclude:
            allowed = [i for i in allowed if i not in exclude]
        # One more than asked for says whether another page follows.
        ids, scores = self.index.search(vector, offset + k + 1 + len(exclude), allowed)
        pairs = [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) not in exclude][offset:offset + k + 1]
        rows = {r.id: r for r in self.store.images_by_ids([i for i, _ in pairs])}
        # A row deleted since the index last synced is simply not returned.
        return Results([Hit(i, s, rows[i]) for i, s in pairs[:k] if i in rows], more=len(pairs) > k)
