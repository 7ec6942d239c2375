"""SQL of collections: named sets of images, and the keep-rate report over what made them.

A collection's name is unique without regard to case. Adding a selection is one transaction,
checked first (an unknown id changes nothing); deleting an image takes it out of every
collection (a foreign key cascade).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import BadRequest, CollectionNotFound
from .curation import KEEP_SQL
from .jobs import now

NAME_MAX = 100
_NAME = re.compile(r"^[^\x00-\x1f\x7f/\\]+$")


@dataclass(frozen=True)
class Collection:
    """A collection and how many images it holds (not counting the trash)."""

    id: int
    name: str
    count: int


@dataclass(frozen=True)
class KeepRow:
    """One value of one setting, and how the images made with it were judged."""

    dimension: str
    value: str
    images: int
    kept: int  # starred, or rated 4 or 5
    starred: int
    rejected: int

    @property
    def keep_rate(self) -> float:
        """Kept images as a fraction of all of them."""
        return self.kept / self.images if self.images else 0.0


def check_name(name) -> str:
    """A collection name, stripped; BadRequest if empty, too long or with control characters or slashes."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("a collection needs a name")
    name = name.strip()
    if len(name) > NAME_MAX or not _NAME.match(name):
        raise BadRequest(f"a collection name is at most {NAME_MAX} characters, without slashes or control characters")
    return name


# The report's dimensions: each an SQL expression over images (``i``) giving the value an image is
# counted under; modifiers are a list, so an image counts once under each of its modifiers.
_DIMENSIONS = {
    "modifier": ("json_each(json_extract(i.recipe, '$.modifiers')) AS m", "m.value"),
    "guides from": (None, "CASE WHEN json_extract(i.recipe, '$.guides') > 0 "
                          "THEN json_extract(i.recipe, '$.guide_pool') END"),
    "model": (None, "i.model"),
    "guidance scale": (None, "json_extract(i.recipe, '$.clip_guidance_scale')"),
    "variations": (None, "CASE WHEN i.template IS NOT NULL THEN i.template END"),
}


class CollectionsMixin:
    """Collections of images, and what the keepers were made with."""

    def collection_id(self, name: str, create: bool = False) -> int:
        """A collection's id by name (created if asked for), or CollectionNotFound."""
        name = check_name(name)
        row = self._row("SELECT id FROM collections WHERE name = ?", (name,))
        if row:
            return row[0]
        if not create:
            raise CollectionNotFound(f"there is no collection named {name!r}")
        return self.conn.execute("INSERT INTO collections (name, created) VALUES (?, ?) RETURNING id",
                                 (name, now())).fetchone()[0]

    def collections(self) -> list[Collection]:
        """Every collection, by name, with how many images it holds outside the trash."""
        return [Collection(*r) for r in self._rows(
            "SELECT c.id, c.name, COUNT(i.id) FROM collections c LEFT JOIN collection_images ci "
            "ON ci.collection_id = c.id LEFT JOIN images i ON i.id = ci.image_id AND i.rejected IS NULL "
            "GROUP BY c.id ORDER BY c.name COLLATE NOCASE")]

    def add_to_collection(self, name: str, image_ids: list[int]) -> list[int]:
        """Put these images into a collection (made if new) in one transaction; returns those new to it."""
        name = check_name(name)
        with self.transaction():
            self.require_images(image_ids)
            cid = self.collection_id(name, create=True)
            return [r[0] for r in self.conn.execute(
                "INSERT OR IGNORE INTO collection_images (collection_id, image_id, added) "
                "SELECT DISTINCT ?, value, ? FROM json_each(?) RETURNING image_id",
                (cid, now(), json.dumps([int(i) for i in image_ids]))).fetchall()]

    def remove_from_collection(self, name: str, image_ids: list[int]) -> int:
        """Take these images out of a collection; returns how many were in it."""
        cid = self.collection_id(name)
        return self.conn.execute("DELETE FROM collection_images WHERE collection_id = ? AND image_id IN "
                                 "(SELECT value FROM json_each(?))",
                                 (cid, json.dumps([int(i) for i in image_ids]))).rowcount

    def delete_collection(self, name: str) -> None:
        """Delete a collection (its images stay in the gallery)."""
        self.conn.execute("DELETE FROM collections WHERE id = ?", (self.collection_id(name),))

    def collections_of(self, image_id: int) -> list[str]:
        """The names of the collections an image is in."""
        return [r[0] for r in self._rows("SELECT c.name FROM collections c JOIN collection_images ci "
                                         "ON ci.collection_id = c.id WHERE ci.image_id = ? ORDER BY c.name",
                                         (image_id,))]

    def collection_names_in(self, text: str) -> list[str]:
        """Collections whose name appears in a text, as a whole phrase, without regard to case."""
        low = f" {re.sub(r'[^0-9a-z]+', ' ', text.lower())} "
        return [c.name for c in self.collections()
                if f" {re.sub(r'[^0-9a-z]+', ' ', c.name.lower()).strip()} " in low
                and re.sub(r"[^0-9a-z]+", "", c.name.lower())]

    def keep_report(self) -> list[KeepRow]:
        """Keep rate of generated images by modifier, guide pool, model, guidance scale and template."""
        out = []
        for dimension, (join, expr) in _DIMENSIONS.items():
            sql = (f"SELECT {expr} AS v, COUNT(*), SUM({KEEP_SQL}), SUM(starred), SUM(rejected IS NOT NULL) "
                   "FROM images i"
                   + (f", {join}" if join else "")
                   + " WHERE i.kind = 'generated' AND v IS NOT NULL GROUP BY v ORDER BY COUNT(*) DESC, v")
            out += [KeepRow(dimension, f"{v:g}" if isinstance(v, float) else str(v), n, kept, starred, rejected)
                    for v, n, kept, starred, rejected in self._rows(sql)]
        return out
