"""The executor seam: what runs a worker's jobs, in this process or on a Ray cluster.

An executor hands the worker one runner per job kind. ``LocalExecutor`` (the default, nothing
to start) runs everything in this process, as clip-curator always has. ``RayExecutor`` (in
``ray_executor``, imported only when asked for, so Ray is never loaded otherwise) keeps SQLite on
this machine as the queue and the record, and sends image work to actors on every GPU of a
cluster. Both record images through the same ``record_image``.
"""
from __future__ import annotations

from typing import Protocol

from gallery.instance import Instance
from gallery.store import Store

from ..models import ModelCache
from .runner import GenerateRunner, ProgressFn, StopSignal
from .upscale_runner import UpscaleRunner


class Executor(Protocol):
    """Something that makes the runners a worker uses, by job kind."""

    def runners(self, store: Store, instance: Instance, models: ModelCache, device: str,
                on_progress: ProgressFn | None, stop: StopSignal) -> dict:
        """Runners by job kind; each has run(job_id) -> status and close(), and honours ``stop``."""

    def close(self) -> None:
        """Release what the executor holds (actors, a cluster connection)."""


class LocalExecutor:
    """Every job in this process, on one device."""

    def runners(self, store: Store, instance: Instance, models: ModelCache, device: str,
                on_progress: ProgressFn | None, stop: StopSignal) -> dict:
        """The in-process generate and upscale runners."""
        return {"generate": GenerateRunner(store, instance, models, device, on_progress=on_progress, stop=stop),
                "upscale": UpscaleRunner(store, instance, on_progress=on_progress, stop=stop)}

    def close(self) -> None:
        """Nothing to release."""


def ray_executor(address: str | None = None, **options) -> "Executor":
    """Connect to the Ray cluster at ``address`` (or start a local one when it is empty) and return its executor.

    Raises ClusterUnreachable, in one line, when nothing answers at the address.
    """
    from .ray_executor import RayExecutor, RayOptions

    return RayExecutor.connect(RayOptions(address=address or None, **options))
