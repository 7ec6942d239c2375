"""Benchmark: seconds per iteration and per image of each optimisation backend at its real size.

    python bench/bench_backends.py                  # several minutes on 2 CPU cores
    python bench/bench_backends.py --only vqgan-imagenet-16384 --iterations 2

Every model is built with random weights (nothing is downloaded): ViT-B-32 for the cutouts, as
the notebooks used, the ImageNet f16 16384 VQGAN, BigGAN-deep and deep-daze's SIREN, all at
their presets' sizes, through the backends' own generator classes; the weights files are
random-weight checkpoints written to a temporary folder and loaded through the checked loader.
Each backend runs ``--iterations`` iterations on one seed; the first pays warm-up costs, so the
figure per iteration is the median of the later ones, and the figure per image is that times
the preset's default number of iterations. Guided diffusion's uncond-256 step (one UNet
forward and backward with ViT-B-32 guidance) is timed beside them. GPU rows say unmeasured
unless CUDA is available.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_sampler import random_clip  # noqa: E402

from gallery.instance import Instance  # noqa: E402
from gallery.recipe import Recipe  # noqa: E402
from generate import presets as P  # noqa: E402
from generate.backends import generator_class  # noqa: E402
from generate.models import ModelCache  # noqa: E402

PRESETS = ("siren", "vqgan-imagenet-16384", "biggan-deep-128", "biggan-deep-256", "biggan-deep-512")


def random_checkpoint(preset: P.BackendPreset, folder: Path) -> str | None:
    """A random-weight checkpoint of the preset's architecture (None for SIREN, which needs none)."""
    if preset.backend == "siren":
        return None
    if preset.backend == "vqgan":
        from generate.backends.vqgan import build_vqgan as build
    else:
        from generate.backends.biggan import build_biggan as build
    torch.manual_seed(0)
    model = build(preset.config)
    if preset.backend == "biggan":
        converge_spectral_norms(model)
    path = folder / f"{preset.name}.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@torch.no_grad()
def converge_spectral_norms(model: torch.nn.Module, iterations: int = 30) -> None:
    """Run the spectral norms' power iterations, as training would have, so random weights stay finite.

    A fresh spectral norm's singular vectors are random: in eval mode its estimate of the largest
    singular value can be near zero and blow the normalised weight up.
    """
    from torch.nn.utils.spectral_norm import SpectralNorm

    model.train()
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                for _ in range(iterations):
                    hook(module, None)
    model.eval()


def time_backend(preset: P.BackendPreset, models: ModelCache, device: torch.device, iterations: int,
                 cutn: int, folder: Path) -> tuple[float, int, int]:
    """(seconds per iteration, image side, default iterations) of one backend on one seed."""
    recipe = Recipe(prompt="a beautiful colorful fish, trending on artstation", model=preset.name,
                    clip_model="vit-b-32", checkpoint=random_checkpoint(preset, folder))
    gen = generator_class(preset.backend)(recipe, models, device, settings={"iterations": iterations, "cutn": cutn})
    stamps = [time.perf_counter()]
    x = gen.run([7], lambda step: stamps.append(time.perf_counter()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    laps = sorted(b - a for a, b in zip(stamps[1:-1], stamps[2:])) or [stamps[1] - stamps[0]]
    return laps[len(laps) // 2], int(x.shape[-1]), int(preset.defaults["iterations"])


def time_diffusion_step(device: torch.device, cutn: int) -> float:
    """Seconds per guided uncond-256 step (ViT-B-32 guidance), random weights, fp32, after a warm-up step."""
    from generate.guidance import ClipGuide, GuidanceScales
    from generate.models import build_diffusion, build_unet
    from generate.sampler import sample

    unet = build_unet(P.UNCOND_256)
    torch.nn.init.normal_(unet.out[-1].weight, std=1e-3)
    unet = unet.requires_grad_(False).eval().to(device)
    clip = random_clip()
    clip.model.to(device)
    diffusion = build_diffusion(P.UNCOND_256, 50, "ddpm")
    target = clip.encode_text(["a beautiful colorful fish, trending on artstation"])
    guide = ClipGuide(clip, diffusion, target, torch.ones(1), GuidanceScales(cutn=cutn),
                      [torch.Generator().manual_seed(1)])
    stamps = [time.perf_counter()]
    # Two steps: the first pays warm-up costs, the second is the figure.
    sample(unet, diffusion, [7], (3, 256, 256), device=device, cond_fn=guide, skip_timesteps=48,
           callback=lambda step: stamps.append(time.perf_counter()))
    return stamps[2] - stamps[1]


def main(argv=None) -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2, help="iterations per backend (the first warms up)")
    ap.add_argument("--cutn", type=int, default=16, help="ViT-B-32 cutouts per iteration")
    ap.add_argument("--only", nargs="*", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--skip-diffusion", action="store_true")
    a = ap.parse_args(argv)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for device in devices:
            models = ModelCache(Instance(folder / "instance"), progress=False)
            models.put_clip("vit-b-32", device, _on(random_clip(), device))
            for name in a.only:
                preset = P.BACKEND_PRESETS[name]
                s_iter, side, n_iter = time_backend(preset, models, device, a.iterations, a.cutn, folder)
                rows.append((device.type, f"{name} ({preset.backend}, {side}x{side})", s_iter, n_iter))
                print(f"  {device.type} {name}: {s_iter:.2f} s/iteration", flush=True)
            models.close()
            if not a.skip_diffusion:
                step = time_diffusion_step(device, a.cutn)
                rows.append((device.type, "uncond-256 guided diffusion (per step)", step, P.UNCOND_256.defaults["steps"]))
                print(f"  {device.type} uncond-256: {step:.2f} s/step", flush=True)
    diffusion = {d: s for d, label, s, _ in rows if label.startswith("uncond-256")}
    print(f"\n| backend at its real size, random weights, ViT-B-32 with {a.cutn} cutouts | device "
          "| s/iteration (s/step) | iterations per image (preset) | s/image | s/iteration vs a diffusion step |")
    print("|---|---|---|---|---|---|")
    for device, label, s, n in rows:
        ratio = f"{s / diffusion[device]:.2f}x" if device in diffusion else "-"
        print(f"| {label} | {device} | {s:.2f} | {n} | {s * n:.0f} | {ratio} |")
    if not torch.cuda.is_available():
        for name in a.only + ([] if a.skip_diffusion else ["uncond-256"]):
            print(f"| {name} | GPU | unmeasured (no GPU here) | | | |")
    return 0


def _on(clip, device: torch.device):
    clip.model.to(device)
    return clip


if __name__ == "__main__":
    sys.exit(main())
