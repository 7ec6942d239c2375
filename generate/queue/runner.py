"""Running claimed jobs: how a job ends is recorded once, and generate jobs resume where they stopped.

Image ``i`` of a generate job is seeded ``job.seed + i``. Each finished image is written to a temp
file, fsynced and renamed, its animation likewise, and only then recorded, with its CLIP
embedding, in one transaction. A job killed at any point therefore loses nothing it finished,
and a re-run (or the worker) carries on from the first index without a row, after deleting files
no row claims.
"""
from __future__ import annotations

import hashlib
import io
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from gallery.errors import Cancelled, JobBusy
from gallery.files import is_temp, write_bytes
from gallery.instance import Instance
from gallery.recipe import Recipe, png_info
from gallery.store import Embedding, Job, NewImage, Store, worker_id

from .. import generators
from ..animation import animation_suffix, write_animation
from ..diffusion import load_image_ref, to_uint8
from ..models import ModelCache, pick_device
from ..sampler import Step
from .plan import ImagePlan


@dataclass(frozen=True)
class Progress:
    """What a job reports while it runs."""

    job_id: int
    done: int
    total: int
    step: int
    steps: int


ProgressFn = Callable[[Progress], None]


class Stopped(Exception):
    """The worker is shutting down: the job goes back on the queue, to resume where it stopped."""


class StopSignal:
    """How a worker's owner asks it to stop: after the current image, or at the next step."""

    def __init__(self):
        self.after_image = threading.Event()
        self.now = threading.Event()

    def check(self, between_images: bool) -> None:
        """Raise Stopped if a stop was asked for that applies at this point."""
        if self.now.is_set() or (between_images and self.after_image.is_set()):
            raise Stopped()


def run_claimed(store: Store, job_id: int, body: Callable[[Job], None]) -> str:
    """Claim a job, run ``body(job)`` and record how it ended: done, cancelled, stopped or failed (re-raised)."""
    if not store.claim_job(job_id, worker_id()):
        raise JobBusy(f"job {job_id} is being run by another live worker")
    try:
        body(store.get_job(job_id))
    except Cancelled:
        store.finish_job(job_id, "cancelled")
        return "cancelled"
    except Stopped:
        store.release_job(job_id)
        return "stopped"
    except BaseException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        store.finish_job(job_id, "failed", f"{type(e).__name__}: {msg}"[:500])
        raise
    store.finish_job(job_id, "done")
    return "done"


def image_recipe(base: Recipe, job: Job, index: int) -> Recipe:
    """Image ``index`` of a batch whose recipe (``ImagePlan.batches``) is ``base``: its own seed."""
    return base.with_seed(job.seed + index)


def save_every(job: Job, recipe: Recipe) -> int:
    """Keep an animation frame every this many steps (the job's choice, else the backend's)."""
    return generators.frame_every(recipe, job.params.get("save_every"))


def pending_indices(store: Store, job: Job) -> list[int]:
    """The indices of a job that have no row yet, in index order."""
    done = store.done_indices(job.id)
    return [i for i in range(job.n) if i not in done]


def node_name() -> str:
    """The machine this process runs on, as image rows record it."""
    return socket.gethostname()


@dataclass(frozen=True)
class ImageResult:
    """One finished image, complete in memory, wherever it was made: what the head records."""

    index: int
    recipe: Recipe
    png: bytes  # carries the recipe chunk
    animation: bytes
    animation_suffix: str
    width: int
    height: int
    clip_model: str
    embedding: np.ndarray
    device: str
    node: str

    @property
    def seed(self) -> int:
        """The image's seed."""
        return self.recipe.seed


def compute_images(gen: generators.ImageGenerator, job: Job, indices: list[int], every: int,
                   on_step: Callable[[Step], None] | None = None, node: str | None = None,
                   device: str | None = None) -> list[ImageResult]:
    """Sample one batch of a job's images and encode them (PNG with recipe, animation, embedding).

    Pure computation, no store and no instance folder: the in-process runner and remote actors
    both call it, so an image is the same bytes wherever it is made. ``on_step`` sees every
    step (progress, heartbeats, cancel) and may raise to abandon the batch.
    """
    recipes = [image_recipe(gen.image_recipe_base, job, i) for i in indices]
    frames: list[list[np.ndarray]] = [[] for _ in indices]

    def callback(step: Step) -> None:
        final = step.index == step.total - 1
        if step.index % every == 0 or final:
            for k, f in enumerate(to_uint8(step.pred_xstart)):
                frames[k].append(f)
        if on_step:
            on_step(step)

    x = gen.run([r.seed for r in recipes], callback)
    pixels = to_uint8(x)
    embeds = gen.clip.embed_pixels(x.add(1).div(2)).cpu().numpy()
    device = device or str(gen.device)
    suffix = animation_suffix()
    out = []
    for k, (index, recipe) in enumerate(zip(indices, recipes)):
        frames[k].append(pixels[k])
        img = Image.fromarray(pixels[k])
        buf = io.BytesIO()
        extra = {"job": job.id, "index": index, "clip": gen.clip.id, "device": device}
        img.save(buf, format="PNG", pnginfo=png_info(recipe, extra))
        out.append(ImageResult(index, recipe, buf.getvalue(), _animation_bytes(frames[k], suffix), suffix,
                               img.width, img.height, gen.clip.id, embeds[k], device, node or node_name()))
    return out


def _animation_bytes(frames: list[np.ndarray], suffix: str) -> bytes:
    # The encoders write files; a private temp folder turns that into bytes to send or write.
    with tempfile.TemporaryDirectory(prefix="clip-curator-anim-") as tmp:
        path = Path(tmp) / f"animation{suffix}"
        write_animation(frames, path)
        return path.read_bytes()


def record_image(store: Store, instance: Instance, job: Job, result: ImageResult) -> int:
    """Write a finished image's files atomically, then its row and embedding in one transaction.

    The one way every executor records an image: files first, complete, then the row.
    """
    stem = instance.job_dir(job.id) / image_name(result.index, result.seed)
    png, anim = stem.with_suffix(".png"), stem.with_suffix(result.animation_suffix)
    write_bytes(png, result.png)
    write_bytes(anim, result.animation)
    recipe = result.recipe
    return store.add_image(NewImage(
        path=instance.rel(png), animation_path=instance.rel(anim), width=result.width, height=result.height,
        recipe_json=recipe.to_json(), prompt=recipe.prompt, job_id=job.id, idx=result.index, seed=result.seed,
        model=recipe.model, clip_model=result.clip_model, device=result.device, node=result.node,
        sha256=hashlib.sha256(result.png).hexdigest(), template=recipe.template),
        Embedding(result.clip_model, result.embedding))


def image_name(index: int, seed: int) -> str:
    """File stem for image ``index`` of a job."""
    return f"{index:05d}-{seed}"


def remove_orphans(store: Store, instance: Instance, job_id: int) -> list:
    """Delete temp files and files of this job that no row points at; returns what was removed.

    Only the worker holding the job writes into its folder, so everything unclaimed there is left
    over from a run that died.
    """
    folder = instance.job_dir(job_id)
    if not folder.is_dir():
        return []
    keep = store.image_paths(job_id)
    removed = []
    for f in folder.iterdir():
        if f.is_file() and (is_temp(f) or instance.rel(f) not in keep):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


class GenerateRunner:
    """Runs one claimed generate job to the end, reporting progress and honouring cancel."""

    def __init__(self, store: Store, instance: Instance, models: ModelCache, device: str = "auto",
                 on_progress: ProgressFn | None = None, heartbeat_s: float = 1.0, stop: StopSignal | None = None):
        self.store = store
        self.instance = instance
        self.models = models
        self.device = pick_device(device)
        self.on_progress = on_progress
        self.heartbeat_s = heartbeat_s
        self.stop = stop or StopSignal()

    def run(self, job_id: int) -> str:
        """Run the job; returns its final status. Exceptions are recorded on the job and re-raised."""
        return run_claimed(self.store, job_id, self._run)

    def close(self) -> None:
        """Nothing to release: the models belong to whoever made the cache."""

    def _load(self, ref: str):
        # An init or image-prompt reference: a file, or an image of this runner's gallery.
        return load_image_ref(ref, self.store, self.instance)

    def _run(self, job: Job) -> None:
        plan = ImagePlan(job, self.store, self.instance, self.models, self.device)
        remove_orphans(self.store, self.instance, job.id)
        every = generators.frame_every(plan.recipe, job.params.get("save_every"))
        pending = pending_indices(self.store, job)
        gen, finished = None, job.n - len(pending)
        for recipe, indices in plan.batches(pending, plan.recipe.batch_size):
            self.stop.check(between_images=True)
            if gen is None or gen.recipe.with_seed(0) != recipe.with_seed(0):
                gen = generators.make(recipe, self.models, self.device, self.store, load_image=self._load)
            self._batch(job, gen, indices, every, finished)
            finished += len(indices)

    def _callback(self, job: Job, done: int) -> Callable[[Step], None]:
        # Heartbeats (at most every heartbeat_s), progress, and checks for stop and cancel.
        last_beat = [0.0]

        def callback(step: Step) -> None:
            self.stop.check(between_images=False)
            final = step.index == step.total - 1
            t = time.monotonic()
            if t - last_beat[0] >= self.heartbeat_s or final:
                last_beat[0] = t
                if self.store.heartbeat(job.id, step.index + 1, step.total):
                    raise Cancelled(f"job {job.id} was cancelled")
            if self.on_progress:
                self.on_progress(Progress(job.id, done, job.n, step.index + 1, step.total))

        return callback

    def _batch(self, job: Job, gen: generators.ImageGenerator, indices: list[int], every: int, done: int) -> None:
        for result in compute_images(gen, job, indices, every, self._callback(job, done), node_name()):
            record_image(self.store, self.instance, job, result)
