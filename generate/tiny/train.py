"""Train the tiny preset (a 32x32 guided_diffusion UNet and a small open_clip model) on drawn shapes.

    python -m generate.tiny.train            # both models, the committed recipe
    python -m generate.tiny.train clip --steps 200

The CLIP half is contrastive training (Radford et al. 2021) with open_clip's own ClipLoss; the
diffusion half is guided_diffusion's own ``training_losses`` (Nichol & Dhariwal 2021, hybrid
loss with learned sigmas). Both are seeded; weights are written in fp16 to stay small.
"""
from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import numpy as np
import torch

from gallery.files import atomic_write, sha256_file

from .. import presets as P
from ..models import build_diffusion, build_unet
from .shapes import COLOURS, SHAPES, dataset

HERE = Path(__file__).resolve().parent


def caption_variants(caption: str, rng: random.Random) -> tuple[str, tuple]:
    """A random phrasing of a caption and the (colour, shape, background) it asserts (None: any)."""
    words = caption.split()  # a C S on a B background
    c, s, b = words[1], words[2], words[5]
    return rng.choice([
        (caption, (c, s, b)), (caption, (c, s, b)), (f"a {c} {s}", (c, s, None)), (f"{c} {s}", (c, s, None)),
        (c, (c, None, None)), (s, (None, s, None)), (f"a {s} on a {b} background", (None, s, b)),
        (f"{b} background", (None, None, b)), (f"a {c} thing", (c, None, None)),
    ])


def soft_clip_loss(img_f, txt_f, scale, facts, asserted):
    """Symmetric contrastive loss whose targets are every pair the text truly describes.

    Short texts such as "red" describe many images in a batch, so one-hot targets would push
    true matches apart.
    """
    img_f = torch.nn.functional.normalize(img_f, dim=-1)
    txt_f = torch.nn.functional.normalize(txt_f, dim=-1)
    logits = scale * img_f @ txt_f.T
    match = torch.tensor([[all(a is None or a == f for a, f in zip(t, im)) for t in asserted] for im in facts],
                         dtype=torch.float32)
    li = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    lt = -(match.T / match.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (li + lt) / 2


def save_fp16(state: dict, path: Path) -> None:
    """Write a state dict with floating tensors in fp16 (loading casts back to the model's dtype), atomically."""
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    with atomic_write(path) as tmp:
        torch.save(half, tmp)
    # The presets verify the committed files by size and checksum: new weights need new figures there.
    print(f"{path.name}: size={path.stat().st_size}, sha256={sha256_file(path)} (update generate/presets.py)")


def train_clip(steps: int, seed: int, out: Path, batch: int = 256) -> None:
    """Contrastive training of the tiny open_clip model on drawn shapes."""
    import open_clip

    torch.manual_seed(seed)
    rng = random.Random(seed)
    P.register_tiny_clip_config()
    model = open_clip.create_model(P.TINY_CLIP.model)
    tokenizer = open_clip.get_tokenizer(P.TINY_CLIP.model)
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    images, captions = dataset(40000, 32, seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch,))
        x = x_all[idx]
        if rng.random() < 0.5:
            x = torch.flip(x, dims=[3])
        picked = [caption_variants(captions[i], rng) for i in idx.tolist()]
        facts = [(c.split()[1], c.split()[2], c.split()[5]) for c in (captions[i] for i in idx.tolist())]
        img_f, txt_f, scale = model((x - mean) / std, tokenizer([t for t, _ in picked]))
        loss = soft_clip_loss(img_f, txt_f, scale, facts, [a for _, a in picked])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"clip step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        names = list(COLOURS)
        tf = torch.nn.functional.normalize(model.encode_text(tokenizer([f"a {c} {s}" for c in names for s in SHAPES])), dim=-1)
        test, test_caps = dataset(500, 32, seed + 1)
        xf = torch.nn.functional.normalize(
            model.encode_image((torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255 - mean) / std), dim=-1)
        pred = (xf @ tf.T).argmax(1)
        labels = [f"a {c.split()[1]} {c.split()[2]}" for c in test_caps]
        keys = [f"a {c} {s}" for c in names for s in SHAPES]
        acc = np.mean([keys[p] == lab for p, lab in zip(pred.tolist(), labels)])
    print(f"clip zero-shot colour+shape accuracy on held-out drawings: {acc:.3f}")
    save_fp16(model.state_dict(), out)


def train_unet(steps: int, seed: int, out: Path, batch: int = 32) -> None:
    """Train the tiny UNet with guided_diffusion's hybrid loss and keep an EMA of its weights."""
    torch.manual_seed(seed)
    preset = P.TINY_32
    model = build_unet(preset)
    diffusion = build_diffusion(preset)
    ema = copy.deepcopy(model).requires_grad_(False)
    images, _ = dataset(40000, preset.image_size, seed + 7)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    model.train()
    t0 = time.time()
    for step in range(steps):
        x = x_all[torch.randint(0, len(x_all), (batch,))]
        t = torch.randint(0, diffusion.num_timesteps, (batch,))
        loss = diffusion.training_losses(model, x, t)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            print(f"unet step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    save_fp16(ema.state_dict(), out)


def main(argv=None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", choices=["clip", "unet", "both"], default="both")
    ap.add_argument("--clip-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.which in ("clip", "both"):
        train_clip(a.clip_steps, a.seed, a.out / "tiny-clip.pt")
    if a.which in ("unet", "both"):
        train_unet(a.unet_steps, a.seed, a.out / "tiny-unet.pt")


if __name__ == "__main__":
    main()
