"""The worker: claims queued jobs (and jobs whose worker died) and runs them by kind, until stopped."""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gallery.curate import empty_trash
from gallery.instance import Instance
from gallery.store import Store, worker_id

from ..models import ModelCache
from .executors import Executor, LocalExecutor
from .runner import ProgressFn, StopSignal


class Worker:
    """Runs jobs from the store until told to stop; one bad job never stops the others.

    ``stop()`` ends the run after the current image (the job goes back on the queue and resumes
    there); ``stop(now=True)`` abandons the current image at its next step.
    """

    TIDY_EVERY_S = 3600

    def __init__(self, store: Store, runners: dict, signal: StopSignal,
                 on_event: Callable[[str], None] | None = None, tidy: Callable[[], str | None] | None = None):
        self.store = store
        self.runners = runners  # by job kind: each has run(job_id) -> status and close(), and checks ``signal``
        self.signal = signal
        self.on_event = on_event or (lambda msg: None)
        self.tidy = tidy  # housekeeping while idle (at most hourly): emptying an old trash
        self._tidied = 0.0
        self.me = worker_id()

    @classmethod
    def standard(cls, store: Store, instance: Instance, models: ModelCache, device: str = "auto",
                 on_progress: ProgressFn | None = None, on_event: Callable[[str], None] | None = None,
                 executor: Executor | None = None) -> "Worker":
        """A worker for every kind of job, on this instance, with these models (in this process unless
        ``executor`` says otherwise)."""
        signal = StopSignal()

        def tidy() -> str | None:
            days = instance.config().trash_days
            gone = empty_trash(store, instance, days) if days else []
            return f"deleted {len(gone)} image(s) rejected more than {days:g} days ago" if gone else None

        runners = (executor or LocalExecutor()).runners(store, instance, models, device, on_progress, signal)
        return cls(store, runners, signal, on_event, tidy)

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

    def _tidy(self) -> None:
        if self.tidy is None or time.monotonic() - self._tidied < self.TIDY_EVERY_S and self._tidied:
            return
        self._tidied = time.monotonic()
        try:
            done = self.tidy()
        except Exception as e:  # housekeeping must never stop the queue
            done = f"housekeeping failed: {e}"
        if done:
            self.on_event(done)

    def run(self, once: bool = False, poll_s: float = 2.0) -> None:
        """Serve the queue until stopped; with ``once``, return when it is empty."""
        try:
            while not self.stopping:
                if not self.run_one():
                    self._tidy()
                    if once:
                        return
                    self.signal.after_image.wait(poll_s)
        finally:
            for runner in self.runners.values():
                runner.close()


@contextmanager
def stop_on_signals(worker: Worker | None, log: Callable[[str], None], interrupt: bool = False) -> Iterator[None]:
    """While inside, Ctrl-C or SIGTERM stop the worker after its current image; a second one at once.

    With ``interrupt`` the first signal also raises KeyboardInterrupt in the main thread, to end
    what it runs there (a server loop, with the worker in a thread of its own); the handlers are
    restored on the way out.
    """
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        if count[0] == 1:
            log("stopping: finishing the current image (Ctrl-C again to abandon it)")
            if worker is not None:
                worker.stop()
            if interrupt:
                raise KeyboardInterrupt
        log("abandoning the current image; its job resumes on the next start")
        if worker is not None:
            worker.stop(now=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
