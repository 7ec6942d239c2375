"""Typed rows: what the store hands out and takes in, instead of bare dicts and keyword lists."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

JOB_KINDS = ("generate", "upscale")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    """A row of the jobs table."""

    id: int
    kind: str
    status: str
    recipe: str
    params: dict
    n: int
    seed: int
    done: int
    step: int
    steps: int
    created: str
    started: str | None
    finished: str | None
    updated: str
    error: str | None
    worker: str | None
    heartbeat: float | None
    cancel_requested: bool

    @classmethod
    def from_row(cls, row) -> "Job":
        """Decode a sqlite row."""
        d = dict(row)
        d["params"] = json.loads(d["params"] or "{}")
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)

    @property
    def prompt(self) -> str:
        """The prompt of the job's recipe ('' for jobs without one)."""
        try:
            recipe = json.loads(self.recipe)
        except ValueError:
            return ""
        prompt = recipe.get("prompt", "") if isinstance(recipe, dict) else ""
        return prompt if isinstance(prompt, str) else ""


@dataclass(frozen=True)
class ImageRow:
    """A row of the images table: a file in the instance folder and everything known about it."""

    id: int
    job_id: int | None
    idx: int | None
    kind: str
    seed: int | None
    path: str
    animation_path: str | None
    width: int
    height: int
    prompt: str
    recipe: str
    model: str | None
    clip_model: str | None
    device: str | None
    created: str
    starred: bool
    parent_id: int | None
    sha256: str | None
    source_path: str | None
    source_size: int | None
    source_mtime: float | None
    upscaler: str | None
    rating: int = 0
    rejected: str | None = None
    node: str | None = None
    template: str | None = None

    @classmethod
    def from_row(cls, row) -> "ImageRow":
        """Decode a sqlite row (a grid page decodes hundreds: this skips the frozen __init__'s per-field cost)."""
        self = object.__new__(cls)
        self.__dict__.update(zip(row.keys(), row))
        self.__dict__["starred"] = bool(self.starred)
        return self

    @property
    def recipe_dict(self) -> dict:
        """The stored recipe as a dict ({} if it is not one)."""
        try:
            recipe = json.loads(self.recipe)
        except ValueError:
            return {}
        return recipe if isinstance(recipe, dict) else {}


@dataclass(frozen=True)
class NewImage:
    """An image about to be recorded: its file exists, complete, at ``path`` (relative to the instance)."""

    path: str
    width: int
    height: int
    recipe_json: str
    prompt: str
    kind: str = "generated"
    job_id: int | None = None
    idx: int | None = None
    seed: int | None = None
    animation_path: str | None = None
    model: str | None = None
    clip_model: str | None = None
    device: str | None = None
    parent_id: int | None = None
    sha256: str | None = None
    source_path: str | None = None
    source_size: int | None = None
    source_mtime: float | None = None
    upscaler: str | None = None
    node: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class Embedding:
    """A CLIP embedding of an image, labelled with the CLIP that made it."""

    model: str
    vector: np.ndarray


@dataclass(frozen=True)
class Filters:
    """Restrictions on which images a page or a search may show."""

    starred: bool = False
    job_id: int | None = None
    since: str | None = None
    until: str | None = None
    keyword: str | None = None
    min_rating: int = 0
    trash: bool = False  # only rejected images (else: only those not rejected)
    originals: bool = False  # leave out upscales (they stack with their parent)
    collection: str | None = None  # only images in the collection of this name
    backend: str | None = None  # only images made by this generator (diffusion, siren, vqgan, biggan)


SQLITE_INT_MAX = 2 ** 63 - 1


def storable_id(value) -> bool:
    """Whether a value can be a row id at all (a whole number SQLite can hold)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SQLITE_INT_MAX
