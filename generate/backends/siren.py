"""SIREN+CLIP, deep-daze's method: a sinusoidal network per seed, fitted to CLIP over cutouts.

A SIREN (Sitzmann et al. 2020, "Implicit Neural Representations with Periodic Activation
Functions"; siren-pytorch's ``SirenNet``) maps each pixel's coordinates in [-1, 1]^2 to its
colour; the network's weights are the image. It needs no weights but CLIP's, so it runs on the
real CLIP presets and on the tiny CLIP alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from pydantic import ConfigDict, with_config

from gallery.errors import BadRequest
from gallery.recipe import Recipe

from .. import presets as P
from .optimise import (ClipObjective, OptimGenerator, OptimImage, OptimSettings, OptimStep, StrictInt,
                       clamp_with_grad, clip_targets, complete_recipe, image_loader, optimise, seed_generators, whole)


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class SirenSettings(OptimSettings):
    """SIREN+CLIP's settings: the shared ones, the image size and the network's shape."""

    size: Annotated[StrictInt, whole(8, 2048)] = 32
    hidden: Annotated[StrictInt, whole(4, 1024)] = 64
    layers: Annotated[StrictInt, whole(1, 64)] = 4


def build_siren(settings: SirenSettings, generator: torch.Generator):
    """siren-pytorch's SirenWrapper over a SirenNet, initialised from ``generator`` alone."""
    from siren_pytorch import SirenNet, SirenWrapper

    # siren-pytorch initialises from the global generator: seed it from this image's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=generator)))
        net = SirenNet(dim_in=2, dim_hidden=settings.hidden, dim_out=3, num_layers=settings.layers,
                       w0=1.0, w0_initial=30.0)
        return SirenWrapper(net, image_width=settings.size, image_height=settings.size)


class SirenImage(OptimImage):
    """One seed's SIREN; its output, squashed as deep-daze does, is the image."""

    def __init__(self, settings: SirenSettings, seed: int, device: torch.device):
        super().__init__()
        self.siren = build_siren(settings, seed_generators(seed)[0]).to(device)

    def forward(self) -> torch.Tensor:
        """The image, [1, 3, size, size] in [-1, 1]."""
        return clamp_with_grad(self.siren(), -1, 1)


class SirenGenerator(OptimGenerator):
    """A recipe's CLIP targets, ready to fit one SIREN per seed."""

    backend = "siren"
    settings_class = SirenSettings

    def __init__(self, recipe: Recipe, models, device: torch.device, store=None,
                 settings: SirenSettings | dict | None = None, load_image=None):
        self.preset = P.backend_preset(recipe.model, "siren")
        self.recipe = recipe = complete_recipe(recipe, self.preset.clip)
        self.settings = SirenSettings.resolve(self.preset.defaults, settings)
        if recipe.init_image:
            raise BadRequest("siren starts from its own random network; it takes no init image")
        self.device = device
        self.clip = models.clip(recipe.clip_model, device)
        load = image_loader(store, models.instance, load_image)
        target, weights = clip_targets(self.clip, recipe, load, self.settings.size)
        self.objective = ClipObjective(self.clip, target, weights, self.settings)

    def run(self, seeds: list[int], callback: Callable[[OptimStep], None] | None = None) -> torch.Tensor:
        """Fit one SIREN per seed; returns [N, 3, size, size] in [-1, 1]."""
        images = [SirenImage(self.settings, s, self.device) for s in seeds]
        return optimise(images, self.objective, seeds, self.settings, callback)
