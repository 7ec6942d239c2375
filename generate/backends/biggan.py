"""BigGAN+CLIP, big-sleep's method: optimise BigGAN-deep's noise and class vectors against CLIP.

The generator is pytorch-pretrained-biggan's BigGAN-deep (Brock, Donahue & Simonyan 2019,
"Large Scale GAN Training for High Fidelity Natural Image Synthesis"), built from a
``BigGANConfig`` of any size. Per seed a noise vector (truncated normal, scaled by
``truncation``) and class logits (normal around -3.9, as big-sleep starts them) are the
parameters; the class vector is their sigmoid. Beside the CLIP loss, big-sleep's regularisers
keep the noise standard-normal-like (its mean, spread, skew and kurtosis) and all but one class
near zero, at a hundredth of the CLIP loss's weight, as big-sleep weighs them against its
cosine similarity scaled by 100. big-sleep feeds one noise vector per layer; this package's
BigGAN takes one for all, so one noise vector is optimised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from pydantic import ConfigDict, with_config

from gallery.errors import BadRequest
from gallery.recipe import Recipe

from .. import presets as P
from .optimise import (ClipObjective, Number, OptimGenerator, OptimImage, OptimSettings, OptimStep, above,
                       cached_model, clip_targets, complete_recipe, image_loader, load_checked, optimise,
                       seed_generators, weights_path)

PENALTY_WEIGHT = 0.01


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class BigganSettings(OptimSettings):
    """BigGAN+CLIP's settings: the shared ones and the truncation of the noise."""

    truncation: Annotated[Number, above(0, 1)] = 1.0


def build_biggan(config: dict) -> torch.nn.Module:
    """pytorch-pretrained-biggan's BigGAN of a preset's config, freshly initialised (no file, no network)."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = dict(config)
    config["layers"] = [tuple(layer) for layer in config["layers"]]
    model = BigGAN(BigGANConfig(**config))
    # The package leaves its last batch norm's affine parameters as uninitialised memory
    # (checkpoints overwrite them); a fresh model starts from the identity instead.
    bn = model.generator.bn
    if bn.weight.device.type != "meta":
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.bias.zero_()
    return model


def load_biggan(preset: P.BackendPreset, path, device: torch.device) -> torch.nn.Module:
    """Build the preset's BigGAN and load the checked weights at path, frozen, in eval mode."""
    return load_checked(build_biggan(preset.config), path).to(device)


def latent_penalty(z: torch.Tensor) -> torch.Tensor:
    """big-sleep's pull of a noise vector towards standard-normal statistics."""
    mean, std = z.mean(), z.std()
    scores = (z - mean) / std
    skew, kurtosis = scores.pow(3).mean(), scores.pow(4).mean() - 3
    return (1 - std).abs() + mean.abs() + 4 * z.pow(2).mean().clamp(min=1.0) + skew.abs() + kurtosis.abs()


def class_penalty(classes: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """big-sleep's push of all but the ``keep`` strongest classes towards zero."""
    k = classes.shape[-1] - keep
    return (50 * torch.topk(classes, k, largest=False, dim=-1).values).pow(2).mean()


class BigganImage(OptimImage):
    """One seed's noise and class logits, rendered by the (shared, frozen) BigGAN."""

    def __init__(self, model: torch.nn.Module, seed: int, truncation: float, device: torch.device):
        super().__init__()
        self.model = model
        self.truncation = float(truncation)
        cfg = model.config
        gen = seed_generators(seed)[0]
        z = torch.nn.init.trunc_normal_(torch.empty(1, cfg.z_dim), a=-2.0, b=2.0, generator=gen) * truncation
        cls = torch.randn(1, cfg.num_classes, generator=gen) * 0.3 - 3.9
        self.z = torch.nn.Parameter(z.to(device))
        self.cls = torch.nn.Parameter(cls.to(device))

    def parameters(self, recurse: bool = True):
        """Only the noise and the class logits are optimised."""
        return iter([self.z, self.cls])

    def forward(self) -> torch.Tensor:
        """The generated image, [1, 3, H, W] in [-1, 1]."""
        return self.model(self.z, torch.sigmoid(self.cls), self.truncation)

    def penalty(self) -> torch.Tensor:
        """big-sleep's regularisers on the noise and the classes."""
        return PENALTY_WEIGHT * (latent_penalty(self.z) + class_penalty(torch.sigmoid(self.cls)))


class BigganGenerator(OptimGenerator):
    """A recipe's BigGAN, CLIP and targets, ready to optimise one noise and class vector per seed."""

    backend = "biggan"
    settings_class = BigganSettings

    def __init__(self, recipe: Recipe, models, device: torch.device, store=None,
                 settings: BigganSettings | dict | None = None, load_image=None):
        self.preset = P.backend_preset(recipe.model, "biggan")
        self.recipe = recipe = complete_recipe(recipe, self.preset.clip)
        self.settings = s = BigganSettings.resolve(self.preset.defaults, settings)
        if recipe.init_image:
            raise BadRequest("biggan starts from its own noise and classes; it takes no init image")
        self.device = device
        path = weights_path(models, self.preset, recipe.checkpoint)
        self.model = cached_model(models, ("biggan", self.preset.name, str(path), str(device)),
                                  lambda: load_biggan(self.preset, path, device))
        self.size = int(self.preset.config["output_dim"])
        self.clip = models.clip(recipe.clip_model, device)
        load = image_loader(store, models.instance, load_image)
        target, weights = clip_targets(self.clip, recipe, load, self.size)
        self.objective = ClipObjective(self.clip, target, weights, s)

    def run(self, seeds: list[int], callback: Callable[[OptimStep], None] | None = None) -> torch.Tensor:
        """Optimise one noise and class vector per seed; returns [N, 3, H, W] in [-1, 1]."""
        images = [BigganImage(self.model, seed, self.settings.truncation, self.device) for seed in seeds]
        return optimise(images, self.objective, seeds, self.settings, callback)
