"""Which generator makes a recipe's images: guided diffusion, or a CLIP-optimising backend.

A recipe's model preset decides its backend (``backend`` in the recipe records it). Everything
above this module (the queue, ``reproduce``, the CLI, the site) goes through these functions and
never asks which backend it has: ``complete`` fills in a preset's defaults, ``prepare`` checks a
recipe before a job is recorded, ``make`` builds the generator (``run(seeds, callback)``), and
``frame_every`` / ``total_steps`` say how a job of it is animated and counted.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import torch

from gallery.errors import CuratorError, RecipeError, UnknownPreset
from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Store

from . import diffusion
from . import presets as P
from . import weights as W
from .backends import generator_class

DIFFUSION = "diffusion"
# Guided diffusion's own settings: the recipe fields an optimising backend has no use for.
DIFFUSION_ONLY = {"steps": "--steps", "method": "--method", "eta": "--eta", "clip_guidance_scale": "--guidance-scale",
                  "tv_scale": "--tv-scale", "range_scale": "--range-scale", "cutn": "--cutn",
                  "clip_denoised": "--clip-denoised", "skip_timesteps": "--skip-steps", "precision": "--precision"}


class ImageGenerator(Protocol):
    """What every backend's generator offers: its complete recipe, its CLIP, and images by seed."""

    recipe: Recipe
    device: torch.device

    @property
    def image_recipe_base(self) -> Recipe: ...

    @property
    def frame_every(self) -> int: ...

    def run(self, seeds: list[int], callback: Callable | None = None) -> torch.Tensor: ...


def presets() -> dict:
    """Every model preset by name (guided diffusion's first), each with its ``description``."""
    return {**P.DIFFUSION_PRESETS, **P.BACKEND_PRESETS}


def weights_present(model: str, instance: Instance) -> bool:
    """Whether a preset's weights are on this machine (a preset that needs none has them)."""
    try:
        if model in P.DIFFUSION_PRESETS:
            W.locate_diffusion(P.DIFFUSION_PRESETS[model], instance)
        elif P.BACKEND_PRESETS[model].weights is not None:
            W.locate_backend(P.BACKEND_PRESETS[model], instance)
    except CuratorError:
        return False
    return True


def backend_of(model: str) -> str:
    """The backend of a model preset (UnknownPreset naming every preset if there is none)."""
    if model in P.DIFFUSION_PRESETS:
        return DIFFUSION
    if model in P.BACKEND_PRESETS:
        return P.BACKEND_PRESETS[model].backend
    raise UnknownPreset(f"unknown model preset {model!r}; choose one of: "
                        f"{', '.join([*P.DIFFUSION_PRESETS, *P.BACKEND_PRESETS])}")


def settings_class(backend: str):
    """The settings dataclass of an optimising backend."""
    return generator_class(backend).settings_class


def _defaults() -> Recipe:
    return Recipe(prompt="-")


def complete(recipe: Recipe) -> Recipe:
    """The recipe with its backend named and the preset's defaults where it leaves settings unset.

    A setting of another backend is a one-line RecipeError saying whose it is.
    """
    backend = backend_of(recipe.model)
    if recipe.backend not in (None, backend):
        raise RecipeError(f"model {recipe.model} is a {backend} preset, not {recipe.backend}")
    if backend == DIFFUSION:
        if recipe.settings:
            raise RecipeError(f"{', '.join(sorted(recipe.settings))}: not a setting of guided diffusion "
                              f"({recipe.model}); they belong to the siren, vqgan and biggan presets")
        return dataclasses.replace(diffusion.complete(recipe), backend=DIFFUSION)
    base = _defaults()
    for name, option in DIFFUSION_ONLY.items():
        if getattr(recipe, name) != getattr(base, name):
            raise RecipeError(f"{option} is a guided diffusion setting; {recipe.model} ({backend}) takes "
                              f"{', '.join(settings_class(backend).names())}")
    if (recipe.init_image or recipe.guide_init) and backend in ("biggan", "siren"):
        raise RecipeError(f"{recipe.model} starts from its own {'noise and classes' if backend == 'biggan' else 'network'}"
                          "; it takes no init image (nor --guide-init)")
    preset = P.BACKEND_PRESETS[recipe.model]
    known = set(settings_class(backend).names())
    unknown = sorted(set(recipe.settings) - known)
    if unknown:
        raise RecipeError(f"{unknown[0]} is not a setting of {backend} ({recipe.model}); it takes "
                          f"{', '.join(sorted(known))}")
    settings = settings_class(backend).resolve(preset.defaults, dict(recipe.settings)).to_dict()
    return dataclasses.replace(recipe.filled({"clip_model": preset.clip}), backend=backend, settings=settings).validate()


def prepare(recipe: Recipe, instance: Instance, store: Store | None = None, fetch: bool = False) -> Recipe:
    """Everything that can be checked before a job is recorded (weights located; fetched if asked)."""
    recipe = complete(recipe)
    if recipe.backend == DIFFUSION:
        return diffusion.prepare(recipe, instance, store, fetch=fetch)
    diffusion.check_references(recipe, instance, store)
    preset = P.BACKEND_PRESETS[recipe.model]
    if fetch:
        fetch_weights(recipe, instance)
    if preset.weights is not None or recipe.checkpoint:
        W.locate_backend(preset, instance, recipe.checkpoint)
    W.locate_clip(P.clip_spec(recipe.clip_model), instance)
    return recipe


def fetch_weights(recipe: Recipe, instance: Instance) -> None:
    """Download what a recipe's generator needs that is not cached yet (an explicit step)."""
    recipe = complete(recipe)
    if recipe.backend == DIFFUSION:
        diffusion.fetch_weights(recipe, instance)
        return
    preset = P.BACKEND_PRESETS[recipe.model]
    if preset.weights is not None or recipe.checkpoint:
        W.fetch_backend(preset, instance, recipe.checkpoint)
    W.fetch_clip(P.clip_spec(recipe.clip_model), instance)


def make(recipe: Recipe, models, device: torch.device, store: Store | None = None,
         load_image=None) -> ImageGenerator:
    """The generator of a recipe, with its models loaded (``load_image``: how image references are read)."""
    recipe = complete(recipe)
    how = {} if load_image is None else {"load_image": load_image}
    if recipe.backend == DIFFUSION:
        return diffusion.Generator(recipe, models, device, store, **how)
    return generator_class(recipe.backend)(recipe, models, device, store, settings=dict(recipe.settings), **how)


def with_init(recipe: Recipe, ref: str, keep: float) -> Recipe:
    """The recipe starting from an image (a file or gallery id), keeping ``keep`` (0-0.95) of it.

    Guided diffusion skips that fraction of its steps; VQGAN-CLIP keeps that fraction of the
    image's latents (``noise`` is the rest); SIREN and BigGAN start from their own parameters.
    """
    recipe = complete(recipe)
    if recipe.backend == DIFFUSION:
        return dataclasses.replace(recipe, init_image=ref,
                                   skip_timesteps=min(recipe.steps - 1, int(round(recipe.steps * keep))))
    if recipe.backend == "vqgan":
        return dataclasses.replace(recipe, init_image=ref, settings={**recipe.settings, "noise": round(1 - keep, 6)})
    raise RecipeError(f"{recipe.model} ({recipe.backend}) starts from its own parameters; it takes no init image")


def total_steps(recipe: Recipe) -> int:
    """Steps (diffusion) or iterations (the others) of one image of a complete recipe."""
    return recipe.settings["iterations"] if recipe.backend not in (None, DIFFUSION) else recipe.steps


def frame_every(recipe: Recipe, asked: int | None = None) -> int:
    """Keep an animation frame every this many steps: as asked, else the backend's (about 25 frames)."""
    if asked:
        return asked
    if recipe.backend not in (None, DIFFUSION):
        return recipe.settings["frame_every"]
    return max(1, recipe.steps // 25)
