"""VQGAN-CLIP (Crowson 2021, as nerdyrodent packaged it): optimise a VQGAN latent grid against CLIP.

The VQGAN is taming-transformers' autoencoder (Esser, Rombach & Ommer 2021, "Taming
Transformers for High-Resolution Image Synthesis"), built from its ``taming.modules`` Encoder,
Decoder and VectorQuantizer2 with the key names of its ``VQModel``, without that class's
Lightning wrapper or its training losses. Per seed a latent grid ``z`` is drawn as random
codebook entries (or encoded from an init image and mixed with them by ``noise``); each
iteration snaps it to its nearest codebook entries with a straight-through gradient, decodes
it, and Adam moves ``z`` down the CLIP loss; ``z`` is kept inside the codebook's range.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, with_config

from gallery.errors import BadRequest
from gallery.recipe import Recipe

from .. import presets as P
from ..diffusion import to_tensor
from .optimise import (ClipObjective, Number, OptimGenerator, OptimImage, OptimSettings, OptimStep, StrictInt,
                       cached_model, clamp_with_grad, clip_targets, complete_recipe, image_loader, load_checked, number,
                       optimise, replace_grad, seed_generators, weights_path, whole)


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class VqganSettings(OptimSettings):
    """VQGAN-CLIP's settings: the shared ones, the image size and the init image's noise strength."""

    size: Annotated[StrictInt, whole(16, 2048)] = 256
    noise: Annotated[Number, number(0, 1)] = 0.0


class VQAutoencoder(torch.nn.Module):
    """taming-transformers' VQModel without Lightning: encoder, quantiser, decoder, same key names."""

    def __init__(self, embed_dim: int, n_embed: int, ddconfig: dict, **_ignored):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer2

        with contextlib.redirect_stdout(io.StringIO()):  # the decoder prints its latent shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to latents before quantisation."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latents to images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor):
        """Reconstruction and codebook loss (training)."""
        z_q, qloss, _ = self.quantize(self.encode(x))
        return self.decode(z_q), qloss


def build_vqgan(config: dict) -> VQAutoencoder:
    """The VQGAN of a preset's config, freshly initialised (no file, no network)."""
    return VQAutoencoder(**config)


def load_vqgan(preset: P.BackendPreset, path, device: torch.device) -> VQAutoencoder:
    """Build the preset's VQGAN and load the checked weights at path (a taming checkpoint's loss nets dropped)."""
    return load_checked(build_vqgan(preset.config), path, drop_prefixes=("loss.",)).to(device)


def vector_quantize(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[..., D] latents snapped to their nearest codebook rows, with a straight-through gradient."""
    d = z.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.T
    z_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    return replace_grad(z_q, z)


class VqganImage(OptimImage):
    """One seed's latent grid, decoded through the VQGAN."""

    def __init__(self, model: VQAutoencoder, size: int, seed: int, init: torch.Tensor | None, noise: float,
                 device: torch.device):
        super().__init__()
        self.model = model  # shared and frozen; not one of this image's parameters
        codebook = model.quantize.embedding.weight
        side = size // model.factor
        gen = seed_generators(seed)[0]
        tokens = torch.randint(codebook.shape[0], (side * side,), generator=gen).to(codebook.device)
        z = codebook[tokens].view(1, side, side, -1).permute(0, 3, 1, 2)
        if init is not None:
            with torch.no_grad():
                encoded = model.encode(init.to(device))
            z = torch.lerp(encoded, z, noise)
        self.z = torch.nn.Parameter(z.detach().clone())
        self.register_buffer("z_min", codebook.min(0).values.view(1, -1, 1, 1).detach().clone())
        self.register_buffer("z_max", codebook.max(0).values.view(1, -1, 1, 1).detach().clone())

    def parameters(self, recurse: bool = True):
        """Only the latent grid is optimised."""
        return iter([self.z])

    def forward(self) -> torch.Tensor:
        """The decoded image, [1, 3, size, size] in [-1, 1]."""
        codebook = self.model.quantize.embedding.weight
        z_q = vector_quantize(self.z.movedim(1, 3), codebook).movedim(3, 1)
        return clamp_with_grad(self.model.decode(z_q), -1, 1)

    @torch.no_grad()
    def project(self) -> None:
        """Keep z inside the codebook's per-channel range, as Crowson's notebook does."""
        self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))


class VqganGenerator(OptimGenerator):
    """A recipe's VQGAN, CLIP and targets, ready to optimise one latent grid per seed."""

    backend = "vqgan"
    settings_class = VqganSettings

    def __init__(self, recipe: Recipe, models, device: torch.device, store=None,
                 settings: VqganSettings | dict | None = None, load_image=None):
        self.preset = P.backend_preset(recipe.model, "vqgan")
        self.recipe = recipe = complete_recipe(recipe, self.preset.clip)
        self.settings = s = VqganSettings.resolve(self.preset.defaults, settings)
        factor = 2 ** (len(self.preset.config["ddconfig"]["ch_mult"]) - 1)
        if s.size % factor:
            raise BadRequest(f"size must be a multiple of {factor} for {self.preset.name}, not {s.size}")
        if s.noise and not recipe.init_image:
            raise BadRequest("noise sets how much of an init image is replaced: it needs an init image")
        self.device = device
        path = weights_path(models, self.preset, recipe.checkpoint)
        self.model = cached_model(models, ("vqgan", self.preset.name, str(path), str(device)),
                                  lambda: load_vqgan(self.preset, path, device))
        self.clip = models.clip(recipe.clip_model, device)
        load = image_loader(store, models.instance, load_image)
        self.init = None
        if recipe.init_image:
            self.init = to_tensor(load(recipe.init_image), s.size)
        target, weights = clip_targets(self.clip, recipe, load, s.size)
        self.objective = ClipObjective(self.clip, target, weights, s)

    def run(self, seeds: list[int], callback: Callable[[OptimStep], None] | None = None) -> torch.Tensor:
        """Optimise one latent grid per seed; returns [N, 3, size, size] in [-1, 1]."""
        s = self.settings
        images = [VqganImage(self.model, s.size, seed, self.init, s.noise, self.device) for seed in seeds]
        return optimise(images, self.objective, seeds, s, callback)
