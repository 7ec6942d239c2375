"""The Ray executor: the queue stays in SQLite on this machine (the head); actors make the images.

The head's dispatcher claims a job as any worker does, splits what is missing into batches of
indices (the recipe's batch size) and keeps every actor of a pool busy with them: one actor per
GPU (``num_gpus=1``), or on CPU-only clusters one per ``cpus_per_actor`` CPUs, spread over the
nodes. Each actor returns each finished image whole (PNG bytes with the recipe chunk, the
animation, the CLIP embedding, its node and device); only the head writes files and rows, through
the same ``record_image`` as the in-process runner. Upscale jobs go through the same pool and
the same ``record_upscale``.

Faults: Ray restarts a dead actor (on another node if its node died), ``max_restarts`` times; the
batches it held go back on the head's list at once, for the live actors (``head_retries`` times
each), and the restarted actor gets work again once it answers. Nothing is recorded until its bytes reach the head, so
a head killed at any moment resumes from the rows like any worker (its actors die with it).
Cancelling a job cancels its pending and running tasks (actors see the cancel at their next step).
Progress reaches the head through a small hub actor, at most every ``heartbeat_s`` per actor, and
the head turns it into heartbeats on the job row.
"""
from __future__ import annotations

import time
from collections import deque

import ray
import torch
from ray.exceptions import ActorUnavailableError, RayError, RayTaskError, TaskCancelledError

from gallery.errors import BadRequest, Cancelled, ClusterError, CuratorError
from gallery.files import sweep_temp
from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Job, Store

from ..generators import total_steps
from ..models import ModelCache
from .plan import ImagePlan
from .ray_actors import ActorPool, RayOptions, connect, reference_images
from .runner import (Progress, ProgressFn, StopSignal, Stopped, pending_indices, record_image, remove_orphans,
                     run_claimed, save_every)
from .upscale_runner import record_upscale, upscale_recipe

IN_FLIGHT_PER_ACTOR = 2  # the next batch waits on the actor, so it never idles between batches

__all__ = ["RayExecutor", "RayOptions", "RayGenerateRunner"]


def _reason(e: BaseException) -> BaseException:
    # The user's error inside a remote task, where there is one; else the error itself.
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


class RayGenerateRunner:
    """Runs a claimed generate job on the pool: batches out, finished images in, recorded here."""

    def __init__(self, store: Store, instance: Instance, pool: ActorPool, options: RayOptions,
                 on_progress: ProgressFn | None = None, stop: StopSignal | None = None,
                 models: ModelCache | None = None):
        self.store = store
        self.instance = instance
        self.models = models or ModelCache(instance, progress=False, fetch=True)  # the head's CLIP, for guides
        self.pool = pool
        self.options = options
        self.on_progress = on_progress
        self.stop = stop or StopSignal()

    def run(self, job_id: int) -> str:
        """Run the job; returns its final status. Exceptions are recorded on the job and re-raised."""
        return run_claimed(self.store, job_id, self._run)

    def close(self) -> None:
        """The pool belongs to the executor."""

    def _run(self, job: Job) -> None:
        remove_orphans(self.store, self.instance, job.id)
        pending = pending_indices(self.store, job)
        if not pending:
            return
        # Each batch's recipe (its prompt from a template, its guides) is worked out here, on the
        # head, which has the gallery; the actors get it whole, with the images it refers to.
        plan = ImagePlan(job, self.store, self.instance, self.models, torch.device("cpu"))
        batches = [(recipe.to_json(), tuple(run)) for recipe, run in plan.batches(pending, plan.recipe.batch_size)]
        every = save_every(job, plan.recipe)
        refs: dict = {}  # a batch recipe's JSON -> the images it refers to, put once in the object store

        def send(actor, batch):
            recipe_json, indices = batch
            if recipe_json not in refs:
                refs[recipe_json] = ray.put(reference_images(Recipe.from_json(recipe_json), self.store,
                                                             self.instance))
            return actor.generate.remote(job, recipe_json, list(indices), every, refs[recipe_json])

        def record(batch, results) -> int:
            for result in results:
                record_image(self.store, self.instance, job, result)
            return len(results)

        _Dispatch(self, job, batches, job.n - len(pending), total_steps(plan.recipe), send, record,
                  lambda batch: f"images {batch[1][0]}..{batch[1][-1]}").run()


class _Dispatch:
    """One job's trip through the pool: what is still to send, what is out, and how it ends.

    ``send(actor, item)`` starts an item on an actor; ``record(item, result)`` records what came
    back, on the head, and says how many of the job's items that finished.
    """

    def __init__(self, runner, job: Job, items: list, done: int, steps: int, send, record, what=str):
        self.r, self.job, self.pool = runner, job, runner.pool
        self.send, self.record, self.what = send, record, what
        self.todo = deque(items)
        self.done = done
        self.inflight: dict = {}  # object ref -> (actor, item)
        self.load = {a: 0 for a in self.pool.start()}
        self.failures: dict = {}
        self.probes: dict = {}  # actor -> a call that answers once a lost actor is back (or dead for good)
        self.cancelled_at: float | None = None
        self.stopping = False
        self.step, self.steps, self.last_beat = 0, steps, 0.0

    def run(self) -> None:
        """Until every batch is recorded (or the job is cancelled or the worker stops)."""
        while self.todo or self.inflight:
            self._check_stop()
            if self.cancelled_at is None and not self.stopping:
                self._submit()
            if self.inflight:
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.2)
            else:  # every actor is coming back from a loss: wait for the probes
                ready = []
                time.sleep(0.2)
            for ref in ready:
                self._collect(ref)
            self._check_probes()
            self._beat()
        if self.cancelled_at is not None:
            raise Cancelled(f"job {self.job.id} was cancelled")
        if self.stopping:
            raise Stopped()

    def _submit(self) -> None:
        for actor in list(self.load):
            while actor not in self.probes and self.todo and self.load[actor] < IN_FLIGHT_PER_ACTOR:
                item = self.todo.popleft()
                self.inflight[self.send(actor, item)] = (actor, item)
                self.load[actor] += 1

    def _cancel_all(self) -> None:
        self.todo.clear()
        for ref in self.inflight:
            ray.cancel(ref)

    def _check_stop(self) -> None:
        stop = self.r.stop
        if not self.stopping and (stop.after_image.is_set() or stop.now.is_set()):
            self.stopping = True
            self.todo.clear()  # back on the queue with the job; what is already out finishes and is kept
        if self.stopping and stop.now.is_set():
            self._cancel_all()

    def _collect(self, ref) -> None:
        actor, batch = self.inflight.pop(ref)
        if actor in self.load:
            self.load[actor] -= 1
        ending = self.cancelled_at is not None or self.stopping
        try:
            results = ray.get(ref)
        except TaskCancelledError:
            return
        except RayTaskError as e:
            reason = _reason(e)
            if isinstance(reason, Cancelled) and ending:
                return
            if isinstance(reason, CuratorError):
                raise type(reason)(f"on {self.pool.node_of(actor)}: {reason}") from None
            raise ClusterError(f"{self.what(batch)} failed on {self.pool.node_of(actor)}: "
                               f"{type(reason).__name__}: {_first_line(reason)}") from None
        except RayError as e:  # the actor died (or its node), or the result was lost with it
            if not ending:
                self._lost(actor, batch, e)
            return
        self.done += self.record(batch, results)
        self.step = 0  # the next report is of an image still being made
        self._progress()

    def _lost(self, actor, batch, error: BaseException) -> None:
        # Another actor gets the item, a bounded number of times; this one rests until it answers.
        key = batch
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.failures[key] > self.r.options.head_retries:
            raise ClusterError(f"{self.what(batch)} were lost {self.failures[key]} times with their "
                               f"actor: {_first_line(error)}") from None
        self.todo.appendleft(batch)
        if actor in self.load and actor not in self.probes:
            self.probes[actor] = actor.info.remote()

    def _check_probes(self) -> None:
        ready, _ = ray.wait(list(self.probes.values()), num_returns=len(self.probes), timeout=0) \
            if self.probes else ([], [])
        for actor, probe in list(self.probes.items()):
            if probe not in ready:
                continue
            del self.probes[actor]
            try:
                ray.get(probe)  # restarted: back to work
            except ActorUnavailableError:  # still restarting: ask again
                self.probes[actor] = actor.info.remote()
            except RayError:  # its restarts are spent
                self.load.pop(actor, None)
                self.pool.drop(actor)
        if not self.load:
            raise ClusterError("every Ray actor of the pool has died")

    def _beat(self) -> None:
        # Heartbeats (which also bring a cancel) at most every heartbeat_s, from the actors' latest steps.
        t = time.monotonic()
        if t - self.last_beat >= self.r.options.heartbeat_s:
            self.last_beat = t
            reports = [r for r in self.pool.drain_progress().values() if r[0] == self.job.id]
            if reports:
                self.step, self.steps = max((r[2], r[3]) for r in reports)
            if self.r.store.heartbeat(self.job.id, self.step, self.steps) and self.cancelled_at is None:
                self.cancelled_at = t
                self._cancel_all()
            self._progress()
        if self.cancelled_at is not None and self.inflight and t - self.cancelled_at > self.r.options.cancel_grace_s:
            for actor in {a for a, _ in self.inflight.values()}:
                ray.kill(actor, no_restart=False)  # it restarts, models and all, for the next job
            self.inflight.clear()

    def _progress(self) -> None:
        if self.r.on_progress:
            self.r.on_progress(Progress(self.job.id, self.done, self.job.n, self.step, self.steps))


class RayUpscaleRunner(RayGenerateRunner):
    """Runs a claimed upscale job on the pool: parents' files out, upscaled PNGs in, recorded here."""

    def _run(self, job: Job) -> None:
        sweep_temp(self.instance.upscaled_dir)
        model = job.params.get("model", "x4plus")
        ids = job.params.get("image_ids", [])
        items = [(idx, pid) for idx, pid in enumerate(ids) if self.store.upscale_of(pid, model) is None]
        finished = [len(ids) - len(items)]
        self.store.set_job_done(job.id, finished[0])

        def send(actor, item):
            parent = self.store.get_image(item[1])
            src = self.instance.file(parent.path)
            if src is None:
                raise BadRequest(f"image {parent.id} has no file inside the gallery")
            return actor.upscale.remote(model, src.read_bytes(), *upscale_recipe(parent, model))

        def record(item, result) -> int:
            record_upscale(self.store, self.instance, job.id, item[0], self.store.get_image(item[1]), model, result)
            finished[0] += 1
            self.store.set_job_done(job.id, finished[0])
            return 1

        if items:
            _Dispatch(self, job, items, finished[0], 1, send, record, lambda item: f"the upscale of image {item[1]}").run()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class RayExecutor:
    """Runs generate and upscale jobs on a pool of Ray actors."""

    def __init__(self, options: RayOptions, owns_connection: bool = False):
        self.options = options
        self.owns_connection = owns_connection  # leave on close() only what this executor joined
        self.pools: dict = {}

    @classmethod
    def connect(cls, options: RayOptions) -> "RayExecutor":
        """Join (or start) the cluster; ClusterUnreachable in one line if that fails."""
        return cls(options, connect(options))

    def describe(self) -> str:
        """The cluster in a few words: nodes, CPUs, GPUs."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        return f"{len(nodes)} node(s), {int(total.get('CPU', 0))} CPU(s), {int(total.get('GPU', 0))} GPU(s)"

    def pool(self, instance: Instance, device: str) -> ActorPool:
        """The actor pool for a device kind, made on first use."""
        key = device
        if key not in self.pools:
            self.pools[key] = ActorPool(self.options, self.options.models_root or str(instance.root), device)
        return self.pools[key]

    def check(self, device: str) -> None:
        """NoDevice, in one line, if the cluster has no node for the device asked for."""
        ActorPool(self.options, "", device)._shape()

    def runners(self, store: Store, instance: Instance, models: ModelCache, device: str,
                on_progress: ProgressFn | None, stop: StopSignal) -> dict:
        """Generate and upscale runners on the cluster's actors (one pool for both)."""
        return {"generate": RayGenerateRunner(store, instance, self.pool(instance, device), self.options,
                                              on_progress=on_progress, stop=stop, models=models),
                "upscale": RayUpscaleRunner(store, instance, self.pool(instance, device), self.options,
                                            on_progress=on_progress, stop=stop)}

    def close(self) -> None:
        """Kill the actors; leave the cluster (a local one stops with this process)."""
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        if self.owns_connection and ray.is_initialized():
            ray.shutdown()
