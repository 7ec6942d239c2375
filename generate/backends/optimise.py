"""What the optimisation backends share: settings, CLIP targets, the cutout loss and the Adam loop.

The method of the 2021 CLIP notebooks (Crowson's VQGAN-CLIP, deep-daze, big-sleep): render the
current image from its parameters, take ``cutn`` random cutouts (sizes ``rand ** cut_pow``, as
guided diffusion's guidance draws them), augment them (kornia: flips, affine and perspective
warps, colour jitter, a little noise), embed them with CLIP and descend the weighted squared
spherical distance to the prompt's targets with Adam.

Every seed owns its parameters, its optimiser and its random streams (initialisation, cutouts,
augmentations), and its forward and backward passes run alone: an image depends only on its own
seed, never on the other seeds of its batch, and a CPU run reproduces it bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated, Callable

import torch
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, with_config

from gallery.errors import BadRequest, RecipeError, WeightsCorrupt
from gallery.recipe import Recipe
from gallery.validate import parse

from ..diffusion import load_image_ref, to_tensor
from ..guidance import make_cutouts, spherical_dist_loss
from ..prompts import parse_image_prompt, parse_prompt
from ..sampler import Step

Number = StrictFloat | StrictInt


def whole(lo: int, hi: int):
    """A pydantic bound for a whole-number setting, worded for one-line errors."""
    return Field(ge=lo, le=hi, description=f"a whole number from {lo} to {hi}")


def number(lo: float, hi: float):
    """A pydantic bound for a real setting in [lo, hi]."""
    return Field(ge=lo, le=hi, allow_inf_nan=False, description=f"a number from {lo:g} to {hi:g}")


def above(lo: float, hi: float):
    """A pydantic bound for a real setting in (lo, hi]."""
    return Field(gt=lo, le=hi, allow_inf_nan=False, description=f"a number above {lo:g} and at most {hi:g}")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class OptimSettings:
    """The settings every optimisation backend has (subclasses add their own)."""

    iterations: Annotated[StrictInt, whole(1, 100_000)] = 200
    lr: Annotated[Number, above(0, 10)] = 0.1
    cutn: Annotated[StrictInt, whole(1, 256)] = 16
    cut_pow: Annotated[Number, above(0, 10)] = 1.0
    augment: Annotated[StrictBool, Field(description="true or false")] = True
    frame_every: Annotated[StrictInt, whole(1, 100_000)] = 10

    def validate(self):
        """Return self, or raise RecipeError naming the first bad setting."""
        return parse(type(self), self.to_dict(), RecipeError)

    @classmethod
    def from_dict(cls, d: dict):
        """Build and validate from a dict; an unknown key is a one-line RecipeError."""
        if not isinstance(d, dict):
            raise RecipeError(f"{cls.__name__} needs a dict of settings")
        return parse(cls, d, RecipeError)

    @classmethod
    def resolve(cls, defaults: dict, settings=None):
        """The preset's defaults overridden by ``settings`` (a dict or an instance), validated."""
        if settings is None:
            return cls.from_dict(dict(defaults))
        if isinstance(settings, cls):
            return settings.validate()
        if isinstance(settings, dict):
            return cls.from_dict({**defaults, **settings})
        raise RecipeError(f"settings must be a dict or {cls.__name__}, not {type(settings).__name__}")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    def replace(self, **kw):
        """A copy with some settings changed, validated."""
        return replace(self, **kw).validate()

    @classmethod
    def names(cls) -> list[str]:
        """The settings' names, in order."""
        return [f.name for f in fields(cls)]


@dataclass
class OptimStep(Step):
    """What the callback sees after each iteration: the images before it, and each seed's loss."""

    losses: list = field(default_factory=list)


class _ClampWithGrad(torch.autograd.Function):
    # Crowson's clamp: clamps forward, but lets gradients through that push a value back inside.
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """x clamped to [lo, hi], with gradients that would move it back inside kept."""
    return _ClampWithGrad.apply(x, lo, hi)


class _ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad):
        return None, grad.sum_to_size(ctx.shape)


def replace_grad(x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
    """x_forward's value with x_backward's gradient (the straight-through estimator)."""
    return _ReplaceGrad.apply(x_forward, x_backward)


def seed_generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """A seed's three independent CPU streams: initialisation, cutouts, augmentations."""
    seed = int(seed)
    return (torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed ^ (1 << 40)),
            torch.Generator().manual_seed(seed ^ (1 << 41)))


def image_loader(store, instance, load_image=None) -> Callable:
    """How a backend reads an init or image-prompt reference: ``load_image`` where there is no
    store (a remote actor), else the gallery's or the file's."""
    return load_image or (lambda ref: load_image_ref(ref, store, instance))


def clip_targets(clip, recipe: Recipe, load: Callable, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's weighted CLIP targets: its text parts, then its image prompts (read by ``load``, at ``size``)."""
    parts = parse_prompt(recipe.prompt)
    embeds = [clip.encode_text([p.text for p in parts])]
    weights = [p.weight for p in parts]
    for spec in recipe.image_prompts:
        ref = parse_image_prompt(spec)
        im = to_tensor(load(ref.ref), size)
        embeds.append(clip.embed_pixels(im.add(1).div(2)))
        weights.append(ref.weight)
    return torch.cat(embeds).float(), torch.tensor(weights, dtype=torch.float32)


def augmentations(noise: float = 0.1) -> Callable[[torch.Tensor], torch.Tensor]:
    """The notebooks' cutout augmentations (kornia), plus Gaussian noise of up to ``noise``."""
    import kornia.augmentation as K

    augs = torch.nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), p=0.7, padding_mode="border"),
        K.RandomPerspective(0.2, p=0.7),
        K.ColorJitter(hue=0.05, saturation=0.05, p=0.7),
    )

    def apply(cuts: torch.Tensor) -> torch.Tensor:
        cuts = augs(cuts)
        facs = cuts.new_empty([cuts.shape[0], 1, 1, 1]).uniform_(0, noise)
        return cuts + facs * torch.randn_like(cuts)

    return apply


class ClipObjective:
    """The CLIP loss of one image: mean over augmented cutouts of the weighted spherical distance."""

    def __init__(self, clip, target: torch.Tensor, weights: torch.Tensor, settings: OptimSettings):
        self.clip = clip
        self.target = target.to(clip.device)
        # The notebooks normalise by the absolute sum so negative parts keep their sign.
        self.weights = (weights / weights.sum().abs()).to(clip.device)
        self.cutn, self.cut_pow = settings.cutn, settings.cut_pow
        self.augment = augmentations() if settings.augment else None

    def __call__(self, image: torch.Tensor, cut_gen: torch.Generator, aug_gen: torch.Generator) -> torch.Tensor:
        """The loss of one [1, 3, H, W] image in [-1, 1], differentiable with respect to it."""
        pixels = image[0].add(1).div(2)
        cuts = make_cutouts(pixels, self.clip.image_size, self.cutn, self.cut_pow, cut_gen)
        if self.augment is not None:
            # kornia draws from the global generator: seed it from this image's own stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=aug_gen)))
                cuts = self.augment(cuts)
        embeds = self.clip.encode_image(cuts.to(self.clip.device)).float()
        dists = spherical_dist_loss(embeds.unsqueeze(1), self.target.unsqueeze(0))
        return (dists * self.weights).sum(1).mean()


class OptimImage(torch.nn.Module):
    """What a backend optimises for one seed: parameters that render one image."""

    def forward(self) -> torch.Tensor:
        """The current image, [1, 3, H, W] in [-1, 1], differentiable."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | float:
        """A regulariser added to the CLIP loss (none by default)."""
        return 0.0

    @torch.no_grad()
    def project(self) -> None:
        """Bring the parameters back into their valid range after a step (nothing by default)."""


class OptimGenerator:
    """What every optimising backend's generator shares: its recipe as recorded, and its frames."""

    recipe: Recipe
    settings: OptimSettings

    @property
    def image_recipe_base(self) -> Recipe:
        """The recipe as it is recorded with each image (its CLIP resolved)."""
        return self.recipe

    @property
    def frame_every(self) -> int:
        """Keep an animation frame every this many iterations."""
        return self.settings.frame_every


def optimise(images: list[OptimImage], objective: ClipObjective, seeds: list[int], settings: OptimSettings,
             callback: Callable[[OptimStep], None] | None = None) -> torch.Tensor:
    """Fit each seed's image to the objective with Adam; returns [N, 3, H, W] in [-1, 1].

    ``images[k]`` belongs to ``seeds[k]``; the callback sees every iteration (the runner keeps a
    frame every ``frame_every``), with the images as they were before it and each seed's loss.
    """
    streams = [seed_generators(s)[1:] for s in seeds]
    opts = [torch.optim.Adam(im.parameters(), lr=settings.lr) for im in images]
    for i in range(settings.iterations):
        shown, losses = [], []
        for im, opt, (cut_gen, aug_gen) in zip(images, opts, streams):
            out = im()
            loss = objective(out, cut_gen, aug_gen) + im.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            im.project()
            shown.append(out.detach())
            value = float(loss.detach())
            if not math.isfinite(value):
                raise BadRequest(f"the optimisation diverged at iteration {i + 1}; lower the learning rate")
            losses.append(value)
        if callback is not None:
            x = torch.cat(shown)
            callback(OptimStep(i, settings.iterations, x, x, losses))
    with torch.no_grad():
        return torch.cat([im() for im in images]).clamp(-1, 1)


def cached_model(models, key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A backend's model from the process's model cache (beside its UNets and CLIPs), built on first use."""
    return models.other(key, build)


def complete_recipe(recipe: Recipe, clip: str) -> Recipe:
    """The recipe with the preset's CLIP where it names none, validated."""
    return recipe.filled({"clip_model": clip}).validate()


def weights_path(models, preset, path: str | None = None):
    """Where a backend preset's weights are: located, or fetched first if the cache may fetch."""
    from .. import weights as W

    if models.fetch:
        return W.fetch_backend(preset, models.instance, path, progress=models.progress)
    return W.locate_backend(preset, models.instance, path)


class _Opaque:
    """Stands in for an object of a training checkpoint that loading weights has no use for."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _read_training_checkpoint(path) -> dict:
    """The state dict of a training checkpoint whose other entries pickle foreign objects.

    A Lightning checkpoint (taming-transformers' last.ckpt) stores callbacks and hyperparameters
    as objects of classes this process need not have. They are read as inert placeholders under
    torch's weights-only unpickler, so nothing in the file is ever executed; a file that is not
    a checkpoint still fails as WeightsCorrupt.
    """
    from ..models import _read_state_dict

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = []
    if not names:
        return _read_state_dict(path)
    stubs = [(type(name.rsplit(".", 1)[-1], (_Opaque,), {}), name) for name in names]
    with torch.serialization.safe_globals(stubs):
        return _read_state_dict(path)


def load_checked(model: torch.nn.Module, path, drop_prefixes: tuple[str, ...] = ()) -> torch.nn.Module:
    """Load a checkpoint into model after checking its keys and shapes; frozen, in eval mode.

    Keys under ``drop_prefixes`` (a training checkpoint's loss networks) are left out; anything
    else missing, unexpected, mis-shaped or unreadable is a one-line WeightsCorrupt.
    """
    from ..models import _read_state_dict, check_state_dict

    try:
        sd = _read_state_dict(path)
    except WeightsCorrupt:
        sd = _read_training_checkpoint(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(drop_prefixes)}
    check_state_dict(model.state_dict(), sd, path)
    model.load_state_dict(sd)
    return model.requires_grad_(False).eval()
