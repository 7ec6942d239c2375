"""The recipe of an image: every setting that made it, to and from JSON, store rows and PNG text chunks.

One ``Recipe`` travels through every layer (CLI, site, queue, sampler set-up, PNG) instead of the
same keyword arguments copied by hand. Its fields are its schema: types and ranges are checked by
pydantic at every boundary a recipe crosses (a CLI command, an API body, a PNG chunk, a job row),
with a one-line ``RecipeError`` naming the first bad field. Settings whose sensible value depends
on the model (steps, guidance scales, cutouts, clamping, the CLIP) may be left ``None``: the
preset fills them in before a job is recorded, so a stored recipe is always complete.

A PNG written by clip-curator carries its recipe in an iTXt chunk named ``clip-curator:recipe``,
so the file alone can reproduce it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Literal

from PIL import PngImagePlugin
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, with_config

from .errors import RecipeError
from .imaging import open_image
from .validate import parse

PNG_KEY = "clip-curator:recipe"
RECIPE_VERSION = 3  # 2: variations, modifiers, guide images; 3: the backend and its own settings
SEED_MAX = 2 ** 63 - 1  # seeds are SQLite integers; image i of a job is seeded seed + i
# PNG text chunks may not hold NUL, and no other control character belongs in a prompt either.
_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def _whole(lo: int, hi: int, what: str = "a whole number"):
    return Field(ge=lo, le=hi, description=f"{what} from {lo} to {hi}")


def _number(lo: float, hi: float):
    return Field(ge=lo, le=hi, allow_inf_nan=False, description=f"a number from {lo:g} to {hi:g}")


Text = Annotated[StrictStr, Field(max_length=2000, pattern=_PRINTABLE,
                                  description="text of at most 2000 characters, without control characters")]
Number = StrictFloat | StrictInt


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class Recipe:
    """Everything that determines one generated image, given its seed (``None``: the preset's default)."""

    prompt: Text
    model: Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=_PRINTABLE,
                                      description="a model preset name")] = "uncond-256"
    clip_model: Annotated[StrictStr | None, Field(min_length=1, max_length=500, pattern=_PRINTABLE,
                                                  description="a CLIP preset or open_clip MODEL/TAG")] = None
    checkpoint: Annotated[StrictStr | None, Field(max_length=4096, pattern=_PRINTABLE,
                                                  description="a file path")] = None
    image_prompts: Annotated[tuple[Annotated[StrictStr, Field(max_length=4096, pattern=_PRINTABLE)], ...],
                             Field(max_length=64, description="a list of image prompts (PATH[:W] or ID[:W])")] = ()
    init_image: Annotated[StrictStr | None, Field(max_length=4096, pattern=_PRINTABLE,
                                                  description="a file path or gallery id")] = None
    skip_timesteps: Annotated[StrictInt, _whole(0, 3999)] = 0
    seed: Annotated[StrictInt, _whole(0, SEED_MAX)] = 0
    steps: Annotated[StrictInt | None, _whole(1, 4000)] = None
    method: Annotated[Literal["ddpm", "ddim"], Field(description="ddpm or ddim")] = "ddpm"
    eta: Annotated[Number, _number(0, 1)] = 0.0
    clip_guidance_scale: Annotated[Number | None, _number(0, 1e6)] = None
    tv_scale: Annotated[Number | None, _number(0, 1e6)] = None
    range_scale: Annotated[Number | None, _number(0, 1e6)] = None
    cutn: Annotated[StrictInt | None, _whole(1, 256)] = None
    cut_pow: Annotated[Number, Field(gt=0, le=10, allow_inf_nan=False,
                                     description="a number above 0 and at most 10")] = 0.5
    clip_denoised: Annotated[StrictBool | None, Field(description="true or false")] = None
    precision: Annotated[Literal["auto", "fp32", "bf16", "fp16"],
                         Field(description="auto, fp32, bf16 or fp16")] = "auto"
    batch_size: Annotated[StrictInt, _whole(1, 64)] = 1
    # Prompt variations: ``prompt`` of a job is a template ("{castle|cathedral} at dusk") expanded
    # per image; an image's recipe holds its own expansion, and the template in ``template``.
    variations: Annotated[Literal["none", "combinatorial", "random"],
                          Field(description="none, combinatorial or random")] = "none"
    template: Annotated[Text | None, Field(description="the template the prompt was expanded from")] = None
    # Style modifiers appended to the prompt, by name (the prompt already holds their text).
    modifiers: Annotated[tuple[Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=_PRINTABLE)], ...],
                         Field(max_length=32, description="a list of modifier names")] = ()
    # Guide images CLIP picks from the gallery, per image: how many, from where, how strongly, and
    # (for an image's recipe) the ones picked, as "ID:SHA256", which also appear as image prompts.
    guides: Annotated[StrictInt, _whole(0, 16)] = 0
    guide_pool: Annotated[StrictStr, Field(max_length=120, pattern=r"^(starred|all|rating:[1-5]|collection:[^\x00-\x1f\x7f/]+)$",
                                           description="starred, all, rating:N or collection:NAME")] = "starred"
    guide_weight: Annotated[Number, _number(0, 10)] = 1.0
    guide_init: Annotated[Number, _number(0, 0.95)] = 0.0
    guide_images: Annotated[tuple[Annotated[StrictStr, Field(pattern=r"^[0-9]+:[0-9a-f]{64}$")], ...],
                            Field(max_length=16, description='a list of "ID:SHA256" guide images')] = ()
    # Which generator made the image (the model preset's; a recipe before version 3 was guided
    # diffusion), and that backend's own settings (empty for guided diffusion, whose settings are
    # the fields above), each checked by the backend.
    backend: Annotated[Literal["diffusion", "siren", "vqgan", "biggan"] | None,
                       Field(description="diffusion, siren, vqgan or biggan")] = None
    settings: Annotated[dict[Annotated[StrictStr, Field(max_length=40)], StrictBool | StrictInt | StrictFloat | StrictStr],
                        Field(max_length=32, description="a dict of backend settings")] = field(default_factory=dict)
    version: Annotated[StrictInt, _whole(1, RECIPE_VERSION, "a recipe version")] = field(default=RECIPE_VERSION)

    def validate(self) -> "Recipe":
        """Return self, or raise RecipeError naming the first bad setting."""
        return parse(Recipe, self._fields(), RecipeError)._consistent()

    def _consistent(self) -> "Recipe":
        # What one field's type cannot say: settings that constrain each other.
        if self.steps is not None and self.skip_timesteps >= self.steps:
            raise RecipeError(f"skip_timesteps ({self.skip_timesteps}) must be less than steps ({self.steps})")
        if self.skip_timesteps and not self.init_image:
            raise RecipeError("skip_timesteps needs an init image")
        return self

    def with_seed(self, seed: int) -> "Recipe":
        """The same recipe for another seed."""
        return replace(self, seed=int(seed))

    def filled(self, defaults: dict) -> "Recipe":
        """This recipe with its unset (None) settings taken from ``defaults``."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        d = asdict(self)
        for name in ("image_prompts", "modifiers", "guide_images"):
            d[name] = list(getattr(self, name))
        d["settings"] = dict(self.settings)
        return d

    def to_json(self) -> str:
        """Compact, key-sorted JSON (stable, so equal recipes give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d) -> "Recipe":
        """Build and validate from a dict, ignoring keys a newer version may have added."""
        if not isinstance(d, dict) or "prompt" not in d:
            raise RecipeError("not a clip-curator recipe (no prompt)")
        known = {f.name for f in fields(cls)}
        return parse(cls, {k: v for k, v in d.items() if k in known}, RecipeError)._consistent()

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parse JSON text written by ``to_json``."""
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
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
    """The recipe and extra facts stored in a PNG's text chunk; RecipeError if it has none or a bad one."""
    with open_image(path, RecipeError) as im:
        text = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    if not text:
        raise RecipeError(f"{path} carries no clip-curator recipe")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipeError(f"malformed recipe in {path}: {e}") from None
    extra = payload.pop("extra", {}) if isinstance(payload, dict) else {}
    return Recipe.from_dict(payload), extra if isinstance(extra, dict) else {}
