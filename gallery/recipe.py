"""The recipe of an image: every setting that made it, to and from JSON, store rows and PNG text chunks.

One ``Recipe`` object travels through every layer (CLI, jobs, sampler set-up, PNG) instead of
the same keyword arguments copied by hand. A PNG written by clip-curator carries its recipe in
an iTXt chunk named ``clip-curator:recipe`` so the file alone can reproduce it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from PIL import Image, PngImagePlugin

PNG_KEY = "clip-curator:recipe"
RECIPE_VERSION = 1

LIMITS = {
    "steps": (1, 4000),
    "skip_timesteps": (0, 3999),
    "cutn": (1, 256),
    "batch_size": (1, 64),
}


class RecipeError(ValueError):
    """A recipe with a missing, malformed or out-of-range setting."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines one generated image, given its seed."""

    prompt: str
    model: str = "uncond-256"
    clip_model: str | None = None
    checkpoint: str | None = None
    image_prompts: tuple = ()
    init_image: str | None = None
    skip_timesteps: int = 0
    seed: int = 0
    steps: int = 100
    method: str = "ddpm"
    eta: float = 0.0
    clip_guidance_scale: float = 1000.0
    tv_scale: float = 150.0
    range_scale: float = 50.0
    cutn: int = 16
    cut_pow: float = 0.5
    clip_denoised: bool = False
    precision: str = "auto"
    batch_size: int = 1
    version: int = field(default=RECIPE_VERSION)

    def validate(self) -> "Recipe":
        """Return self, or raise RecipeError naming the first bad setting."""
        from generate.errors import BadRequest
        from generate.prompts import parse_image_prompt, parse_prompt

        try:
            parse_prompt(self.prompt)
            for spec in self.image_prompts:
                parse_image_prompt(spec)
        except BadRequest as e:
            raise RecipeError(str(e)) from None
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise RecipeError(f"{name} must be a whole number from {lo} to {hi}, not {v!r}")
        if self.skip_timesteps >= self.steps:
            raise RecipeError(f"skip_timesteps ({self.skip_timesteps}) must be less than steps ({self.steps})")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise RecipeError(f"seed must be a whole number from 0 to 2**63-1, not {self.seed!r}")
        for name in ("clip_guidance_scale", "tv_scale", "range_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1e6:
                raise RecipeError(f"{name} must be a number from 0 to 1000000, not {v!r}")
        if not isinstance(self.cut_pow, (int, float)) or not 0 < self.cut_pow <= 10:
            raise RecipeError(f"cut_pow must be a number above 0 and at most 10, not {self.cut_pow!r}")
        if not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
            raise RecipeError(f"eta must be a number from 0 to 1, not {self.eta!r}")
        if self.method not in ("ddpm", "ddim"):
            raise RecipeError(f"method must be ddpm or ddim, not {self.method!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise RecipeError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.skip_timesteps and not self.init_image:
            raise RecipeError("skip_timesteps needs an init image")
        return self

    def with_seed(self, seed: int) -> "Recipe":
        """The same recipe for another seed."""
        return replace(self, seed=int(seed))

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        d = asdict(self)
        d["image_prompts"] = list(self.image_prompts)
        return d

    def to_json(self) -> str:
        """Compact, key-sorted JSON (stable, so equal recipes give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build from a dict, ignoring keys a newer version may have added."""
        if not isinstance(d, dict) or "prompt" not in d:
            raise RecipeError("not a clip-curator recipe (no prompt)")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "image_prompts" in kw:
            kw["image_prompts"] = tuple(kw["image_prompts"] or ())
        try:
            return cls(**kw)
        except TypeError as e:
            raise RecipeError(f"malformed recipe: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parse JSON text written by ``to_json``."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise RecipeError(f"malformed recipe JSON: {e}") from None


def png_info(recipe: "Recipe | dict", extra: dict | None = None) -> PngImagePlugin.PngInfo:
    """PNG text chunks carrying the recipe (and any extra facts such as the models' ids)."""
    info = PngImagePlugin.PngInfo()
    payload = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    if extra:
        payload = {**payload, "extra": extra}
    info.add_itxt(PNG_KEY, json.dumps(payload, sort_keys=True))
    info.add_text("Software", "clip-curator")
    info.add_text("Description", str(payload.get("prompt", "")))
    return info


def read_png_recipe(path: str | Path) -> tuple[Recipe, dict]:
    """The recipe and extra facts stored in a PNG's text chunk; RecipeError if it has none."""
    try:
        with Image.open(path) as im:
            im.load()
            text = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    except (OSError, SyntaxError, ValueError) as e:
        raise RecipeError(f"cannot read {path}: {e}") from None
    if not text:
        raise RecipeError(f"{path} carries no clip-curator recipe")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipeError(f"malformed recipe in {path}: {e}") from None
    extra = payload.pop("extra", {}) if isinstance(payload, dict) else {}
    return Recipe.from_dict(payload), extra
