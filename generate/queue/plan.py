"""The recipe of each image of a job: its seed, its own prompt from a template, its guide images.

Image ``i`` of a job is seeded ``job.seed + i``; a template's expansion and the guides CLIP picks
for it follow from that seed, so an image's recipe is the same whichever worker makes it and
however often. Images whose recipes differ only by seed are sampled together in batches.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import numpy as np
import torch

from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Job, Store

from ..generators import with_init
from ..guides import candidates, pick, text_vector, with_guides
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
        self._pools: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def image_recipe(self, index: int) -> Recipe:
        """The complete recipe of image ``index``."""
        seed = self.job.seed + index
        recipe = self.expander.image_recipe(self.recipe.with_seed(seed), index, seed)
        if recipe.guides and not recipe.guide_images:
            clip = self.models.clip(recipe.clip_model, self.device)
            if recipe.prompt not in self._texts:
                self._texts[recipe.prompt] = text_vector(clip, parse_prompt(recipe.prompt))
            key = (recipe.guide_pool, clip.id)
            if key not in self._pools:  # the pool as this run found it
                self._pools[key] = candidates(self.store, recipe.guide_pool, clip.id)
            picked = pick(self.store, recipe, seed, self._texts[recipe.prompt], clip.id, self._pools[key])
            recipe = with_guides(recipe, picked)
            if recipe.guide_init > 0 and picked and not recipe.init_image:  # from the closest one
                recipe = with_init(recipe, str(picked[0].image_id), recipe.guide_init)
        return recipe

    def batches(self, indices: Iterable[int], size: int) -> Iterator[tuple[Recipe, list[int]]]:
        """Consecutive runs of ``indices`` whose recipes differ only by seed, at most ``size`` long.

        Worked out as they are reached, so the first image starts at once and a stop is not kept waiting.
        """
        recipe, run, last = None, [], None
        for i in indices:
            this = self.image_recipe(i)
            key = _without_seed(this)
            if run and (key != last or len(run) == size):
                yield recipe, run
                run = []
            if not run:
                recipe, last = this, key
            run.append(i)
        if run:
            yield recipe, run
