"""The instance folder: where every piece of data lives, and its settings file.

``Instance`` is the only place that spells the layout (database, images by kind, thumbnails,
the vector index, the model cache, settings, the secret key). Everything else asks it for paths,
so moving a folder is a one-line change and no module guesses another's file names.

Settings live in ``config.json`` (written atomically, private to the owner) and are validated by
one schema; a few can be overridden from the environment for a single run.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .errors import BadRequest
from .files import write_bytes
from .validate import Real, Whole, parse

ENV_INSTANCE = "CLIP_CURATOR_INSTANCE"
# Below this many embeddings search scans them exactly; above it uses the hnswlib file.
EXACT_BELOW = 20_000
# CLIP cosine similarity from which two images stack as near-duplicates. Measured on the tiny CLIP
# (bench/bench_curation.py): 84% of re-saved copies of a drawing reach it, 6% of other drawings of
# the same caption and none of other captions do. Real CLIPs are unmeasured here: a setting.
STACK_THRESHOLD = 0.99


class Config(BaseModel):
    """The settings an instance keeps in config.json (unknown keys are kept, not used)."""

    model_config = ConfigDict(extra="allow")

    password_hash: StrictStr | None = None
    search_clip: StrictStr | None = Field(default=None, description="a CLIP preset or open_clip MODEL/TAG")
    exact_below: Annotated[Whole, Field(ge=0, description="a whole number of at least 0")] = EXACT_BELOW
    allowed_hosts: list[StrictStr] = Field(default_factory=list, description="a list of host names")
    stack_threshold: Annotated[Real, Field(gt=0, le=1, description="a number above 0 and at most 1")] = \
        STACK_THRESHOLD
    # Images rejected longer ago than this are deleted for good by the worker (None: only by hand).
    trash_days: Annotated[Real | None, Field(gt=0, description="a number of days above 0")] = 30.0


# Settings a run may override from the environment, and the variable for each.
ENV_SETTINGS = {"search_clip": "CLIP_CURATOR_SEARCH_CLIP", "exact_below": "CLIP_CURATOR_EXACT_BELOW",
                "stack_threshold": "CLIP_CURATOR_STACK_THRESHOLD"}


def default_root() -> Path:
    """$CLIP_CURATOR_INSTANCE, else ./instance under the current directory."""
    return Path(os.environ.get(ENV_INSTANCE) or Path.cwd() / "instance")


@dataclass(frozen=True)
class Instance:
    """One gallery's folder and its layout."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @classmethod
    def default(cls) -> "Instance":
        """The instance of this run (see ``default_root``)."""
        return cls(default_root())

    # --- the layout --------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        """The SQLite database."""
        return self.root / "gallery.db"

    @property
    def images_dir(self) -> Path:
        """Every image file the gallery holds, by kind below."""
        return self.root / "images"

    def job_dir(self, job_id: int) -> Path:
        """Where a generate job's images and animations live."""
        return self.images_dir / f"job{job_id:06d}"

    @property
    def upscaled_dir(self) -> Path:
        """Where upscale jobs write."""
        return self.images_dir / "upscaled"

    def upscale_path(self, parent_id: int, model: str) -> Path:
        """The file of an image's upscale by a model."""
        return self.upscaled_dir / f"{parent_id // 1000:04d}" / f"{parent_id}-{model}.png"

    @property
    def imported_dir(self) -> Path:
        """Where imported files are copied, by content hash."""
        return self.images_dir / "imported"

    def imported_path(self, sha256: str, suffix: str) -> Path:
        """The copy of an imported file with these bytes."""
        return self.imported_dir / sha256[:2] / f"{sha256}{suffix.lower()}"

    def thumb_path(self, image_id: int, size: int) -> Path:
        """The cached thumbnail of an image."""
        return self.root / "thumbs" / f"{image_id // 1000:04d}" / f"{image_id}-{size}.webp"

    @property
    def index_dir(self) -> Path:
        """The vector index files (a cache of the database)."""
        return self.root / "index"

    @property
    def models_dir(self) -> Path:
        """Downloaded model weights."""
        return self.root / "models"

    @property
    def reproduced_dir(self) -> Path:
        """Where ``reproduce`` writes when no output file is named (never a job's folder)."""
        return self.root / "reproduced"

    @property
    def modifiers_path(self) -> Path:
        """The user's own style modifiers, added to (or overriding) the shipped library."""
        return self.root / "modifiers.json"

    @property
    def wildcards_dir(self) -> Path:
        """Wildcard files for prompt variations (``__colours__`` reads ``colours.txt``)."""
        return self.root / "wildcards"

    @property
    def config_path(self) -> Path:
        """The settings file."""
        return self.root / "config.json"

    @property
    def secret_key_path(self) -> Path:
        """The site's session-signing key."""
        return self.root / "secret_key"

    def rel(self, path: Path) -> str:
        """A path inside the instance as the relative POSIX text rows store."""
        return Path(path).relative_to(self.root).as_posix()

    def file(self, rel: str | None) -> Path | None:
        """The file a row's relative path names, or None if it points outside the instance."""
        if not rel:
            return None
        path = (self.root / rel).resolve()
        return path if self.root in path.parents else None

    # --- settings ----------------------------------------------------------------------------

    def read_config(self) -> Config:
        """The stored settings (defaults where the file is absent); BadRequest if it is malformed."""
        try:
            data = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as e:
            raise BadRequest(f"{self.config_path} cannot be read ({type(e).__name__}): fix or delete it") from None
        if not isinstance(data, dict):
            raise BadRequest(f"{self.config_path} must hold a JSON object")
        return parse(Config, data)

    def config(self) -> Config:
        """The settings of this run: the stored ones, with environment overrides applied."""
        stored = self.read_config().model_dump()
        for key, var in ENV_SETTINGS.items():
            if os.environ.get(var):
                value = os.environ[var]
                stored[key] = value
        return parse(Config, stored)

    def update_config(self, **changes) -> Config:
        """Change stored settings (validated), writing the file atomically and privately."""
        config = parse(Config, {**self.read_config().model_dump(), **changes})
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes(self.config_path, json.dumps(config.model_dump(), indent=2).encode(), mode=0o600)
        return config

    def secret_key(self) -> str:
        """A per-instance random key, created once and kept private in the instance folder."""
        try:
            return self.secret_key_path.read_text().strip()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        try:
            fd = os.open(self.secret_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return self.secret_key_path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key
