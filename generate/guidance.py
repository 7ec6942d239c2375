"""CLIP guidance for guided_diffusion: cutouts, losses and a ``cond_fn``.

The method of the 2021 CLIP Guided Diffusion notebooks (Crowson): at each step take the model's
prediction of the clean image, blend it with the current noisy image, make ``cutn`` random square
cutouts whose sizes follow ``rand ** cut_pow``, embed them with CLIP and descend the squared
spherical (great-circle) distance to the weighted prompt embeddings; total-variation and range
losses keep the image smooth and inside [-1, 1]. The returned gradient of minus the loss is what
guided_diffusion's ``condition_mean_with_grad`` / ``condition_score_with_grad`` expect.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GuidanceScales:
    """How strongly each loss pulls, and how the cutouts are drawn."""

    clip_guidance_scale: float = 1000.0
    tv_scale: float = 150.0
    range_scale: float = 50.0
    cutn: int = 16
    cut_pow: float = 0.5


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Half the squared great-circle distance between the directions of x and y."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    # Rounding can push the half-chord of (nearly) opposite vectors past 1, where arcsin is NaN.
    return (x - y).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-image total variation (squared neighbour differences, replicate padding)."""
    x = F.pad(x, (0, 1, 0, 1), "replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx ** 2 + dy ** 2).mean([1, 2, 3])


def range_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-image squared distance of the pixels outside [-1, 1] from it."""
    return (x - x.clamp(-1, 1)).pow(2).mean([1, 2, 3])


def make_cutouts(image: torch.Tensor, cut_size: int, cutn: int, cut_pow: float,
                 generator: torch.Generator) -> torch.Tensor:
    """``cutn`` random square crops of one [C, H, W] image, each pooled to cut_size x cut_size.

    Sizes are ``rand ** cut_pow`` between min(H, W, cut_size) and min(H, W); positions uniform.
    The randomness comes from ``generator`` (on the CPU) so an image's cutouts do not depend on
    the other images in its batch.
    """
    h, w = image.shape[-2:]
    max_size = min(h, w)
    min_size = min(h, w, cut_size)
    out = []
    for _ in range(cutn):
        size = int(torch.rand([], generator=generator) ** cut_pow * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, w - size + 1, (), generator=generator))
        oy = int(torch.randint(0, h - size + 1, (), generator=generator))
        out.append(F.adaptive_avg_pool2d(image[None, :, oy:oy + size, ox:ox + size], cut_size))
    return torch.cat(out)


def autocast_for(device: torch.device, precision: str):
    """An autocast context for 'bf16'/'fp16', or a no-op for 'fp32'."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class ClipGuide:
    """A cond_fn steering samples towards weighted CLIP targets (texts and images)."""

    def __init__(self, clip, diffusion, target_embeds: torch.Tensor, weights: torch.Tensor,
                 scales: GuidanceScales, cut_generators: list[torch.Generator], precision: str = "fp32"):
        self.clip = clip
        self.diffusion = diffusion
        self.target = target_embeds.float()
        # The notebooks normalise by the absolute sum so negative parts keep their sign.
        self.weights = weights.float() / weights.float().sum().abs()
        self.scales = scales
        self.generators = cut_generators
        self.precision = precision

    def loss(self, x: torch.Tensor, t: torch.Tensor, out: dict) -> torch.Tensor:
        """The summed guidance loss of a batch, differentiable with respect to x."""
        s = self.scales
        fac = torch.as_tensor(self.diffusion.sqrt_one_minus_alphas_cumprod, device=x.device,
                              dtype=torch.float32)[t].view(-1, 1, 1, 1)
        x_in = out["pred_xstart"] * fac + x * (1 - fac)
        loss = tv_loss(x_in).sum() * s.tv_scale + range_loss(out["pred_xstart"]).sum() * s.range_scale
        if s.clip_guidance_scale:
            pixels = x_in.add(1).div(2)
            cuts = torch.cat([
                make_cutouts(pixels[i], self.clip.image_size, s.cutn, s.cut_pow, self.generators[i])
                for i in range(x.shape[0])
            ])
            with autocast_for(x.device, self.precision):
                embeds = self.clip.encode_image(cuts)
            embeds = embeds.float().view(x.shape[0], s.cutn, -1)
            target = self.target.to(x.device)
            dists = spherical_dist_loss(embeds.unsqueeze(2), target.view(1, 1, *target.shape))
            per_image = (dists * self.weights.to(x.device)).sum(2).mean(1)
            loss = loss + per_image.sum() * s.clip_guidance_scale
        return loss

    def __call__(self, x: torch.Tensor, t: torch.Tensor, out: dict, **_) -> torch.Tensor:
        """Gradient of minus the loss with respect to x (guided_diffusion's cond_fn contract)."""
        return -torch.autograd.grad(self.loss(x, t, out), x)[0]
