"""The worker: claims queued jobs (and jobs whose worker died) and runs them by kind."""
from __future__ import annotations

import time
from typing import Callable

from gallery.store import Store, worker_id

from .jobs import JobRunner, Progress
from .models import ModelCache


class Worker:
    """Runs jobs from the store until told to stop; one bad job never stops the others."""

    def __init__(self, store: Store, models: ModelCache, device: str = "auto",
                 on_progress: Callable[[Progress], None] | None = None,
                 on_event: Callable[[str], None] | None = None):
        from .upscale_jobs import UpscaleRunner

        self.store = store
        self.runners = {"generate": JobRunner(store, models, device, on_progress=on_progress),
                        "upscale": UpscaleRunner(store, store.instance, on_progress=on_progress)}
        self.on_event = on_event or (lambda msg: None)
        self.me = worker_id()
        self.stopping = False

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
        """Serve the queue; with ``once``, return when it is empty."""
        try:
            while not self.stopping:
                if not self.run_one():
                    if once:
                        return
                    time.sleep(poll_s)
        finally:
            self.runners["upscale"].close()
