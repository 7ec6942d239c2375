"""The worker: claims queued jobs (and jobs whose worker died) and runs them by kind, until stopped."""
from __future__ import annotations

from typing import Callable

from gallery.instance import Instance
from gallery.store import Store, worker_id

from ..models import ModelCache
from .runner import GenerateRunner, ProgressFn, StopSignal
from .upscale_runner import UpscaleRunner


class Worker:
    """Runs jobs from the store until told to stop; one bad job never stops the others.

    ``stop()`` ends the run after the current image (the job goes back on the queue and resumes
    there); ``stop(now=True)`` abandons the current image at its next step.
    """

    def __init__(self, store: Store, instance: Instance, models: ModelCache, device: str = "auto",
                 on_progress: ProgressFn | None = None, on_event: Callable[[str], None] | None = None):
        self.store = store
        self.signal = StopSignal()
        self.runners = {
            "generate": GenerateRunner(store, instance, models, device, on_progress=on_progress, stop=self.signal),
            "upscale": UpscaleRunner(store, instance, on_progress=on_progress, stop=self.signal),
        }
        self.on_event = on_event or (lambda msg: None)
        self.me = worker_id()

    def stop(self, now: bool = False) -> None:
        """Ask the worker to stop after the current image (or, with ``now``, at the next step)."""
        self.signal.after_image.set()
        if now:
            self.signal.now.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop has been asked for."""
        return self.signal.after_image.is_set()

    def run_one(self) -> bool:
        """Claim and run the next job; False when there was nothing to do."""
        job = self.store.claim_next_job(self.me, kinds=tuple(self.runners))
        if job is None:
            return False
        self.on_event(f"job {job.id} ({job.kind}): started, {job.done}/{job.n} already done")
        try:
            status = self.runners[job.kind].run(job.id)
        except Exception as e:  # recorded on the job by the runner; keep serving the queue
            self.on_event(f"job {job.id} failed: {e}")
            return True
        self.on_event(f"job {job.id}: {status}")
        return True

    def run(self, once: bool = False, poll_s: float = 2.0) -> None:
        """Serve the queue until stopped; with ``once``, return when it is empty."""
        try:
            while not self.stopping:
                if not self.run_one():
                    if once:
                        return
                    self.signal.after_image.wait(poll_s)
        finally:
            self.runners["upscale"].close()
