"""Train the tiny VQGAN: taming-transformers' VQ autoencoder at 32x32, on drawn shapes.

    python scripts/train_tiny_vqgan.py            # the committed recipe (seeded, a few CPU minutes)
    python scripts/train_tiny_vqgan.py --steps 200 --out /tmp

The architecture is the ``vqgan-tiny`` preset's (``generate.backends.vqgan.build_vqgan``: the
same Encoder, Decoder and VectorQuantizer2 as the ImageNet model, smaller). It is trained as a
VQ-VAE (van den Oord et al. 2017): L1 and squared reconstruction error plus the quantiser's
codebook and commitment loss, without VQGAN's adversarial and perceptual terms, which a 32x32
model of flat-coloured shapes does not need. Weights are written in fp16 to stay small.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def restart_dead_codes(model, z: torch.Tensor, used: torch.Tensor) -> None:
    """Move codebook entries no latent chose lately onto latents of this batch (a standard VQ remedy)."""
    dead = (~used).nonzero().flatten()
    if len(dead) == 0:
        return
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = flat[torch.randint(0, len(flat), (len(dead),))]
    model.quantize.embedding.weight[dead] = pick + 0.01 * torch.randn_like(pick)


def train(steps: int, seed: int, out: Path, batch: int = 16) -> None:
    """Fit the tiny VQGAN to drawn shapes and save its weights."""
    from generate import presets as P
    from generate.backends.vqgan import build_vqgan
    from generate.tiny.shapes import dataset
    from generate.tiny.train import save_fp16

    torch.manual_seed(seed)
    model = build_vqgan(P.VQGAN_TINY.config)
    images, _ = dataset(8000, 32, seed + 11)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    model.train()
    n_embed = model.quantize.n_e
    used = torch.zeros(n_embed, dtype=torch.bool)
    t0 = time.time()
    for step in range(steps):
        x = x_all[torch.randint(0, len(x_all), (batch,))]
        if step % 2:
            x = torch.flip(x, dims=[3])
        z = model.encode(x)
        if step % 50 == 0 and step < steps * 0.7:
            restart_dead_codes(model, z, used)
            used.zero_()
        z_q, qloss, (_, _, idx) = model.quantize(z)
        used[idx.flatten()] = True
        rec = model.decode(z_q)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + qloss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"vqgan step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        test = x_all[:256]
        rec, _ = model(test)
        print(f"held-in reconstruction mean abs error: {(rec.clamp(-1, 1) - test).abs().mean().item() * 127.5:.1f}/255")
    save_fp16(model.state_dict(), out / "tiny-vqgan.pt")


def main(argv=None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "generate" / "tiny")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    train(a.steps, a.seed, a.out)


if __name__ == "__main__":
    main()
