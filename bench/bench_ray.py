"""Throughput of the Ray executor against the in-process runner, measured in one run.

    python bench/bench_ray.py [--n 32] [--steps 10]

A tiny-preset job of N images, made three ways on this machine, each after a warm-up job (models
loaded, actors started): in-process, Ray with one actor, and Ray with one actor per core, every
process with the same torch threads (``--threads``, 1 by default: on a shared 2-core machine two
threads per process fight other work and swamp the comparison). Prints images/s, the ratio to in-process, and Ray's overhead per
image with one actor (its time minus in-process, over N), which bounds scaling on paper: with N
devices at t s/image and overhead o, throughput is N / (t + o).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLIP_CURATOR_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Run the three configurations and print the table."""
    import torch

    from gallery.instance import Instance
    from gallery.recipe import Recipe
    from gallery.store import Store
    from generate.diffusion import complete
    from generate.models import ModelCache
    from generate.queue import GenerateRunner, StopSignal
    from generate.queue.ray_executor import RayExecutor, RayOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each process (CPUs per actor)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    inst = Instance(Path(tempfile.mkdtemp(prefix="bench-ray-")))
    store = Store(inst.db_path)
    models = ModelCache(inst, progress=False)
    recipe = complete(Recipe(prompt="a red circle on a white background", model="tiny", steps=args.steps))

    def job(n: int, seed: int) -> int:
        return store.create_job("generate", recipe.to_json(), n, seed)

    def timed(runner) -> float:
        runner.run(job(1, 10_000))  # warm-up: models loaded, actors started
        j = job(args.n, 0)
        t = time.perf_counter()
        assert runner.run(j) == "done" and store.get_job(j).done == args.n
        return time.perf_counter() - t

    rows = [("in-process", args.threads, timed(GenerateRunner(store, inst, models, "cpu")))]
    RayExecutor.connect(RayOptions(local_cpus=cores))
    per = args.threads
    for actors in (1, max(2, cores // per)):
        ex = RayExecutor(RayOptions(cpus_per_actor=per, max_actors=actors))
        rows.append((f"Ray, {actors} actor(s) x {per} CPU", per,
                     timed(ex.runners(store, inst, models, "cpu", None, StopSignal())["generate"])))
        ex.close()
    RayExecutor(RayOptions(), owns_connection=True).close()

    base = rows[0][2]
    print(f"tiny preset, {args.n} images x {args.steps} steps, {cores} CPU cores, torch {torch.__version__}")
    print("| executor | torch threads each | s | images/s | vs in-process |")
    print("|---|---:|---:|---:|---:|")
    for name, threads, secs in rows:
        print(f"| {name} | {threads} | {secs:.1f} | {args.n / secs:.2f} | {base / secs:.2f}x |")
    overhead = (rows[1][2] - base) / args.n * 1000
    print(f"Ray overhead per image, one actor against in-process: {overhead:.0f} ms "
          f"(in-process {base / args.n * 1000:.0f} ms/image)")


if __name__ == "__main__":
    main()
