"""Run generation jobs: resume where a job stopped, seed each image, write files atomically.

Image ``i`` of a job is seeded ``job.seed + i``. Each finished image is written to a temp file,
fsynced and renamed, its animation likewise, and only then recorded, with its CLIP embedding, in
one transaction. A job killed at any point therefore loses nothing it finished, and a re-run (or
the worker) carries on from the first index without a row, after deleting files no row claims.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gallery.recipe import Recipe, RecipeError, png_info
from gallery.store import Store, worker_id

from . import presets as P
from .errors import BadRequest, Cancelled, ImageNotFound
from .files import animation_suffix, is_temp, sha256_file, write_animation, write_png
from .guidance import ClipGuide, GuidanceScales
from .models import ModelCache, build_diffusion, pick_device, verify_unet_weights
from .prompts import parse_image_prompt, parse_prompt
from .sampler import Step, sample

IMAGES_DIR = "images"
MAX_N = 100_000


@dataclass
class Progress:
    """What a job reports while it runs."""

    job_id: int
    done: int
    total: int
    step: int
    steps: int


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is fp16 on CUDA (bf16 where supported), fp32 elsewhere; others pass through if usable."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise BadRequest("fp16 autocast is not supported on the CPU; use bf16 or fp32")
    return precision


def resolve_recipe(recipe: Recipe) -> Recipe:
    """Fill in defaults that depend on the preset (the CLIP model) and check the names exist."""
    preset = P.diffusion_preset(recipe.model)
    clip_name = recipe.clip_model or P.DEFAULT_CLIP.get(preset.name, "vit-b-16")
    P.clip_spec(clip_name)
    return dataclasses.replace(recipe, clip_model=clip_name)


def _load_image_file(ref: str, store: Store | None, instance: Path) -> Image.Image:
    """An image by file path or gallery id, as RGB; BadRequest if it cannot be read."""
    path = Path(ref)
    if ref.isdigit():
        if store is None:
            raise BadRequest(f"image {ref} doesn't exist in the gallery (it is empty)")
        try:
            path = Path(instance) / store.get_image(int(ref))["path"]
        except ImageNotFound:
            raise BadRequest(f"image {ref} doesn't exist in the gallery") from None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BadRequest(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadRequest(f"cannot read image {path}: {type(e).__name__}") from None


def _to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize, and scale to [-1, 1] as [1, 3, size, size]."""
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im)).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def check_recipe(recipe: Recipe, instance: Path, store: Store | None = None, load_weights: bool = False) -> Recipe:
    """Everything that can be checked before a job is recorded: settings, names, files, weights."""
    try:
        recipe = resolve_recipe(recipe.validate())
    except RecipeError as e:
        raise BadRequest(str(e)) from None
    preset = P.diffusion_preset(recipe.model)
    if recipe.init_image:
        _load_image_file(recipe.init_image, store, instance)
    for spec in recipe.image_prompts:
        _load_image_file(parse_image_prompt(spec).ref, store, instance)
    verify_unet_weights(preset, P.diffusion_weights_path(preset, instance, recipe.checkpoint, progress=load_weights))
    P.clip_weights_path(P.clip_spec(recipe.clip_model), instance, progress=load_weights)
    return recipe


class Generator:
    """The models and targets for one recipe, ready to sample images by seed."""

    def __init__(self, recipe: Recipe, models: ModelCache, device: torch.device,
                 store: Store | None = None):
        self.recipe = recipe = resolve_recipe(recipe)
        self.device = device
        self.precision = resolve_precision(recipe.precision, device)
        self.preset = P.diffusion_preset(recipe.model)
        self.unet = models.unet(self.preset, device, recipe.checkpoint)
        self.diffusion = build_diffusion(self.preset, recipe.steps, recipe.method)
        self.clip = models.clip(recipe.clip_model, device)
        size = self.preset.image_size
        instance = store.instance if store is not None else models.instance
        parts = parse_prompt(recipe.prompt)
        embeds = [self.clip.encode_text([p.text for p in parts])]
        weights = [p.weight for p in parts]
        for spec in recipe.image_prompts:
            ref = parse_image_prompt(spec)
            im = _to_tensor(_load_image_file(ref.ref, store, instance), size)
            embeds.append(self.clip.embed_pixels(im.add(1).div(2)))
            weights.append(ref.weight)
        self.target = torch.cat(embeds)
        self.weights = torch.tensor(weights)
        self.init = None
        if recipe.init_image:
            self.init = _to_tensor(_load_image_file(recipe.init_image, store, instance), size)
        self.scales = GuidanceScales(recipe.clip_guidance_scale, recipe.tv_scale, recipe.range_scale,
                                     recipe.cutn, recipe.cut_pow)

    @property
    def image_recipe_base(self) -> Recipe:
        """The recipe as it is recorded with each image (defaults and precision resolved)."""
        return dataclasses.replace(self.recipe, precision=self.precision)

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


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] to uint8 [N, H, W, 3]."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def job_dir(instance: Path, job_id: int) -> Path:
    """Where a job's files live."""
    return Path(instance) / IMAGES_DIR / f"job{job_id:06d}"


def image_name(index: int, seed: int) -> str:
    """File stem for image ``index`` of a job."""
    return f"{index:05d}-{seed}"


def remove_orphans(store: Store, instance: Path, job_id: int) -> list[Path]:
    """Delete temp files and files of this job that no row points at; returns what was removed."""
    folder = job_dir(instance, job_id)
    if not folder.is_dir():
        return []
    keep = store.image_paths(job_id)
    removed = []
    for f in folder.iterdir():
        rel = f.relative_to(instance).as_posix()
        if f.is_file() and (is_temp(f) or rel not in keep):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def run_claimed(store: Store, job_id: int, body: Callable) -> str:
    """Claim a job, run ``body(job)`` and record how it ended: done, cancelled, or failed (re-raised)."""
    if not store.claim_job(job_id, worker_id()):
        raise BadRequest(f"job {job_id} is being run by another live worker")
    try:
        body(store.get_job(job_id))
    except Cancelled:
        store.finish_job(job_id, "cancelled")
        return "cancelled"
    except BaseException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        store.finish_job(job_id, "failed", f"{type(e).__name__}: {msg}"[:500])
        raise
    store.finish_job(job_id, "done")
    return "done"


class JobRunner:
    """Runs one claimed generate job to the end, reporting progress and honouring cancel."""

    def __init__(self, store: Store, models: ModelCache, device: str = "auto", save_every: int | None = None,
                 on_progress: Callable[[Progress], None] | None = None, heartbeat_s: float = 1.0):
        self.store = store
        self.models = models
        self.instance = store.instance
        self.device = pick_device(device)
        self.save_every = save_every
        self.on_progress = on_progress
        self.heartbeat_s = heartbeat_s

    def run(self, job_id: int) -> str:
        """Run the job; returns its final status. Exceptions are recorded on the job and re-raised."""
        return run_claimed(self.store, job_id, self._run)

    def _run(self, job) -> None:
        recipe = Recipe.from_json(job.recipe)
        gen = Generator(recipe, self.models, self.device, self.store)
        remove_orphans(self.store, self.instance, job.id)
        every = job.params.get("save_every", self.save_every) or max(1, recipe.steps // 25)
        pending = [i for i in range(job.n) if i not in self.store.done_indices(job.id)]
        for start in range(0, len(pending), recipe.batch_size):
            done = job.n - len(pending) + start
            self._batch(job, gen, pending[start:start + recipe.batch_size], every, done)

    def _batch(self, job, gen: Generator, indices: list[int], every: int, done: int) -> None:
        seeds = [job.seed + i for i in indices]
        frames: list[list[np.ndarray]] = [[] for _ in indices]
        last_beat = 0.0

        def callback(step: Step) -> None:
            nonlocal last_beat
            if step.index % every == 0 or step.index == step.total - 1:
                for k, f in enumerate(to_uint8(step.pred_xstart)):
                    frames[k].append(f)
            t = time.monotonic()
            if t - last_beat >= self.heartbeat_s or step.index == step.total - 1:
                last_beat = t
                if self.store.heartbeat(job.id, step.index + 1, step.total):
                    raise Cancelled(f"job {job.id} was cancelled")
            if self.on_progress:
                self.on_progress(Progress(job.id, done, job.n, step.index + 1, step.total))

        x = gen.run(seeds, callback)
        pixels = to_uint8(x)
        embeds = gen.clip.embed_pixels(x.add(1).div(2)).cpu().numpy()
        folder = job_dir(self.instance, job.id)
        suffix = animation_suffix()
        base = gen.image_recipe_base
        for k, (index, seed) in enumerate(zip(indices, seeds)):
            recipe = base.with_seed(seed)
            extra = {"job": job.id, "index": index, "clip": gen.clip.id, "device": str(self.device)}
            img = Image.fromarray(pixels[k])
            stem = image_name(index, seed)
            png = folder / f"{stem}.png"
            write_png(img, png, png_info(recipe, extra))
            anim = folder / f"{stem}{suffix}"
            frames[k].append(pixels[k])
            write_animation(frames[k], anim)
            self.store.add_image(
                job_id=job.id, idx=index, seed=seed, path=png.relative_to(self.instance).as_posix(),
                animation_path=anim.relative_to(self.instance).as_posix(), width=img.width, height=img.height,
                recipe_json=recipe.to_json(), prompt=recipe.prompt, model=recipe.model, clip_model=gen.clip.id,
                embedding=embeds[k], embedding_model=gen.clip.id, device=str(self.device),
                sha256=sha256_file(png))
