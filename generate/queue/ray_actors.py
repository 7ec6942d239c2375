"""The Ray side of the executor: joining a cluster, the image actors, their pool and the progress hub.

An actor is one device's worth of work (a GPU, or a few CPUs): it loads its models once through
the same ``ModelCache`` as in-process runs, into its node's model cache (weights fetched on first
use), and returns finished images whole; it never sees the gallery's database or folders.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError

from gallery.errors import BadRequest, Cancelled, ClusterError, ClusterUnreachable, NoDevice
from gallery.imaging import load_rgb
from gallery.instance import Instance
from gallery.recipe import Recipe
from gallery.store import Job, Store

from .. import generators
from ..diffusion import load_image_ref
from ..models import ModelCache
from ..prompts import parse_image_prompt
from .runner import compute_images

# Environment an actor inherits from the head, where set: offline switches and caches.
PASSED_ENV = ("CLIP_CURATOR_OFFLINE", "HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME")


@dataclass
class RayOptions:
    """How to reach the cluster and how to shape the pool of actors."""

    address: str | None = None  # None: start a local instance
    local_cpus: int | None = None  # CPUs of a local instance (default: all of this machine's)
    cpus_per_actor: int = 1  # on CPU-only clusters
    max_actors: int | None = None
    max_restarts: int = 3  # per actor (Ray restarts it, on another node if its node died)
    # A task Ray retries waits for its own actor to come back, which on a full cluster (a node
    # gone, nowhere to restart) may be never: a lost batch is re-sent by the head instead, to a
    # live actor, at most this many times.
    max_task_retries: int = 0
    head_retries: int = 3
    heartbeat_s: float = 0.5
    cancel_grace_s: float = 10.0  # then actors still busy with a cancelled job are killed (and restart)
    models_root: str | None = None  # a model cache folder on every node (default: the head's instance path)
    start_timeout_s: float = 600.0  # creating actors and loading models, weights fetched on first use
    env: dict = field(default_factory=dict)


def code_runtime_env() -> dict:
    """How actors get this code: from a source checkout, shipped by Ray; installed, nothing to ship.

    An installed clip-curator (``pip install clip-curator[ray]`` on every node) is imported from
    each node's own site-packages. A checkout run in place (``python cli.py``, an editable install)
    is packed by Ray and unpacked on each node, so a development tree needs nothing installed there.
    """
    root = Path(__file__).resolve().parents[2]
    if "site-packages" in root.parts or not (root / "pyproject.toml").is_file():
        return {}
    return {"py_modules": [str(root / name) for name in ("gallery", "generate", "search")]}


def _check_reachable(address: str) -> None:
    # ray.init retries an unreachable address for a long time; a plain connect answers at once.
    host, _, port = address.rpartition(":")
    if address == "auto":
        return
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"{address!r} is not a Ray address; give HOST:PORT (the head's GCS port, 6379 "
                                 "unless `ray start --head --port` said otherwise), or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as e:
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({e.strerror or e}); start one there with "
                                 "`ray start --head`, or check the address it printed") from None


def connect(options: RayOptions) -> bool:
    """Join the cluster at options.address, or start a local one; False if this process had already joined one."""
    if options.address:
        _check_reachable(options.address)
    if ray.is_initialized():
        return False
    common = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
                  runtime_env=code_runtime_env())
    if options.address:
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, **common)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError: all the user's to fix
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterUnreachable(f"could not join the Ray cluster at {options.address}: {first[:300]}") from None
    else:
        ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False, **common)
    return True


class ProgressHub:
    """A small actor that keeps each image actor's latest step until the head collects it."""

    def __init__(self):
        self._latest: dict = {}

    def report(self, key: str, job_id: int, index: int, step: int, steps: int) -> None:
        """Keep an actor's latest position (fire and forget from the actor)."""
        self._latest[key] = (job_id, index, step, steps)

    def drain(self) -> dict:
        """Everything reported since the last drain."""
        out, self._latest = self._latest, {}
        return out


class ImageActor:
    """One device's worth of work: its models, loaded once, and the images it is sent to make."""

    def __init__(self, models_root: str, device: str, threads: int | None, hub: str, heartbeat_s: float, env: dict):
        os.environ.update(env)
        self.instance = Instance(Path(models_root))
        self.models = ModelCache(self.instance, progress=False, fetch=True)
        self.device_name = device
        self.threads = threads
        self.hub_name = hub  # looked up by name: a handle among the arguments would not survive a restart
        self.hub = None
        self.heartbeat_s = heartbeat_s
        self._gen: tuple | None = None  # (batch recipe, generator) of the last batch
        self._refs = tempfile.mkdtemp(prefix="clip-curator-refs-")
        self._upscalers: dict = {}

    def info(self) -> dict:
        """Where this actor runs (node, device, pid), or the one-line reason it cannot."""
        import torch

        from ..models import pick_device

        if self.threads:
            torch.set_num_threads(self.threads)
        ctx = ray.get_runtime_context()
        node = f"{socket.gethostname()}/{ctx.get_node_id()[:8]}"
        try:
            self.device = pick_device(self.device_name)
        except BadRequest as e:
            return {"error": f"node {node}: {e}", "node": node}
        gpus = ctx.get_accelerator_ids().get("GPU", [])
        self.node = node
        self.label = f"cuda:{gpus[0]}" if self.device.type == "cuda" and gpus else str(self.device)
        return {"node": node, "device": self.label, "pid": os.getpid(), "error": None, "code": __file__}

    def _generator(self, recipe_json: str, refs: dict):
        # The generator of a batch's recipe, kept while the next batches share it.
        if self._gen is None or self._gen[0] != recipe_json:
            folder = Path(tempfile.mkdtemp(dir=self._refs))
            paths = {}
            for k, (ref, data) in enumerate(refs.items()):
                paths[ref] = folder / f"{k}.img"
                paths[ref].write_bytes(data)
            gen = generators.make(Recipe.from_json(recipe_json), self.models, self.device,
                                  load_image=lambda ref: load_rgb(paths[ref]))
            self._gen = (recipe_json, gen)
        return self._gen[1]

    def generate(self, job: Job, recipe_json: str, indices: list[int], every: int, refs: dict) -> list:
        """Make the images of these indices of a job, from their batch's recipe (``ImagePlan``); a
        cancel of this task stops it at the next step."""
        if not hasattr(self, "device"):
            self.info()  # a restarted actor: its constructor ran again, info() did not
        gen = self._generator(recipe_json, refs)
        if self.hub is None:
            self.hub = ray.get_actor(self.hub_name)
        ctx = ray.get_runtime_context()
        key = f"{self.node} {self.label}"
        last = [0.0]

        def on_step(step) -> None:
            if ctx.is_canceled():
                raise Cancelled(f"job {job.id}: task cancelled")
            t = time.monotonic()
            if t - last[0] >= self.heartbeat_s or step.index == step.total - 1:
                last[0] = t
                self.hub.report.remote(key, job.id, indices[0], step.index + 1, step.total)

        return compute_images(gen, job, indices, every, on_step, self.node, self.label)

    def upscale(self, model: str, data: bytes, recipe: dict, extra: dict):
        """Upscale one image (its file's bytes); the upscaler is loaded once per model."""
        from ..upscale import Upscaler
        from .upscale_runner import upscale_png

        if not hasattr(self, "device"):
            self.info()
        if model not in self._upscalers:
            self._upscalers[model] = Upscaler(model, threads=self.threads)
        if ray.get_runtime_context().is_canceled():
            raise Cancelled("upscale cancelled")
        src = Path(self._refs) / "upscale-source"
        src.write_bytes(data)
        return dataclasses.replace(upscale_png(self._upscalers[model], src, recipe, extra), node=self.node)


def reference_images(recipe: Recipe, store: Store, instance: Instance) -> dict:
    """The bytes of every image a recipe refers to (init, image prompts), read on the head for the actors."""
    refs = [recipe.init_image] if recipe.init_image else []
    refs += [parse_image_prompt(spec).ref for spec in recipe.image_prompts]
    out = {}
    for ref in refs:
        buf = io.BytesIO()
        load_image_ref(ref, store, instance).save(buf, format="PNG")
        out[ref] = buf.getvalue()
    return out


class ActorPool:
    """The actors of one device kind across the cluster, made on first use, kept until close()."""

    def __init__(self, options: RayOptions, models_root: str, device: str):
        self.options = options
        self.models_root = models_root
        self.device = device
        self.actors: list = []
        self.where: list[dict] = []
        self.hub = None

    def _shape(self) -> tuple[int, dict]:
        # How many actors, and the resources of each, for the device asked for.
        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
        kind = self.device.split(":")[0]
        if kind == "cuda" and not gpus:
            raise NoDevice(f"the Ray cluster has no GPU ({cpus} CPUs), but --device {self.device} asks for CUDA: "
                           "add a GPU node (`ray start --address=...` there) or use --device cpu")
        if kind == "cuda" or (kind == "auto" and gpus):
            n, res = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            per = max(1, self.options.cpus_per_actor)
            n, res = cpus // per, {"num_cpus": per}
            if n == 0:
                raise NoDevice(f"the Ray cluster has {cpus} CPUs, fewer than the {per} each actor needs")
        if self.options.max_actors:
            n = min(n, self.options.max_actors)
        return n, res

    def start(self) -> list:
        """The actors, created and checked (node, device) on first use."""
        if self.actors:
            return self.actors
        n, res = self._shape()
        env = {"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
        hub = f"clip-curator-progress-{uuid.uuid4().hex}"
        self.hub = ray.remote(ProgressHub).options(name=hub, num_cpus=0, max_restarts=-1, runtime_env=env).remote()
        threads = None if res.get("num_gpus") else res["num_cpus"]
        device = "cuda" if res.get("num_gpus") else ("cpu" if self.device == "auto" else self.device)
        cls = ray.remote(ImageActor)
        self.actors = [cls.options(**res, max_restarts=self.options.max_restarts,
                                   max_task_retries=self.options.max_task_retries, scheduling_strategy="SPREAD",
                                   runtime_env=env).remote(self.models_root, device, threads, hub,
                                                           self.options.heartbeat_s, env["env_vars"])
                       for _ in range(n)]
        try:
            self.where = ray.get([a.info.remote() for a in self.actors], timeout=self.options.start_timeout_s)
        except GetTimeoutError:
            self.close()
            raise ClusterError(f"{n} Ray actor(s) did not start within {self.options.start_timeout_s:g} s: is the "
                               "cluster busy with other work?") from None
        errors = [w["error"] for w in self.where if w["error"]]
        if errors:
            self.close()
            raise NoDevice(errors[0])
        return self.actors

    def node_of(self, actor) -> str:
        """The node an actor was started on."""
        for a, w in zip(self.actors, self.where):
            if a == actor:
                return w.get("node") or "a Ray node"
        return "a Ray node"

    def pids(self) -> list[int]:
        """The process id of each actor as it is now (restarted actors have new ones; waits for them)."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + 60
        while True:
            try:
                return [w["pid"] for w in ray.get([a.info.remote() for a in self.actors], timeout=60)]
            except ActorUnavailableError:  # restarting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def drop(self, actor) -> None:
        """Forget an actor that is dead for good."""
        if actor in self.actors:
            self.actors.remove(actor)

    def drain_progress(self) -> dict:
        """The latest step each actor reported (empty if the hub could not be asked)."""
        try:
            return ray.get(self.hub.drain.remote(), timeout=5)
        except Exception:  # progress is best effort; the images themselves are what counts
            return {}

    def close(self) -> None:
        """Kill the actors and the hub."""
        for a in [*self.actors, *([self.hub] if self.hub else [])]:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors, self.where, self.hub = [], [], None
