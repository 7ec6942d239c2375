"""Run upscale jobs: each listed image becomes a 4x child row with the parent's recipe.

The upscaled PNG carries the parent's recipe in its text chunk plus the upscaler that made it,
so it stays reproducible. A parent that already has an upscale by the same model is skipped, so
re-running a job, or queueing the same image twice, never creates a duplicate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from gallery.recipe import png_info
from gallery.store import Store

from .errors import Cancelled
from .files import sha256_file, write_png
from .jobs import Progress, run_claimed

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
        return run_claimed(self.store, job_id, self._run)

    def _run(self, job) -> None:
        model = job.params.get("model", "x4plus")
        ids = job.params.get("image_ids", [])
        up = self._upscaler(model)
        try:
            for idx, parent_id in enumerate(ids):
                if self.store.heartbeat(job.id, idx, len(ids)):
                    raise Cancelled(f"job {job.id} was cancelled")
                if self.on_progress:
                    self.on_progress(Progress(job.id, idx, len(ids), 0, 1))
                if self.store.upscale_of(parent_id, model) is None:
                    self._one(job.id, idx, parent_id, model, up)
                self.store.set_job_done(job.id, idx + 1)
        finally:
            # Keep the network for the next job, but not the buffers of its last pass.
            up.trim()

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
            parent_id=parent_id, device=up.device, sha256=sha256_file(dest),
            upscaler=model)

    def close(self) -> None:
        """Release the networks."""
        for up in self._upscalers.values():
            up.close()
        self._upscalers.clear()
