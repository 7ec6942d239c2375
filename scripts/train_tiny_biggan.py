"""Train the tiny BigGAN: pytorch-pretrained-biggan's BigGAN-deep architecture at 32x32, on drawn shapes.

    python scripts/train_tiny_biggan.py            # the committed recipe (seeded, a few CPU minutes)
    python scripts/train_tiny_biggan.py --steps 200 --out /tmp

The architecture is the ``biggan-tiny`` preset's (``generate.backends.biggan.build_biggan``: the
same BigGAN class, config and spectral norms as BigGAN-deep, smaller), class-conditional on the
drawing's colour, shape and background (400 classes, 360 of them drawn). Adversarial training
does not fit in a few CPU minutes, so it is trained as a Generative Latent Optimization model
(Bojanowski et al. 2018): each training image owns a noise vector, kept on the sphere of radius
sqrt(z_dim) where standard normal noise lives, and generator and vectors are fitted together to
reconstruct the images (L1 plus squared error). Weights are written in fp16 to stay small.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def class_index(caption: str) -> int:
    """The tiny BigGAN's class of a drawing: its colour, shape and background (the noise places it)."""
    from generate.tiny.shapes import COLOURS, SHAPES

    words = caption.split()  # a C S on a B background
    colours = list(COLOURS)
    return (colours.index(words[1]) * len(SHAPES) + SHAPES.index(words[2])) * len(colours) + colours.index(words[5])


def train(steps: int, seed: int, out: Path, batch: int = 32, n: int = 2000) -> None:
    """Fit the tiny BigGAN and one noise vector per image to drawn shapes, and save the generator."""
    from generate import presets as P
    from generate.backends.biggan import build_biggan
    from generate.tiny.shapes import dataset
    from generate.tiny.train import save_fp16

    torch.manual_seed(seed)
    cfg = P.BIGGAN_TINY.config
    model = build_biggan(cfg)
    images, captions = dataset(n, 32, seed + 13)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    labels = torch.tensor([class_index(c) for c in captions])
    z_dim = cfg["z_dim"]
    codes = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(n, z_dim), dim=1) * math.sqrt(z_dim))
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 4e-3}, {"params": [codes], "lr": 3e-2}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[4e-3, 3e-2], total_steps=steps, pct_start=0.05)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,))
        x = x_all[idx]
        onehot = torch.nn.functional.one_hot(labels[idx], cfg["num_classes"]).float()
        rec = model(codes[idx], onehot, 1.0)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            codes.copy_(torch.nn.functional.normalize(codes, dim=1) * math.sqrt(z_dim))
        if step % 100 == 0 or step == steps - 1:
            print(f"biggan step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        rec = model(codes[:256], torch.nn.functional.one_hot(labels[:256], cfg["num_classes"]).float(), 1.0)
        print(f"held-in reconstruction mean abs error: {(rec - x_all[:256]).abs().mean().item() * 127.5:.1f}/255")
    save_fp16(model.state_dict(), out / "tiny-biggan.pt")


def main(argv=None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "generate" / "tiny")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    train(a.steps, a.seed, a.out)


if __name__ == "__main__":
    main()
