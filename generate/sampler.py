"""The sampler: a pure function from a model, a diffusion and seeds to images.

Ancestral DDPM (Ho et al. 2020) and DDIM (Song et al. 2020, eq. 12) over guided_diffusion's
(respaced) ``GaussianDiffusion``, conditioned by a ``cond_fn`` through guided_diffusion's own
``condition_mean_with_grad`` (DDPM, Sohl-Dickstein et al. 2015) or ``condition_score_with_grad``
(DDIM). The UNet runs once per step, with autograd on: its output gives both the step's mean and
variance and the x0 prediction the guidance differentiates through. The 2021 notebooks ran it
twice on the same x and t (``reuse_forward=False`` keeps that loop as a reference); the pixels
are identical and the one-forward loop saves the no-grad forward.

Every random draw is made on the CPU from per-image generators seeded by the image's seed, so an
image depends neither on the device's RNG nor on the other seeds in its batch; only the rounding
of batched kernels differs from a batch of one (reproduce exactly at the recorded batch size 1). No I/O:
progress, frames and cancellation go through ``callback``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .guidance import autocast_for


@dataclass
class Step:
    """What the callback sees after each step."""

    index: int
    total: int
    x: torch.Tensor
    pred_xstart: torch.Tensor


class _AutocastModel:
    """Calls the UNet under autocast and hands guided_diffusion float32 outputs."""

    def __init__(self, model, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision

    def __call__(self, x, t, **kwargs):
        with autocast_for(self.device, self.precision):
            return self.model(x, t, **kwargs).float()


def _randn(shape, generators: list[torch.Generator], device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def sample(model, diffusion, seeds: list[int], shape: tuple[int, int, int], *,
           device: torch.device = torch.device("cpu"), cond_fn=None, method: str = "ddpm",
           eta: float = 0.0, clip_denoised: bool = False, skip_timesteps: int = 0,
           init: torch.Tensor | None = None, precision: str = "fp32", reuse_forward: bool = True,
           callback: Callable[[Step], None] | None = None) -> torch.Tensor:
    """Sample one image per seed; returns a [len(seeds), C, H, W] tensor in about [-1, 1].

    ``init`` ([N or 1, C, H, W] in [-1, 1]) is noised to the first kept timestep, skipping
    ``skip_timesteps`` of the respaced schedule (init-image guidance keeps its composition).
    """
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampling method {method!r}")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    n = len(seeds)
    unet = _AutocastModel(model, device, precision)
    x = _randn(shape, generators, device)
    steps = list(range(diffusion.num_timesteps - skip_timesteps))[::-1]
    if not steps:
        raise ValueError("skip_timesteps leaves no steps to run")
    if init is not None:
        t0 = torch.full((n,), steps[0], device=device, dtype=torch.long)
        x = diffusion.q_sample(init.to(device).expand(n, *shape), t0, noise=x)
    kw: dict = {}  # guided_diffusion needs a dict here for cond_fn's **model_kwargs
    for i, step in enumerate(steps):
        t = torch.full((n,), step, device=device, dtype=torch.long)
        if cond_fn is None:
            with torch.no_grad():
                out = diffusion.p_mean_variance(unet, x, t, clip_denoised=clip_denoised, model_kwargs=kw)
        elif reuse_forward:
            with torch.enable_grad():
                x_grad = x.detach().requires_grad_()
                out = diffusion.p_mean_variance(unet, x_grad, t, clip_denoised=clip_denoised, model_kwargs=kw)
                out = _condition(diffusion, method, cond_fn, out, x_grad, t, kw)
        else:
            with torch.no_grad():
                out = diffusion.p_mean_variance(unet, x, t, clip_denoised=clip_denoised, model_kwargs=kw)

            def two_forward_cond(x_, t_, _out, **_kw):
                with torch.enable_grad():
                    x_grad = x_.detach().requires_grad_()
                    grad_out = diffusion.p_mean_variance(unet, x_grad, t_, clip_denoised=clip_denoised,
                                                         model_kwargs=kw)
                    return cond_fn(x_grad, t_, grad_out)

            out = _condition(diffusion, method, two_forward_cond, out, x, t, kw)
        out = {k: v.detach() for k, v in out.items()}
        noise = _randn(shape, generators, device)
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        if method == "ddpm":
            x = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        else:
            x = _ddim_step(diffusion, x, t, out["pred_xstart"], eta, noise, nonzero)
        if callback is not None:
            callback(Step(i, len(steps), x, out["pred_xstart"]))
    return x


def _condition(diffusion, method, cond_fn, out, x, t, kw):
    """Apply cond_fn the way guided_diffusion's *_with_grad samplers do for this method."""
    if method == "ddpm":
        out = dict(out)
        out["mean"] = diffusion.condition_mean_with_grad(cond_fn, out, x, t, model_kwargs=kw)
        return out
    return diffusion.condition_score_with_grad(cond_fn, out, x, t, model_kwargs=kw)


def _ddim_step(diffusion, x, t, pred_xstart, eta, noise, nonzero):
    """DDIM update (Song et al. 2020, eq. 12) from an x0 prediction."""
    from guided_diffusion.gaussian_diffusion import _extract_into_tensor

    eps = diffusion._predict_eps_from_xstart(x, t, pred_xstart)
    a = _extract_into_tensor(diffusion.alphas_cumprod, t, x.shape)
    a_prev = _extract_into_tensor(diffusion.alphas_cumprod_prev, t, x.shape)
    sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
    mean = pred_xstart * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
    return mean + nonzero * sigma * noise
