"""Running claimed jobs: how a job ends is recorded once, and generate jobs resume where they stopped.

Image ``i`` of a generate job is seeded ``job.seed + i``. Each finished image is written to a temp
file, fsynced and renamed, its animation likewise, and only then recorded, with its CLIP
embedding, in one transaction. A job killed at any point therefore loses nothing it finished,
and a re-run (or the worker) carries on from the first index without a row, after deleting files
no row claims.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from gallery.errors import Cancelled, JobBusy
from gallery.files import is_temp, sha256_file
from gallery.imaging import write_png
from gallery.instance import Instance
from gallery.recipe import png_info
from gallery.store import Embedding, Job, NewImage, Store, worker_id

from ..animation import animation_suffix, write_animation
from .. import generators
from ..diffusion import to_uint8
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

    def _run(self, job: Job) -> None:
        plan = ImagePlan(job, self.store, self.instance, self.models, self.device)
        remove_orphans(self.store, self.instance, job.id)
        every = generators.frame_every(plan.recipe, job.params.get("save_every"))
        done = self.store.done_indices(job.id)
        pending = [i for i in range(job.n) if i not in done]
        gen, finished = None, job.n - len(pending)
        for recipe, indices in plan.batches(pending, plan.recipe.batch_size):
            self.stop.check(between_images=True)
            if gen is None or gen.recipe.with_seed(0) != recipe.with_seed(0):
                gen = generators.make(recipe, self.models, self.device, self.store)
            self._batch(job, gen, indices, every, finished)
            finished += len(indices)

    def _callback(self, job: Job, frames: list[list[np.ndarray]], every: int, done: int) -> Callable[[Step], None]:
        # Keeps animation frames, heartbeats (at most every heartbeat_s) and checks for cancel.
        last_beat = [0.0]

        def callback(step: Step) -> None:
            self.stop.check(between_images=False)
            final = step.index == step.total - 1
            if step.index % every == 0 or final:
                for k, f in enumerate(to_uint8(step.pred_xstart)):
                    frames[k].append(f)
            t = time.monotonic()
            if t - last_beat[0] >= self.heartbeat_s or final:
                last_beat[0] = t
                if self.store.heartbeat(job.id, step.index + 1, step.total):
                    raise Cancelled(f"job {job.id} was cancelled")
            if self.on_progress:
                self.on_progress(Progress(job.id, done, job.n, step.index + 1, step.total))

        return callback

    def _batch(self, job: Job, gen: generators.ImageGenerator, indices: list[int], every: int, done: int) -> None:
        seeds = [job.seed + i for i in indices]
        frames: list[list[np.ndarray]] = [[] for _ in indices]
        x = gen.run(seeds, self._callback(job, frames, every, done))
        pixels = to_uint8(x)
        embeds = gen.clip.embed_pixels(x.add(1).div(2)).cpu().numpy()
        for k, (index, seed) in enumerate(zip(indices, seeds)):
            frames[k].append(pixels[k])
            self._record(job, gen, index, seed, pixels[k], frames[k], embeds[k])

    def _record(self, job: Job, gen: generators.ImageGenerator, index: int, seed: int, pixels: np.ndarray,
                frames: list[np.ndarray], embedding: np.ndarray) -> None:
        # Files first, complete; then the row and its embedding in one transaction.
        recipe = gen.image_recipe_base.with_seed(seed)
        extra = {"job": job.id, "index": index, "clip": gen.clip.id, "device": str(self.device)}
        img = Image.fromarray(pixels)
        stem = self.instance.job_dir(job.id) / image_name(index, seed)
        png, anim = stem.with_suffix(".png"), stem.with_suffix(animation_suffix())
        write_png(img, png, png_info(recipe, extra))
        write_animation(frames, anim)
        self.store.add_image(NewImage(
            path=self.instance.rel(png), animation_path=self.instance.rel(anim), width=img.width,
            height=img.height, recipe_json=recipe.to_json(), prompt=recipe.prompt, job_id=job.id, idx=index,
            seed=seed, model=recipe.model, clip_model=gen.clip.id, device=str(self.device), sha256=sha256_file(png),
            template=recipe.template),
            Embedding(gen.clip.id, embedding))
