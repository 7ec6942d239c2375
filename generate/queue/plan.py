"""The recipe of each image of a job: its seed, its own prompt from a template, its guide images.

Image ``i`` of a job is seeded ``job.seed + i``; a template's expansion and the guides CLIP picks
for it follow from that seed, so an image's recipe is the same whichever worker makes it and
however often. Images whose recipes differ only by seed are sampled together in batches.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Job, Store

from ..guides import pick, text_vector, with_guides
from ..models import ModelCache
from ..prompts import parse_prompt
from ..variations import Expander


def _without_seed(recipe: Recipe) -> str:
    d = recipe.to_dict()
    d.pop("seed")
    return json.dumps(d, sort_keys=True)


class ImagePlan:
    """Works out image recipes for one job."""

    def __init__(self, job: Job, store: Store, instance: Instance, models: ModelCache, device: torch.device):
        self.job, self.store, self.models, self.device = job, store, models, device
        self.recipe = Recipe.from_json(job.recipe)
        self.expander = Expander(self.recipe, job.n, instance)
        self._texts: dict[str, np.ndarray] = {}

    def image_recipe(self, index: int) -> Recipe:
        """The complete recipe of image ``index``."""
        seed = self.job.seed + index
        recipe = self.expander.image_recipe(self.recipe.with_seed(seed), index, seed)
        if recipe.guides and not recipe.guide_images:
            clip = self.models.clip(recipe.clip_model, self.device)
            if recipe.prompt not in self._texts:
                self._texts[recipe.prompt] = text_vector(clip, parse_prompt(recipe.prompt))
            recipe = with_guides(recipe, pick(self.store, recipe, seed, self._texts[recipe.prompt], clip.id))
        return recipe

    def batches(self, indices: list[int], size: int) -> list[tuple[Recipe, list[int]]]:
        """Consecutive runs of ``indices`` whose recipes differ only by seed, at most ``size`` long."""
        out: list[tuple[Recipe, list[int]]] = []
        last = None
        for i in indices:
            recipe = self.image_recipe(i)
            key = _without_seed(recipe)
            if out and key == last and len(out[-1][1]) < size:
                out[-1][1].append(i)
            else:
                out.append((recipe, [i]))
                last = key
        return out
