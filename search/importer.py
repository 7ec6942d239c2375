"""Import a folder of existing images into the gallery, incrementally.

Each file is copied into the instance folder (the site serves files only from there), its recipe
read from the PNG text chunk where clip-curator or a compatible tool wrote one, and its CLIP
embedding stored. A second run looks at path, size and mtime first and embeds only files that
are new or whose bytes changed. Files that cannot be imported (unreadable, too large, not images,
links that loop or lead nowhere) are skipped with a message naming each, and the rest go on.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gallery.errors import BadRequest
from gallery.files import atomic_write, sha256_file, sweep_temp
from gallery.imaging import load_rgb
from gallery.instance import Instance
from gallery.recipe import read_png_recipe
from gallery.store import Embedding, ImageRow, NewImage, Store
from gallery.store.collections import check_name

from .embed import Embedder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class ImportReport:
    """What an import did."""

    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # every image the folder's files are, new or not
    collection: str | None = None


def walk(folder: Path, skipped: list[tuple[str, str]]) -> Iterator[Path]:
    """Every file under folder, in a stable order, following links to folders once each.

    Links that loop or lead nowhere, and hidden files, are passed over; the links are named in
    ``skipped`` with the reason.
    """
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((root, "link to a folder already imported (a link loop)"))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in [*sorted(files), *[d for d in dirs if os.path.islink(os.path.join(root, d))]]:
            path = Path(root, name)
            if name.startswith("."):
                continue
            if path.is_symlink() and not path.exists():
                try:
                    path.resolve(strict=True)
                    why = "broken symbolic link"
                except RuntimeError:
                    why = "symbolic link loop"
                except OSError as e:
                    why = "symbolic link loop" if e.errno == 40 else "broken symbolic link"
                skipped.append((str(path), why))
            elif path.is_file():
                yield path


def copy_in(src: Path, instance: Instance, sha: str) -> str:
    """Copy a file into the instance's import folder (once per content); returns its relative path."""
    dest = instance.imported_path(sha, src.suffix)
    if not dest.exists():
        with atomic_write(dest) as tmp:
            shutil.copyfile(src, tmp)
    return instance.rel(dest)


def _recipe_of(path: Path) -> tuple[str, str]:
    """(recipe JSON, prompt) from a PNG's text chunk, or an empty recipe."""
    if path.suffix.lower() == ".png":
        try:
            recipe, _ = read_png_recipe(path)
            return recipe.to_json(), recipe.prompt
        except BadRequest:
            pass
    return json.dumps({"prompt": "", "imported_from": path.name}), ""


def import_folder(store: Store, embedder: Embedder, instance: Instance, folder: Path, progress=None,
                  collection: str | None = "") -> ImportReport:
    """Import every image under ``folder``; returns what was added, updated and skipped.

    The folder's images make up a collection named after it (``collection`` names another one;
    None makes none), so "my watercolours" can be searched, filtered and used for guides.
    """
    folder = Path(folder)
    name = check_name(folder.resolve().name if collection == "" else collection) if collection is not None else None
    sweep_temp(instance.imported_dir)
    report = ImportReport(collection=name)
    for path in list(walk(folder, report.skipped)):
        try:
            Importer(store, embedder, instance, report).one(path.resolve())
        finally:
            if progress:
                progress(1)
    if name and report.ids:
        store.add_to_collection(name, report.ids)
    return report


@dataclass
class Importer:
    """Imports files one by one into a store, recording what happened in a report."""

    store: Store
    embedder: Embedder
    instance: Instance
    report: ImportReport

    def one(self, path: Path) -> None:
        """Import one file (or count it unchanged, or skip it with the reason)."""
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            self.report.skipped.append((str(path), "not an image file"))
            return
        st = path.stat()
        source = (str(path), st.st_size, st.st_mtime)
        existing = self.store.image_by_source(str(path))
        if existing and existing.source_size == st.st_size and existing.source_mtime == st.st_mtime:
            self.report.unchanged += 1
            self.report.ids.append(existing.id)
            return
        try:
            image = load_rgb(path)
        except BadRequest as e:
            self.report.skipped.append((str(path), getattr(e, "reason", str(e))))
            return
        sha = sha256_file(path)
        if self._already_here(existing, sha, source):
            self.report.unchanged += 1
            return
        vector = self.embedder.pixels([image])[0]
        self._record(path, image.size, sha, source, vector, existing)

    def _already_here(self, existing: ImageRow | None, sha: str, source: tuple) -> bool:
        if existing and existing.sha256 == sha:  # touched, not changed
            self.store.update_source(existing.id, source)
            self.report.ids.append(existing.id)
            return True
        same = self.store.image_by_sha256(sha)
        if same and not existing:  # these bytes are in the gallery already
            if same.source_path is None:
                self.store.update_source(same.id, source)
            self.report.ids.append(same.id)
            return True
        return False

    def _record(self, path: Path, size: tuple[int, int], sha: str, source: tuple, vector, existing) -> None:
        rel = copy_in(path, self.instance, sha)
        recipe_json, prompt = _recipe_of(path)
        if existing:
            self._forget(existing)
        image_id = self.store.add_image(NewImage(
            path=rel, width=size[0], height=size[1], recipe_json=recipe_json, prompt=prompt, kind="imported",
            sha256=sha, source_path=source[0], source_size=source[1], source_mtime=source[2]),
            Embedding(self.embedder.id, vector))
        (self.report.updated if existing else self.report.added).append(image_id)
        self.report.ids.append(image_id)

    def _forget(self, row: ImageRow) -> None:
        # The file's old version: its row goes, and its copy too unless another row shares it.
        old = self.store.delete_image(row.id)
        in_use = self.store.paths_in_use(old)
        for rel in old:
            if rel not in in_use:
                (self.instance.root / rel).unlink(missing_ok=True)

