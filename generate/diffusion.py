"""CLIP-guided diffusion: turn a recipe into images, given its models.

``prepare`` completes a recipe from its preset (the settings the user left unset, the CLIP) and
checks everything that can be checked before a job is recorded: settings, prompt syntax, names,
image files and weights (located, never downloaded). ``Generator`` holds the models and CLIP
targets of one recipe and samples images by seed through the pure sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from PIL import Image

from gallery.errors import BadRequest, ImageNotFound
from gallery.imaging import center_square, load_rgb
from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Store

from . import presets as P
from . import weights as W
from .guidance import ClipGuide, GuidanceScales
from .guides import candidates, check_recorded
from .models import ModelCache, build_diffusion, verify_unet_weights
from .prompts import parse_image_prompt, parse_prompt
from .sampler import Step, sample


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is fp16 on CUDA (bf16 where supported), fp32 elsewhere; others pass through if usable."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise BadRequest("fp16 autocast is not supported on the CPU; use bf16 or fp32")
    return precision


def complete(recipe: Recipe) -> Recipe:
    """The recipe with the preset's settings where it leaves them unset, and its names checked."""
    preset = P.diffusion_preset(recipe.model)
    recipe = recipe.filled({**preset.defaults, "clip_model": preset.clip}).validate()
    P.clip_spec(recipe.clip_model)
    return recipe


def load_image_ref(ref: str, store: Store | None, instance: Instance) -> Image.Image:
    """An image by file path or gallery id, as RGB; BadRequest if it cannot be read."""
    if not ref.isdigit():
        return load_rgb(ref)
    try:
        if store is None:
            raise ImageNotFound(ref)
        path = instance.file(store.get_image(int(ref)).path)
    except ImageNotFound:
        raise BadRequest(f"image {ref} doesn't exist in the gallery") from None
    if path is None:
        raise BadRequest(f"image {ref} has no file inside the gallery")
    return load_rgb(path)


def to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """Centre square, resized (Lanczos), as [1, 3, size, size] in [-1, 1]."""
    pixels = np.array(center_square(im, size, Image.LANCZOS))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def check_references(recipe: Recipe, instance: Instance, store: Store | None = None) -> None:
    """What any backend checks of a recipe: its prompt's syntax, its guides and every image it names."""
    if recipe.variations == "none" or recipe.template is not None:  # a template is checked per expansion
        parse_prompt(recipe.prompt)
    if recipe.guides and not recipe.guide_images:
        if store is None:
            raise BadRequest("guide images come from the gallery: open one to use --guides")
        candidates(store, recipe.guide_pool, P.clip_spec(recipe.clip_model).id)
    if recipe.guide_images:
        check_recorded(store, recipe)
    if recipe.init_image:
        load_image_ref(recipe.init_image, store, instance)
    for spec in recipe.image_prompts:
        load_image_ref(parse_image_prompt(spec).ref, store, instance)


def prepare(recipe: Recipe, instance: Instance, store: Store | None = None, fetch: bool = False) -> Recipe:
    """Everything that can be checked before a job is recorded: settings, names, files, weights.

    Weights are only looked for, unless ``fetch`` asks (the CLI does) to download what is
    missing once everything else has been found good.
    """
    recipe = complete(recipe)
    check_references(recipe, instance, store)
    if fetch:
        fetch_weights(recipe, instance)
    preset = P.diffusion_preset(recipe.model)
    verify_unet_weights(preset, W.locate_diffusion(preset, instance, recipe.checkpoint))
    W.locate_clip(P.clip_spec(recipe.clip_model), instance)
    return recipe


def fetch_weights(recipe: Recipe, instance: Instance, progress: bool = True) -> None:
    """Download the weights a recipe needs that are not cached yet (an explicit step, never a check)."""
    recipe = complete(recipe)
    W.fetch_diffusion(P.diffusion_preset(recipe.model), instance, recipe.checkpoint, progress=progress)
    W.fetch_clip(P.clip_spec(recipe.clip_model), instance, progress=progress)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] to uint8 [N, H, W, 3]."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Generator:
    """The models and targets for one recipe, ready to sample images by seed."""

    def __init__(self, recipe: Recipe, models: ModelCache, device: torch.device, store: Store | None = None,
                 load_image: Callable[[str], Image.Image] | None = None):
        # ``load_image`` reads an init or image-prompt reference where there is no store (a remote actor).
        self._load = load_image or (lambda ref: load_image_ref(ref, store, models.instance))
        self.recipe = recipe = complete(recipe)
        self.device = device
        self.precision = resolve_precision(recipe.precision, device)
        self.preset = P.diffusion_preset(recipe.model)
        self.unet = models.unet(self.preset, device, recipe.checkpoint)
        self.diffusion = build_diffusion(self.preset, recipe.steps, recipe.method)
        self.clip = models.clip(recipe.clip_model, device)
        self.target, self.weights = self._targets(store, models.instance)
        self.init = None
        if recipe.init_image:
            self.init = to_tensor(self._load(recipe.init_image), self.preset.image_size)
        self.scales = GuidanceScales(recipe.clip_guidance_scale, recipe.tv_scale, recipe.range_scale,
                                     recipe.cutn, recipe.cut_pow)

    def _targets(self, store: Store | None, instance: Instance) -> tuple[torch.Tensor, torch.Tensor]:
        # The weighted CLIP embeddings guidance pulls towards: the prompt's parts, then image prompts.
        parts = parse_prompt(self.recipe.prompt)
        embeds = [self.clip.encode_text([p.text for p in parts])]
        weights = [p.weight for p in parts]
        for spec in self.recipe.image_prompts:
            ref = parse_image_prompt(spec)
            im = to_tensor(self._load(ref.ref), self.preset.image_size)
            embeds.append(self.clip.embed_pixels(im.add(1).div(2)))
            weights.append(ref.weight)
        return torch.cat(embeds), torch.tensor(weights)

    @property
    def image_recipe_base(self) -> Recipe:
        """The recipe as it is recorded with each image (defaults and precision resolved)."""
        return dataclasses.replace(self.recipe, precision=self.precision)

    @property
    def frame_every(self) -> int:
        """Keep an animation frame every this many steps (about 25 frames)."""
        return max(1, self.recipe.steps // 25)

    def run(self, seeds: list[int], callback: Callable[[Step], None] | None = None,
            reuse_forward: bool = True) -> torch.Tensor:
        """Sample one image per seed; returns [N, 3, H, W] in [-1, 1]."""
        cut_gens = [torch.Generator().manual_seed(int(s) + (1 << 40)) for s in seeds]
        guided = any((self.scales.clip_guidance_scale, self.scales.tv_scale, self.scales.range_scale))
        guide = ClipGuide(self.clip, self.diffusion, self.target, self.weights, self.scales, cut_gens,
                          self.precision) if guided else None
        size = self.preset.image_size
        x = sample(self.unet, self.diffusion, seeds, (3, size, size), device=self.device, cond_fn=guide,
                   method=self.recipe.method, eta=self.recipe.eta, clip_denoised=self.recipe.clip_denoised,
                   skip_timesteps=self.recipe.skip_timesteps, init=self.init, precision=self.precision,
                   reuse_forward=reuse_forward, callback=callback)
        return x.clamp(-1, 1)
