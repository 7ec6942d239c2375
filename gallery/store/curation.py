"""SQL of triage: stars, ratings, the trash and its emptying, and the labels a taste model learns from.

Every action on a selection is one statement in one transaction, checked first: an unknown id
changes nothing. Rejecting an image moves its family (its upscales) to the trash with it, and
restoring brings the family back. Emptying the trash deletes rows and embeddings in one
transaction, after listing their files in ``purge_queue``; the files are deleted after the
commit and their entries then, so a kill at any moment leaves every file with its row or listed.
"""
from __future__ import annotations

import json

import numpy as np

from ..errors import BadRequest, ImageNotFound
from .jobs import now
from .rows import storable_id

# What counts as a keeper and as a reject for a taste model: a star or four stars and up; the trash
# or a single star. Ratings of 2 and 3 say "fine", which teaches little either way.
KEEP_SQL = "(starred = 1 OR rating >= 4)"
REJECT_SQL = "(rejected IS NOT NULL OR rating = 1)"


def _ids(ids) -> str:
    return json.dumps([int(i) for i in ids])


class CurationMixin:
    """Stars, ratings, rejects and the trash."""

    def star(self, image_id: int, starred: bool = True) -> None:
        """Star or unstar an image."""
        self.set_starred([image_id], starred)

    def set_starred(self, image_ids: list[int], starred: bool) -> None:
        """Star or unstar these images in one statement (ImageNotFound, and no change, if one is missing)."""
        self.require_images(image_ids)
        self.conn.execute("UPDATE images SET starred = ? WHERE id IN (SELECT value FROM json_each(?))",
                          (int(bool(starred)), _ids(image_ids)))

    def toggle_star(self, image_id: int) -> bool:
        """Flip an image's star in one statement (atomic under concurrent toggles); returns the new value."""
        row = self.conn.execute("UPDATE images SET starred = 1 - starred WHERE id = ? RETURNING starred",
                                (image_id,)).fetchone() if storable_id(image_id) else None
        if row is None:
            raise ImageNotFound(f"image {image_id} doesn't exist")
        return bool(row[0])

    def set_rating(self, image_ids: list[int], rating: int) -> None:
        """Rate these images 1-5 (0 clears the rating), in one statement."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 5:
            raise BadRequest(f"rating must be a whole number from 0 to 5, not {rating!r}")
        self.require_images(image_ids)
        self.conn.execute("UPDATE images SET rating = ? WHERE id IN (SELECT value FROM json_each(?))",
                          (rating, _ids(image_ids)))

    def _family(self, image_ids: list[int]) -> list[int]:
        # The images and their upscales (children), each once, parents first.
        rows = self.conn.execute(
            "SELECT value FROM json_each(?1) UNION SELECT id FROM images INDEXED BY images_parent WHERE parent_id IN "
            "(SELECT value FROM json_each(?1))", (_ids(image_ids),)).fetchall()
        return sorted({r[0] for r in rows})

    def reject(self, image_ids: list[int], family: bool = True) -> list[int]:
        """Move images (and their upscales) to the trash in one transaction; returns every id moved."""
        self.require_images(image_ids)
        with self.transaction():
            ids = self._family(image_ids) if family else list(image_ids)
            self.conn.execute("UPDATE images SET rejected = ? WHERE rejected IS NULL AND id IN "
                              "(SELECT value FROM json_each(?))", (now(), _ids(ids)))
        return ids

    def restore(self, image_ids: list[int], family: bool = True) -> list[int]:
        """Bring images (and their upscales) back from the trash; returns every id restored."""
        self.require_images(image_ids)
        with self.transaction():
            ids = self._family(image_ids) if family else list(image_ids)
            self.conn.execute("UPDATE images SET rejected = NULL WHERE id IN (SELECT value FROM json_each(?))",
                              (_ids(ids),))
        return ids

    def unlabeled_ids(self) -> list[int]:
        """Originals with no star, rating or reject yet: what a taste model can sort for triage."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM images WHERE starred = 0 AND rating = 0 AND rejected IS NULL AND upscaler IS NULL "
            "ORDER BY id DESC")]

    def rejected_ids(self) -> set[int]:
        """Ids of the images in the trash."""
        return {r[0] for r in self.conn.execute("SELECT id FROM images WHERE rejected IS NOT NULL")}

    def trash_ids(self, rejected_before: str | None = None) -> list[int]:
        """Ids in the trash (rejected before this time, if given), oldest rejected first."""
        sql = "SELECT id FROM images WHERE rejected IS NOT NULL" + (" AND rejected < ?" if rejected_before else "")
        return [r[0] for r in self.conn.execute(sql + " ORDER BY rejected, id",
                                                (rejected_before,) if rejected_before else ())]

    def begin_purge(self, image_ids: list[int]) -> list[str]:
        """Delete rows of rejected images and their embeddings, listing their files for deletion; returns them.

        Only images in the trash are purged (a restored one is left alone); upscales whose parent
        goes lose the link, and job counts follow.
        """
        with self.transaction():
            doomed = [tuple(r) for r in self.conn.execute(
                "SELECT id, path, animation_path, job_id FROM images WHERE rejected IS NOT NULL AND id IN "
                "(SELECT value FROM json_each(?))", (_ids(image_ids),))]
            if not doomed:
                return []
            ids = _ids(r[0] for r in doomed)
            files = [p for _, path, anim, _ in doomed for p in (path, anim) if p]
            self.conn.executemany("INSERT OR IGNORE INTO purge_queue (path) VALUES (?)", [(p,) for p in files])
            self.conn.execute("UPDATE images INDEXED BY images_parent SET parent_id = NULL "
                              "WHERE parent_id IN (SELECT value FROM json_each(?))",
                              (ids,))
            self.conn.execute("DELETE FROM embeddings WHERE image_id IN (SELECT value FROM json_each(?))", (ids,))
            self.conn.execute("DELETE FROM images WHERE id IN (SELECT value FROM json_each(?))", (ids,))
            self.conn.execute("UPDATE jobs SET done = (SELECT COUNT(*) FROM images WHERE job_id = jobs.id) "
                              "WHERE id IN (SELECT value FROM json_each(?))",
                              (json.dumps(sorted({r[3] for r in doomed if r[3] is not None})),))
            return files

    def purge_pending(self) -> list[str]:
        """Files listed for deletion whose deletion has not been confirmed (a purge that was cut short)."""
        return [r[0] for r in self.conn.execute("SELECT path FROM purge_queue ORDER BY path")]

    def end_purge(self, paths: list[str]) -> None:
        """Confirm these files are gone."""
        self.conn.execute("DELETE FROM purge_queue WHERE path IN (SELECT value FROM json_each(?))",
                          (json.dumps(list(paths)),))

    def counter(self, name: str) -> int:
        """A change counter kept by triggers ('embeddings' or 'labels')."""
        row = self.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def labelled(self, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, 1 keep / 0 reject, [n, d] embeddings of ``model``) of every image with a clear label."""
        rows = self.conn.execute(
            f"SELECT i.id, CASE WHEN {REJECT_SQL} THEN 0 ELSE 1 END, e.vector FROM images i "
            f"JOIN embeddings e ON e.image_id = i.id AND e.model = ? "
            f"WHERE ({KEEP_SQL}) != ({REJECT_SQL}) ORDER BY i.id", (model,)).fetchall()
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int8), np.empty((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], np.int64)
        labels = np.array([r[1] for r in rows], np.int8)
        return ids, labels, np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), -1)

    def label_counts(self) -> tuple[int, int]:
        """(keepers, rejects) among images with a clear label."""
        keep, rej = self.conn.execute(
            f"SELECT COALESCE(SUM({KEEP_SQL} AND NOT {REJECT_SQL}), 0), COALESCE(SUM({REJECT_SQL} AND NOT {KEEP_SQL}), 0) "
            "FROM images").fetchone()
        return keep, rej

    def starred_ids(self) -> list[int]:
        """Ids of starred images that are not themselves upscales nor in the trash, oldest first."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM images WHERE starred = 1 AND upscaler IS NULL AND rejected IS NULL ORDER BY id")]
