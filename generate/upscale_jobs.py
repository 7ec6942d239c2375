"""Run upscale jobs: each listed image becomes a 4x child row with the parent's recipe.

The upscaled PNG carries the parent's recipe in its text chunk plus the upscaler that made it,
so it stays reproducible. A parent that already has an upscale by the same model is skipped, so
re-running a job, or queueing the same image twice, never creates a duplicate.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from gallery.recipe import png_info
from gallery.store import Store, worker_id

from .errors import BadRequest, Cancelled
from .files import write_png
from .jobs import Progress

UPSCALE_DIR = "images/upscaled"


def upscale_path(parent_id: int, model: str) -> str:
    """Where the upscale of an image by a model lives, relative to the instance folder."""
    return f"{UPSCALE_DIR}/{parent_id // 1000:04d}/{parent_id}-{model}.png"


class UpscaleRunner:
    """Runs one claimed upscale job; the ncnn network is loaded once per model and reused."""

    def __init__(self, store: Store, instance: Path, threads: int | None = None,
                 on_progress: Callable[[Progress], None] | None = None):
        self.store = store
        self.instance = Path(instance)
        self.threads = threads
        self.on_progress = on_progress
        self._upscalers: dict = {}

    def _upscaler(self, model: str):
        from .upscale import Upscaler

        if model not in self._upscalers:
            self._upscalers[model] = Upscaler(model, threads=self.threads)
        return self._upscalers[model]

    def run(self, job_id: int) -> str:
        """Run the job; returns its final status. Failures are recorded on the job and re-raised."""
        store = self.store
        if not store.claim_job(job_id, worker_id()):
            raise BadRequest(f"job {job_id} is being run by another live worker")
        job = store.get_job(job_id)
        model = job.params.get("model", "x4plus")
        ids = job.params.get("image_ids", [])
        try:
            up = self._upscaler(model)
            for idx, parent_id in enumerate(ids):
                if store.heartbeat(job_id, idx, len(ids)):
                    raise Cancelled(f"job {job_id} was cancelled")
                if self.on_progress:
                    self.on_progress(Progress(job_id, idx, len(ids), 0, 1))
                if store.upscale_of(parent_id, model) is None:
                    self._one(job_id, idx, parent_id, model, up)
                store.set_job_done(job_id, idx + 1)
        except Cancelled:
            store.finish_job(job_id, "cancelled")
            return "cancelled"
        except BaseException as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            store.finish_job(job_id, "failed", f"{type(e).__name__}: {msg}"[:500])
            raise
        store.finish_job(job_id, "done")
        return "done"

    def _one(self, job_id: int, idx: int, parent_id: int, model: str, up) -> int:
        from .upscale import open_image

        parent = self.store.get_image(parent_id)
        image = up.upscale(open_image(self.instance / parent["path"], up))
        rel = upscale_path(parent_id, model)
        dest = self.instance / rel
        try:
            recipe = json.loads(parent["recipe"])
        except ValueError:
            recipe = {"prompt": parent["prompt"]}
        extra = {"upscaler": f"Real-ESRGAN {model} (ncnn)", "scale": up.scale, "parent": parent_id,
                 "parent_size": [parent["width"], parent["height"]]}
        write_png(image, dest, png_info(recipe, extra))
        return self.store.add_image(
            job_id=job_id, idx=idx, seed=parent["seed"], path=rel, width=image.width, height=image.height,
            recipe_json=parent["recipe"], prompt=parent["prompt"], model=parent["model"],
            clip_model=parent["clip_model"], embedding=None, embedding_model=None, kind="upscaled",
            parent_id=parent_id, device=up.device, sha256=hashlib.sha256(dest.read_bytes()).hexdigest(),
            upscaler=model)

    def close(self) -> None:
        """Release the networks."""
        for up in self._upscalers.values():
            up.close()
        self._upscalers.clear()
