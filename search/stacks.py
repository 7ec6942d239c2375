"""Stacks: near-duplicates and an image's own upscales shown as one cell of the grid.

Seeds of one prompt often converge to the same picture; their CLIP embeddings then lie closer
than any two different pictures do. A page's images whose embeddings have a cosine similarity
of at least the threshold are joined (single linkage, so a chain of near-copies is one stack);
an upscale always joins its parent. The newest image of a stack, or its best (starred, then
rated), leads it; the others are its members, shown on demand.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gallery.instance import STACK_THRESHOLD
from gallery.store import ImageRow, Store


@dataclass
class Stack:
    """One cell of the grid: its lead image and the images stacked under it."""

    lead: ImageRow
    members: list[ImageRow] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many images the cell stands for."""
        return 1 + len(self.members)


def _find(parent: dict, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def groups(ids: list[int], vectors: np.ndarray, threshold: float, links: list[tuple[int, int]] = ()) -> list[list[int]]:
    """Connected groups of ids whose vectors are at least ``threshold`` alike, or that ``links`` join."""
    parent = {i: i for i in ids}
    if len(ids) > 1 and len(vectors):
        sims = vectors @ vectors.T
        a, b = np.nonzero(np.triu(sims >= threshold, k=1))
        links = [*links, *((ids[i], ids[j]) for i, j in zip(a.tolist(), b.tolist()))]
    for x, y in links:
        if x in parent and y in parent:
            parent[_find(parent, x)] = _find(parent, y)
    out: dict[int, list[int]] = {}
    for i in ids:
        out.setdefault(_find(parent, i), []).append(i)
    return list(out.values())


def _lead_key(row: ImageRow):
    return (row.upscaler is None, row.starred, row.rating, row.id)


def stack_page(store: Store, rows: list[ImageRow], model: str | None, threshold: float = STACK_THRESHOLD) -> list[Stack]:
    """The rows of a page as stacks, in the page's order of their leads, each with its upscales."""
    by_id = {r.id: r for r in rows}
    ids = list(by_id)
    vec_ids, vectors = [], np.empty((0, 0), np.float32)
    if model is not None and ids:
        chunks = list(store.iter_embeddings(model, ids=ids))
        if chunks:
            vec_ids = [int(i) for c in chunks for i in c[0]]
            vectors = np.concatenate([c[1] for c in chunks])
    links = [(r.id, r.parent_id) for r in rows if r.parent_id in by_id]
    links += [(g[0], other) for g in groups(vec_ids, vectors, threshold) for other in g[1:]]
    children: dict[int, list[ImageRow]] = {}
    for child in store.children_of(ids):
        if child.id not in by_id:
            children.setdefault(child.parent_id, []).append(child)
    position = {i: n for n, i in enumerate(ids)}
    stacks = []
    for group in groups(ids, np.empty((0, 0)), threshold, links):
        members = sorted((by_id[i] for i in group), key=_lead_key, reverse=True)
        rest = sorted(members[1:], key=lambda r: position[r.id])
        stacks.append(Stack(members[0], rest + [c for i in group for c in children.get(i, [])]))
    return sorted(stacks, key=lambda st: min(position[i] for i in [st.lead.id, *(m.id for m in st.members)]
                                             if i in position))
