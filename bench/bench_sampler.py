"""Benchmark: one CLIP-guided step of the real 256x256 architecture on this machine.

    python bench/bench_sampler.py            # about 5 minutes on 2 CPU cores
    python bench/bench_sampler.py --steps 1  # quicker, noisier

Builds OpenAI's uncond-256 UNet and a ViT-B-32 with random weights (nothing is downloaded; the
UNet's zero-initialised output layer is given small random weights so gradients flow as in a
trained model), then times, in one process and from the same seed:

1. our sampler (one UNet forward per step, reused for the step and the guidance gradient)
   against the notebook loop (a no-grad forward for the step plus a grad forward in cond_fn);
   the pixels must be identical, and the speed-up is printed (target >= 1.25x);
2. fp32 against bf16 autocast: speed ratio, and the relative error of the guidance gradient;
3. a whole image on the tiny preset, with its committed weights.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generate import presets as P  # noqa: E402
from generate.guidance import ClipGuide, GuidanceScales  # noqa: E402
from generate.models import Clip, ModelCache, build_diffusion, build_unet  # noqa: E402
from generate.sampler import sample  # noqa: E402


def random_clip(name: str = "ViT-B-32") -> Clip:
    """An open_clip model of the real architecture with random weights."""
    import open_clip

    model = open_clip.create_model(name).requires_grad_(False).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    return Clip(f"{name}/random", model, open_clip.get_tokenizer(name), int(size),
                torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1))


def timed(fn, repeats: int = 1):
    """(median seconds, last result) of fn()."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def main(argv=None) -> int:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="guided steps per timing (respaced schedule)")
    ap.add_argument("--cutn", type=int, default=16)
    ap.add_argument("--skip-bf16", action="store_true")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    t0 = time.perf_counter()
    unet = build_unet(P.UNCOND_256)
    torch.nn.init.normal_(unet.out[-1].weight, std=1e-3)
    unet = unet.requires_grad_(False).eval()
    clip = random_clip()
    print(f"built uncond-256 ({sum(p.numel() for p in unet.parameters()):,} parameters) and ViT-B-32 "
          f"in {time.perf_counter() - t0:.1f} s")
    # Sample the last `steps` timesteps of a 50-step schedule, where guidance is at full strength.
    diffusion = build_diffusion(P.UNCOND_256, 50, "ddpm")
    skip = 50 - a.steps
    target = clip.encode_text(["a beautiful colorful fish, trending on artstation"])
    scales = GuidanceScales(clip_guidance_scale=1000, tv_scale=150, range_scale=50, cutn=a.cutn, cut_pow=0.5)

    def run(reuse_forward: bool, precision: str = "fp32"):
        guide = ClipGuide(clip, diffusion, target, torch.ones(1), scales, [torch.Generator().manual_seed(1)],
                          precision)
        return sample(unet, diffusion, [7], (3, 256, 256), cond_fn=guide, skip_timesteps=skip,
                      reuse_forward=reuse_forward, precision=precision)

    # Warm-up (allocator, oneDNN kernels) so neither timed loop pays first-run costs.
    sample(unet, diffusion, [0], (3, 256, 256), skip_timesteps=49,
           cond_fn=ClipGuide(clip, diffusion, target, torch.ones(1), scales, [torch.Generator().manual_seed(0)]))
    t_two, x_two = timed(lambda: run(False))
    t_one, x_one = timed(lambda: run(True))
    same = torch.equal(x_one, x_two)
    print("\n| real 256 model, random weights, guided step (ViT-B-32, %d cutouts) | s/step |" % a.cutn)
    print("|---|---|")
    print(f"| notebook loop (no-grad forward + grad forward in cond_fn), fp32 | {t_two / a.steps:.1f} |")
    print(f"| clip-curator sampler (one grad forward reused), fp32 | {t_one / a.steps:.1f} |")
    if not a.skip_bf16:
        t_bf, x_bf = timed(lambda: run(True, "bf16"))
        print(f"| clip-curator sampler, bf16 autocast | {t_bf / a.steps:.1f} |")
    print(f"\none-forward vs notebook loop: {t_two / t_one:.2f}x faster, pixels identical: {same} "
          f"(max abs difference {float((x_one - x_two).abs().max()):.3g})")
    if not a.skip_bf16:
        # Guidance gradient at one (x, t), fp32 against bf16.
        x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
        t = torch.tensor([diffusion.num_timesteps - 1])
        grads = {}
        for prec in ("fp32", "bf16"):
            from generate.sampler import _AutocastModel

            guide = ClipGuide(clip, diffusion, target, torch.ones(1), scales, [torch.Generator().manual_seed(1)],
                              prec)
            xg = x.clone().requires_grad_()
            with torch.enable_grad():
                out = diffusion.p_mean_variance(_AutocastModel(unet, torch.device("cpu"), prec), xg, t,
                                                clip_denoised=False, model_kwargs={})
                grads[prec] = guide(xg, t, out)
        err = float((grads["bf16"] - grads["fp32"]).norm() / grads["fp32"].norm())
        print(f"bf16 autocast vs fp32: {t_one / t_bf:.2f}x faster, guidance gradient relative error {err:.2%}, "
              f"final pixels max abs difference {float((x_bf - x_one).abs().max()):.3g}")

    # A whole tiny-preset image, the way the demo makes it.
    from gallery.instance import Instance
    from gallery.recipe import Recipe
    from generate.diffusion import Generator

    models = ModelCache(Instance(Path("instance")), progress=False)
    gen = Generator(Recipe(prompt="a red circle on a white background", model="tiny"), models, torch.device("cpu"))
    gen.run([0])  # warm-up
    t_tiny, _ = timed(lambda: gen.run([1]), repeats=3)
    print(f"tiny preset: one {P.TINY_32.image_size}x{P.TINY_32.image_size} image, {gen.recipe.steps} guided "
          f"steps: {t_tiny:.2f} s")
    if not same:
        print("FAIL: the one-forward sampler changed the pixels")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
