"""Import a folder of existing images into the gallery, incrementally.

Each file is copied into the instance folder (the site serves files only from there), its recipe
read from the PNG text chunk where clip-curator or a compatible tool wrote one, and its CLIP
embedding stored. A second run looks at path, size and mtime first and embeds only files that
are new or whose bytes changed; unreadable files are skipped with a message naming each.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gallery.recipe import RecipeError, read_png_recipe
from generate.files import commit_file, sha256_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
IMPORT_DIR = "images/imported"


@dataclass
class ImportReport:
    """What an import did."""

    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _check_image(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def _copy_in(src: Path, instance: Path, sha: str) -> str:
    rel = f"{IMPORT_DIR}/{sha[:2]}/{sha}{src.suffix.lower()}"
    dest = Path(instance) / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.stem}.tmp{os.getpid()}{dest.suffix}")
        try:
            shutil.copyfile(src, tmp)
            commit_file(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return rel


def _recipe_of(path: Path) -> tuple[str, str]:
    """(recipe JSON, prompt) from a PNG's text chunk, or an empty recipe."""
    if path.suffix.lower() == ".png":
        try:
            recipe, _ = read_png_recipe(path)
            return recipe.to_json(), recipe.prompt
        except RecipeError:
            pass
    return json.dumps({"prompt": "", "imported_from": path.name}), ""


def import_folder(store, embedder, instance: Path, folder: Path, progress=None) -> ImportReport:
    """Import every image under ``folder``; returns what was added, updated and skipped."""
    report = ImportReport()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        try:
            _import_one(store, embedder, Path(instance), path.resolve(), report)
        finally:
            if progress:
                progress(1)
    return report


def _import_one(store, embedder, instance: Path, path: Path, report: ImportReport) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        report.skipped.append((str(path), "not an image file"))
        return
    st = path.stat()
    source = (str(path), st.st_size, st.st_mtime)
    existing = store.image_by_source(str(path))
    if existing and existing["source_size"] == st.st_size and existing["source_mtime"] == st.st_mtime:
        report.unchanged += 1
        return
    try:
        width, height = _check_image(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        report.skipped.append((str(path), f"unreadable ({type(e).__name__})"))
        return
    sha = sha256_file(path)
    if existing and existing["sha256"] == sha:  # touched, not changed
        store.update_source(existing["id"], source)
        report.unchanged += 1
        return
    same = store.image_by_sha256(sha)
    if same and not existing:  # these bytes are in the gallery already
        if same["source_path"] is None:
            store.update_source(same["id"], source)
        report.unchanged += 1
        return
    vector = embedder.files([path])[0]
    if isinstance(vector, Exception):
        report.skipped.append((str(path), str(vector)))
        return
    rel = _copy_in(path, instance, sha)
    recipe_json, prompt = _recipe_of(path)
    if existing:
        old = store.delete_image(existing["id"])
        for p in old:
            if not store.path_in_use(p):
                (instance / p).unlink(missing_ok=True)
    image_id = store.add_image(
        job_id=None, idx=None, seed=None, path=rel, width=width, height=height, recipe_json=recipe_json,
        prompt=prompt, model=None, clip_model=None, embedding=vector, embedding_model=embedder.id,
        kind="imported", sha256=sha, source=source)
    (report.updated if existing else report.added).append(image_id)
