"""Guide images from the artist's own collection, picked by CLIP for each image of a job.

For a job with ``guides`` K, each image gets K gallery images from the recipe's pool (starred,
all, rated at least N, or a collection), ranked by the similarity of their CLIP embeddings to the
prompt's, and drawn among the top candidates with the image's own seed: the job varies, and an
image's picks are the same every time. Images of a collection named in the prompt ("... in the
style of my watercolours") rank higher and pull twice as hard. The picks become weighted image
prompts (and, with ``guide_init``, the closest one the init image); the image's recipe records
them by id and content hash, so ``reproduce`` uses the same ones, or says which one is gone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from gallery.errors import BadRequest
from gallery.recipe import Recipe
from gallery.store import Filters, Store

NAMED_BONUS = 0.05  # added to the cosine similarity of images in a collection the prompt names
NAMED_WEIGHT = 2.0
TEMPERATURE = 0.05  # of the softmax over similarities the draw uses: lower keeps closer to the top


@dataclass(frozen=True)
class Guide:
    """A picked guide image."""

    image_id: int
    sha256: str
    weight: float
    similarity: float


def pool_filters(store: Store, pool: str) -> Filters:
    """The gallery filters a guide pool stands for (CollectionNotFound for an unknown collection)."""
    kind, _, arg = pool.partition(":")
    if kind == "starred":
        return Filters(starred=True, originals=True)
    if kind == "rating":
        return Filters(min_rating=int(arg), originals=True)
    if kind == "collection":
        store.collection_id(arg)
        return Filters(collection=arg, originals=True)
    return Filters(originals=True)


def candidates(store: Store, pool: str, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids and embeddings (of this CLIP) of the pool's images; BadRequest when there are none."""
    ids = store.ids_matching(pool_filters(store, pool))
    chunks = list(store.iter_embeddings(clip_id, ids=ids)) if ids else []
    if not chunks:
        raise BadRequest(f"no guide images: the pool {pool!r} holds no image with a {clip_id} embedding "
                         "(star some, pick another pool, or run `clip-curator index`)")
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def pick(store: Store, recipe: Recipe, seed: int, text: np.ndarray, clip_id: str,
         pool: tuple[np.ndarray, np.ndarray] | None = None) -> list[Guide]:
    """K guides for the image seeded ``seed``, closest first; ``text`` is the prompt's unit CLIP embedding.

    ``pool``: the pool's ``candidates``, when the caller has them already (a job picks per image).
    """
    ids, vectors = pool if pool is not None else candidates(store, recipe.guide_pool, clip_id)
    sims = vectors @ text.astype(np.float32)
    named = {i for name in store.collection_names_in(recipe.prompt)
             for i in store.ids_matching(Filters(collection=name))}
    boosted = np.isin(ids, list(named))
    score = sims + NAMED_BONUS * boosted
    k = min(recipe.guides, len(ids))
    top = np.argsort(-score, kind="stable")[:max(3 * k, k + 2)]
    p = np.exp((score[top] - score[top].max()) / TEMPERATURE)
    chosen = np.random.default_rng(seed).choice(top, size=k, replace=False, p=p / p.sum())
    chosen = sorted(chosen, key=lambda j: (-score[j], ids[j]))
    rows = {r.id: r for r in store.images_by_ids(int(ids[j]) for j in chosen)}
    return [Guide(int(ids[j]), rows[int(ids[j])].sha256 or "", recipe.guide_weight * (NAMED_WEIGHT if boosted[j] else 1),
                  float(sims[j])) for j in chosen]


def with_guides(recipe: Recipe, guides: list[Guide]) -> Recipe:
    """An image's recipe with its guides as image prompts (``generators.with_init`` starts it from one)."""
    changes = {
        "image_prompts": (*recipe.image_prompts, *(f"{g.image_id}:{g.weight:g}" for g in guides)),
        "guide_images": tuple(f"{g.image_id}:{g.sha256}" for g in guides),
    }
    return dataclasses.replace(recipe, **changes)


def check_recorded(store: Store | None, recipe: Recipe) -> None:
    """An image's recorded guides are all in the gallery, unchanged; else one line says which is not."""
    for spec in recipe.guide_images:
        image_id, sha = spec.split(":")
        row = next(iter(store.images_by_ids([int(image_id)])), None) if store is not None else None
        if row is None:
            raise BadRequest(f"guide image {image_id} has since been deleted from the gallery (its content hash "
                             f"was {sha[:12]}); import that file again to make images from this recipe")
        if row.sha256 and row.sha256 != sha:
            raise BadRequest(f"guide image {image_id} has changed since this image was made "
                             f"(content hash {row.sha256[:12]}, not {sha[:12]})")


def text_vector(clip, prompt_parts) -> np.ndarray:
    """The unit CLIP embedding of a prompt's positive parts, weighted."""
    positive = [p for p in prompt_parts if p.weight > 0] or list(prompt_parts)
    vecs = clip.encode_text([p.text for p in positive]).cpu().numpy()
    v = (vecs * np.array([p.weight for p in positive], np.float32)[:, None]).sum(0)
    return v / (np.linalg.norm(v) or 1.0)
