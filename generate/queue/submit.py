"""Putting work on the queue: one ``submit`` for every way a job is asked for, with one set of limits.

The CLI's ``generate``, the site's "regenerate similar" form and the JSON API all come through
here, so the same bad input gets the same one-line error everywhere and nothing is recorded.
"""
from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gallery.errors import BadRequest
from gallery.instance import Instance
from gallery.recipe import SEED_MAX, Recipe
from gallery.store import Store
from gallery.validate import Real, Whole, parse

from ..generators import prepare, total_steps, with_init
from ..modifiers import with_modifiers
from ..variations import Expander, resolve_mode
from ..upscale.registry import DEFAULT_MODEL, MODELS

MAX_N = 10_000  # images in one job: a long night's queue on several GPUs


def random_seed() -> int:
    """A fresh first seed for a job that names none."""
    return secrets.randbelow(2 ** 31)


class JobRequest(BaseModel):
    """How many images, from which seed, with which animation frame rate."""

    model_config = ConfigDict(extra="forbid")

    n: Annotated[Whole, Field(ge=1, le=MAX_N, description=f"a whole number from 1 to {MAX_N}")] = 1
    seed: Annotated[Whole | None, Field(ge=0, le=SEED_MAX, description=f"a whole number from 0 to {SEED_MAX}")] = None
    save_every: Annotated[Whole | None, Field(ge=1, le=100_000,
                                              description="a whole number of steps of at least 1")] = None


class RegenerateRequest(BaseModel):
    """New images from a gallery image's recipe (the site's form and ``POST /api/images/ID/regenerate``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[StrictStr | None, Field(max_length=2000, description="text of at most 2000 characters")] = None
    model: Annotated[StrictStr | None, Field(max_length=200, description="a model preset name")] = None
    n: Annotated[Whole, Field(ge=1, le=MAX_N, description=f"a whole number from 1 to {MAX_N}")] = 4
    init_strength: Annotated[Real, Field(ge=0, le=0.95, description="a number from 0 to 0.95")] = 0.0
    image_prompt_weight: Annotated[Real, Field(ge=0, le=10, description="a number from 0 to 10")] = 0.0


class PromptRequest(BaseModel):
    """A prompt of the user's own (the site's New prompt form): variations, modifiers and guides."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[StrictStr, Field(max_length=2000, description="text of at most 2000 characters")]
    model: Annotated[StrictStr, Field(max_length=200, description="a model preset name")] = "tiny"
    variations: Annotated[Literal["auto", "combinatorial", "random", "none"],
                          Field(description="auto, combinatorial, random or none")] = "auto"
    modifiers: Annotated[list[StrictStr], Field(max_length=32, description="a list of modifier names")] = []
    guides: Annotated[Whole, Field(ge=0, le=16, description="a whole number from 0 to 16")] = 0
    guide_pool: Annotated[StrictStr, Field(max_length=120, description="starred, all, rating:N or collection:NAME")] = "starred"
    guide_weight: Annotated[Real, Field(ge=0, le=10, description="a number from 0 to 10")] = 1.0
    guide_init: Annotated[Real, Field(ge=0, le=0.95, description="a number from 0 to 0.95")] = 0.0


def prompt_recipe(instance: Instance, request: PromptRequest | dict) -> Recipe:
    """The recipe a PromptRequest asks for, modifiers appended (checked when it is submitted)."""
    req = request if isinstance(request, PromptRequest) else parse(PromptRequest, request)
    prompt = req.prompt.strip()
    recipe = Recipe(prompt=prompt, model=req.model, variations=resolve_mode(req.variations, prompt), guides=req.guides,
                    guide_pool=req.guide_pool, guide_weight=req.guide_weight, guide_init=req.guide_init)
    return with_modifiers(recipe, req.modifiers, instance)


class UpscaleRequest(BaseModel):
    """Which upscaler (``POST /api/images/ID/upscale``)."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[StrictStr, Field(description=f"one of {', '.join(MODELS)}")] = DEFAULT_MODEL


@dataclass(frozen=True)
class Submitted:
    """A job on the queue: new, or an identical unfinished one that will be resumed."""

    job_id: int
    n: int
    done: int
    seed: int
    resumed: bool
    recipe: Recipe


def check_job(instance: Instance, recipe: Recipe, request: JobRequest | dict, store: Store | None = None,
              fetch: bool = False) -> tuple[Recipe, JobRequest]:
    """Everything about a generate job that can be checked before it is recorded (nothing is written)."""
    req = request if isinstance(request, JobRequest) else parse(JobRequest, request)
    if req.seed is not None and req.seed + req.n - 1 > SEED_MAX:
        raise BadRequest(f"seed + n - 1 must be at most {SEED_MAX}, not {req.seed + req.n - 1}")
    recipe = prepare(recipe, instance, store, fetch=fetch)
    Expander(recipe, req.n, instance).check(req.seed or 0)
    return recipe, req


def submit(store: Store, instance: Instance, recipe: Recipe, request: JobRequest | dict,
           resume: bool = True, params: dict | None = None) -> Submitted:
    """Check a generate job completely and queue it (or find the identical unfinished job to resume)."""
    recipe, req = check_job(instance, recipe, request, store)
    return record_job(store, recipe, req, resume, params)


def record_job(store: Store, recipe: Recipe, req: JobRequest, resume: bool = True,
               params: dict | None = None) -> Submitted:
    """Queue a checked job, or find the identical unfinished one to resume."""
    params = {**(params or {}), **({"save_every": req.save_every} if req.save_every else {})}
    job = store.find_unfinished_job("generate", recipe.to_json(), req.n, req.seed, params) if resume else None
    if job is not None:
        return Submitted(job.id, job.n, job.done, job.seed, True, recipe)
    seed = random_seed() if req.seed is None else req.seed
    job_id = store.create_job("generate", recipe.to_json(), req.n, seed, params, steps=total_steps(recipe))
    return Submitted(job_id, req.n, 0, seed, False, recipe)


def regenerate(store: Store, instance: Instance, image_id: int, request: RegenerateRequest | dict) -> Submitted:
    """Queue new seeds of a gallery image's recipe, optionally keeping its composition or style.

    ``init_strength`` (0-0.95) starts from the image itself, keeping that fraction of the steps'
    worth of its composition; ``image_prompt_weight`` adds the image as a CLIP target.
    """
    req = request if isinstance(request, RegenerateRequest) else parse(RegenerateRequest, request)
    row = store.get_image(image_id)
    try:
        recipe = Recipe.from_json(row.recipe)
    except BadRequest:
        # An imported image with no recipe of ours: a fresh one, of the model asked for.
        recipe = Recipe(prompt="", model=req.model or "uncond-256")
    prompt = req.prompt.strip() if req.prompt is not None else recipe.prompt
    if not prompt:
        raise BadRequest(f"image {image_id} has no prompt; write one")
    changes: dict = {"seed": 0, "prompt": prompt}
    if req.model and req.model != recipe.model:
        # Another model's settings would not suit: start from its own defaults.
        recipe = Recipe(prompt=prompt, model=req.model, image_prompts=recipe.image_prompts)
    if req.image_prompt_weight > 0:
        changes["image_prompts"] = (*recipe.image_prompts, f"{image_id}:{req.image_prompt_weight:g}")
    recipe = dataclasses.replace(recipe, **changes)
    if req.init_strength > 0:
        recipe = with_init(recipe, str(image_id), req.init_strength)
    return submit(store, instance, recipe, JobRequest(n=req.n), resume=False, params={"parent": image_id})


def queue_upscale(store: Store, image_ids: list[int], request: UpscaleRequest | dict | str = DEFAULT_MODEL) -> int | None:
    """Queue one upscale job for these images; images already upscaled with this model are left out.

    Returns the job id, or None when there was nothing left to upscale (an existing unfinished
    job for the same images is returned instead of a duplicate).
    """
    if isinstance(request, str):
        request = {"model": request}
    model = (request if isinstance(request, UpscaleRequest) else parse(UpscaleRequest, request)).model
    if model not in MODELS:
        raise BadRequest(f"unknown upscaler {model!r}; choose one of: {', '.join(MODELS)}")
    ids = []
    for row in store.require_images(list(dict.fromkeys(image_ids))):
        if row.kind == "upscaled":
            raise BadRequest(f"image {row.id} is already an upscale (of image {row.parent_id})")
        if store.upscale_of(row.id, model) is None:
            ids.append(row.id)
    if not ids:
        return None
    params = {"image_ids": ids, "model": model}
    existing = store.find_unfinished_job("upscale", "{}", len(ids), None, params)
    if existing is not None:
        return existing.id
    return store.create_job("upscale", "{}", len(ids), 0, params)
