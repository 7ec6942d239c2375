"""Actions shared by the site, its JSON API and the CLI: queue regenerations and upscales."""
from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from gallery.recipe import Recipe, RecipeError
from generate.errors import BadRequest

MAX_REGENERATE = 100


def _number(value, name: str, lo: float, hi: float, cast=float):
    try:
        v = cast(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number from {lo} to {hi}, not {value!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be from {lo} to {hi}, not {v}")
    return v


def queue_regenerate(store, instance: Path, image_id: int, *, prompt: str | None = None, n=4,
                     init_strength=0.0, image_prompt_weight=0.0) -> int:
    """Queue a job with an image's recipe and new seeds; returns the job id.

    ``init_strength`` (0-1) starts from the image itself, keeping that fraction of the steps'
    worth of its composition; ``image_prompt_weight`` adds the image as a CLIP target.
    """
    from generate.jobs import check_recipe

    row = store.get_image(image_id)
    n = _number(n, "n", 1, MAX_REGENERATE, int)
    init_strength = _number(init_strength, "init strength", 0.0, 0.95)
    image_prompt_weight = _number(image_prompt_weight, "image prompt weight", 0.0, 10.0)
    try:
        recipe = Recipe.from_json(row["recipe"])
    except RecipeError:
        raise BadRequest(f"image {image_id} has no recipe to regenerate from") from None
    if not recipe.prompt and not prompt:
        raise BadRequest(f"image {image_id} has no prompt; write one")
    changes = {"seed": 0, "prompt": prompt.strip() if prompt is not None else recipe.prompt}
    if init_strength > 0:
        changes.update(init_image=str(image_id), skip_timesteps=int(round(recipe.steps * init_strength)))
    if image_prompt_weight > 0:
        changes["image_prompts"] = (*recipe.image_prompts, f"{image_id}:{image_prompt_weight:g}")
    recipe = check_recipe(dataclasses.replace(recipe, **changes), Path(instance), store)
    seed = secrets.randbelow(2 ** 31)
    return store.create_job("generate", recipe.to_json(), n, seed, {"parent": image_id}, steps=recipe.steps)


def queue_upscale(store, image_ids: list[int], model: str = "x4plus", skip_done: bool = True) -> int | None:
    """Queue one upscale job for these images; images already upscaled with this model are left out.

    Returns the job id, or None when there was nothing left to upscale (an existing unfinished
    job for the same images is returned instead of a duplicate).
    """
    from generate.upscale import MODELS

    if model not in MODELS:
        raise BadRequest(f"unknown upscaler {model!r}; choose one of: {', '.join(MODELS)}")
    ids = []
    for image_id in dict.fromkeys(int(i) for i in image_ids):
        row = store.get_image(image_id)
        if row["kind"] == "upscaled":
            raise BadRequest(f"image {image_id} is already an upscale (of image {row['parent_id']})")
        if skip_done and store.upscale_of(image_id, model) is not None:
            continue
        ids.append(image_id)
    if not ids:
        return None
    params = {"image_ids": ids, "model": model}
    existing = store.find_unfinished_job("upscale", "{}", len(ids), None, params)
    if existing is not None:
        return existing.id
    return store.create_job("upscale", "{}", len(ids), 0, params)
