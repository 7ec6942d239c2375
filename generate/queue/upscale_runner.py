"""Running upscale jobs: each listed image becomes a 4x child row with the parent's recipe.

The upscaled PNG carries the parent's recipe in its text chunk plus the upscaler that made it,
so it stays reproducible. A parent that already has an upscale by the same model is skipped, so
re-running a job, or queueing the same image twice, never creates a duplicate.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from gallery.errors import BadRequest, Cancelled
from gallery.files import sweep_temp, write_bytes
from gallery.instance import Instance
from gallery.recipe import png_info
from gallery.store import ImageRow, Job, NewImage, Store

from ..upscale import Upscaler, open_image
from .runner import Progress, ProgressFn, StopSignal, run_claimed


@dataclass(frozen=True)
class UpscaleResult:
    """One upscaled image, complete in memory (PNG with the parent's recipe), wherever it was made."""

    png: bytes
    width: int
    height: int
    device: str
    node: str | None = None


def upscale_png(up: Upscaler, src: Path, recipe: dict, extra: dict) -> UpscaleResult:
    """Upscale an image file and encode it with its recipe chunk (no store, no instance folder)."""
    image = up.upscale(open_image(src, up))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(recipe, {**extra, "scale": up.scale}))
    return UpscaleResult(buf.getvalue(), image.width, image.height, up.device)


def upscale_recipe(parent: ImageRow, model: str) -> tuple[dict, dict]:
    """The recipe and extra facts an upscale of this parent carries in its PNG."""
    return parent.recipe_dict or {"prompt": parent.prompt}, {
        "upscaler": f"Real-ESRGAN {model} (ncnn)", "parent": parent.id, "parent_size": [parent.width, parent.height]}


def record_upscale(store: Store, instance: Instance, job_id: int, idx: int, parent: ImageRow, model: str,
                   result: UpscaleResult) -> int:
    """Write an upscale's file atomically, then its row linked to its parent: every executor records it so."""
    dest = instance.upscale_path(parent.id, model)
    write_bytes(dest, result.png)
    return store.add_image(NewImage(
        path=instance.rel(dest), width=result.width, height=result.height, recipe_json=parent.recipe,
        prompt=parent.prompt, kind="upscaled", job_id=job_id, idx=idx, seed=parent.seed, model=parent.model,
        clip_model=parent.clip_model, device=result.device, parent_id=parent.id,
        sha256=hashlib.sha256(result.png).hexdigest(), upscaler=model, node=result.node))


class UpscaleRunner:
    """Runs one claimed upscale job; the ncnn network is loaded once per model and reused."""

    def __init__(self, store: Store, instance: Instance, on_progress: ProgressFn | None = None,
                 stop: StopSignal | None = None):
        self.store = store
        self.instance = instance
        self.on_progress = on_progress
        self.stop = stop or StopSignal()
        self._upscalers: dict[str, Upscaler] = {}

    def _upscaler(self, model: str) -> Upscaler:
        if model not in self._upscalers:
            self._upscalers[model] = Upscaler(model)
        return self._upscalers[model]

    def run(self, job_id: int) -> str:
        """Run the job; returns its final status. Failures are recorded on the job and re-raised."""
        return run_claimed(self.store, job_id, self._run)

    def _run(self, job: Job) -> None:
        sweep_temp(self.instance.upscaled_dir)
        model = job.params.get("model", "x4plus")
        ids = job.params.get("image_ids", [])
        up = self._upscaler(model)
        try:
            for idx, parent_id in enumerate(ids):
                self.stop.check(between_images=True)
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

    def _one(self, job_id: int, idx: int, parent_id: int, model: str, up: Upscaler) -> int:
        parent = self.store.get_image(parent_id)
        src = self.instance.file(parent.path)
        if src is None:
            raise BadRequest(f"image {parent_id} has no file inside the gallery")
        return record_upscale(self.store, self.instance, job_id, idx, parent, model,
                              upscale_png(up, src, *upscale_recipe(parent, model)))

    def close(self) -> None:
        """Release the networks."""
        for up in self._upscalers.values():
            up.close()
        self._upscalers.clear()
