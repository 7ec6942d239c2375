"""SQL of the images table: recording finished files, pages of the grid, lineage and stars."""
from __future__ import annotations

import dataclasses
import json
import time

from ..errors import ImageNotFound
from .jobs import now
from .rows import Embedding, Filters, ImageRow, NewImage, storable_id
from .schema import fts_query

_NEW_COLUMNS = [f.name for f in dataclasses.fields(NewImage) if f.name != "recipe_json"]


def _ids_json(ids) -> str:
    return json.dumps([int(i) for i in ids])


class ImagesMixin:
    """Images: one row per complete file, with its recipe and provenance."""

    def add_image(self, image: NewImage, embedding: Embedding | None = None) -> int:
        """Record an image, its embedding and its job's new count in one transaction; returns its id."""
        values = [getattr(image, c) for c in _NEW_COLUMNS]
        cols = ", ".join([*_NEW_COLUMNS, "recipe", "created"])
        marks = ", ".join("?" * (len(_NEW_COLUMNS) + 2))
        with self.transaction():
            cur = self.conn.execute(f"INSERT INTO images ({cols}) VALUES ({marks})",
                                    (*values, image.recipe_json, now()))
            image_id = cur.lastrowid
            if embedding is not None:
                self._put_embedding(image_id, embedding.model, embedding.vector)
            if image.job_id is not None and image.kind == "generated":
                self.conn.execute("UPDATE jobs SET done = (SELECT COUNT(*) FROM images WHERE job_id = ?), "
                                  "updated = ?, heartbeat = ? WHERE id = ?",
                                  (image.job_id, now(), time.time(), image.job_id))
            return image_id

    def get_image(self, image_id: int) -> ImageRow:
        """An image row, or ImageNotFound."""
        row = self._row("SELECT * FROM images WHERE id = ?", (image_id,)) if storable_id(image_id) else None
        if row is None:
            raise ImageNotFound(f"image {image_id} doesn't exist")
        return ImageRow.from_row(row)

    def require_images(self, image_ids) -> list[ImageRow]:
        """Rows for every one of these ids, or ImageNotFound naming the first missing one."""
        rows = {r.id: r for r in self.images_by_ids(i for i in image_ids if storable_id(i))}
        for i in image_ids:
            if i not in rows:
                raise ImageNotFound(f"image {i} doesn't exist")
        return [rows[i] for i in image_ids]

    def images_by_ids(self, ids) -> list[ImageRow]:
        """Rows for these ids, in the order given (missing ids are left out)."""
        ids = [int(i) for i in ids]
        rows = {r["id"]: r for r in self._rows(
            "SELECT * FROM images WHERE id IN (SELECT value FROM json_each(?))", (_ids_json(ids),))}
        return [ImageRow.from_row(rows[i]) for i in ids if i in rows]

    def done_indices(self, job_id: int) -> set[int]:
        """Indices within a job that already have their image row."""
        return {r[0] for r in self.conn.execute("SELECT idx FROM images WHERE job_id = ?", (job_id,))}

    def images_for_job(self, job_id: int) -> list[ImageRow]:
        """A job's images in index order."""
        return [ImageRow.from_row(r) for r in self._rows("SELECT * FROM images WHERE job_id = ? ORDER BY idx",
                                                         (job_id,))]

    def made_on(self, job_ids) -> dict[int, list[tuple[str, str, int]]]:
        """Where each job's images were made: (node, device, images) by job id, the busiest first."""
        out: dict[int, list[tuple[str, str, int]]] = {}
        for job_id, node, device, count in self.conn.execute(
                "SELECT job_id, COALESCE(node, ''), COALESCE(device, ''), COUNT(*) FROM images "
                "WHERE job_id IN (SELECT value FROM json_each(?)) GROUP BY job_id, node, device "
                "ORDER BY job_id, COUNT(*) DESC, node, device", (_ids_json(job_ids),)):
            out.setdefault(job_id, []).append((node, device, count))
        return out

    def image_paths(self, job_id: int) -> set[str]:
        """Relative paths (images and animations) that rows of this job point at."""
        out = set()
        for p, a in self.conn.execute("SELECT path, animation_path FROM images WHERE job_id = ?", (job_id,)):
            out.add(p)
            if a:
                out.add(a)
        return out

    def paths_in_use(self, rels) -> set[str]:
        """Which of these relative paths some image row points at (as its file or its animation)."""
        found = self.conn.execute(
            "SELECT path FROM images WHERE path IN (SELECT value FROM json_each(?1)) UNION "
            "SELECT animation_path FROM images WHERE animation_path IN (SELECT value FROM json_each(?1))",
            (json.dumps(list(rels)),))
        return {r[0] for r in found}

    # --- the grid -------------------------------------------------------------------------

    @staticmethod
    def _where(f: Filters, state: bool = True) -> tuple[list[str], list]:
        # ``state``: restrict to the trash or to what is not in it (search does that its own way).
        where, args = [], []
        if state:
            where.append("rejected IS NOT NULL" if f.trash else "rejected IS NULL")
        if f.originals:
            where.append("upscaler IS NULL")
        if f.min_rating:
            where.append("rating >= ?")
            args.append(f.min_rating)
        if f.starred:
            where.append("starred = 1")
        if f.job_id is not None:
            where.append("job_id = ?")
            args.append(f.job_id)
        if f.keyword:
            where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
            args.append(fts_query(f.keyword))
        if f.backend is not None:  # recipes before version 3 were all guided diffusion
            where.append("kind != 'imported' AND json_valid(recipe) AND "
                         "COALESCE(json_extract(recipe, '$.backend'), 'diffusion') = ?")
            args.append(f.backend)
        if f.collection is not None:
            where.append("id IN (SELECT image_id FROM collection_images WHERE collection_id = "
                         "(SELECT id FROM collections WHERE name = ?))")
            args.append(f.collection)
        if f.since:
            where.append("created >= ?")
            args.append(f.since)
        if f.until:
            where.append("created < ?")
            args.append(f.until)
        return where, args

    def filter_ids(self, filters: Filters) -> list[int] | None:
        """Ids matching the filters (but for the trash filter), or None when none is set (everything matches)."""
        where, args = self._where(filters, state=filters.trash)
        if not where:
            return None
        return [r[0] for r in self.conn.execute(f"SELECT id FROM images WHERE {' AND '.join(where)}", args)]

    def ids_matching(self, filters: Filters) -> list[int]:
        """Every id a view with these filters shows, newest first."""
        where, args = self._where(filters)
        return [r[0] for r in self.conn.execute(f"SELECT id FROM images WHERE {' AND '.join(where)} ORDER BY id DESC",
                                                args)]

    def page_images(self, filters: Filters = Filters(), *, before: int | None = None, after: int | None = None,
                    limit: int = 60, by_rating: bool = False, offset: int = 0) -> list[ImageRow]:
        """Newest first, keyset-paginated by id: ``before`` the last id of the previous page, or
        ``after`` the first id of the next (newer) one. ``by_rating``: best rated first, by offset."""
        where, args = self._where(filters)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if after is not None:
            where.append("id > ?")
            args.append(after)
        sql = "SELECT * FROM images" + (" WHERE " + " AND ".join(where) if where else "")
        if by_rating:
            order = "rating DESC, id DESC"
        else:
            order = "id ASC" if after is not None and before is None else "id DESC"
        rows = [ImageRow.from_row(r) for r in self._rows(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?",
                                                         [*args, limit, offset])]
        return rows[::-1] if order == "id ASC" else rows

    def neighbours(self, image_id: int, filters: Filters = Filters()) -> tuple[int | None, int | None]:
        """(newer id, older id) around an image in the grid's order, under the same filters."""
        where, args = self._where(filters)
        cond = (" AND " + " AND ".join(where)) if where else ""
        newer = self.conn.execute(f"SELECT MIN(id) FROM images WHERE id > ?{cond}", [image_id, *args]).fetchone()[0]
        older = self.conn.execute(f"SELECT MAX(id) FROM images WHERE id < ?{cond}", [image_id, *args]).fetchone()[0]
        return newer, older

    def count_images(self, filters: Filters | None = None) -> int:
        """How many images the gallery holds (that match the filters, if given)."""
        if filters is None:
            return self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        where, args = self._where(filters)
        return self.conn.execute("SELECT COUNT(*) FROM images WHERE " + " AND ".join(where), args).fetchone()[0]

    # --- lineage and provenance ----------------------------------------------------------------

    def upscale_of(self, image_id: int, upscaler: str) -> int | None:
        """The id of this image's upscale by ``upscaler``, if it has one."""
        row = self.conn.execute("SELECT id FROM images WHERE parent_id = ? AND upscaler = ?",
                                (image_id, upscaler)).fetchone()
        return row[0] if row else None

    def children(self, image_id: int) -> list[ImageRow]:
        """Images derived from this one (upscales), oldest first."""
        return [ImageRow.from_row(r) for r in self._rows("SELECT * FROM images INDEXED BY images_parent WHERE parent_id = ? ORDER BY id",
                                                         (image_id,))]

    def children_of(self, image_ids: list[int]) -> list[ImageRow]:
        """The upscales of any of these images (those not in the trash), oldest first.

        Lookups by parent name their index: where most rows have no parent, SQLite's statistics
        (after ANALYZE) make it scan the table instead, 500 times slower for a page of 60.
        """
        return [ImageRow.from_row(r) for r in self._rows(
            "SELECT * FROM images INDEXED BY images_parent WHERE parent_id IN (SELECT value FROM json_each(?)) "
            "AND rejected IS NULL "
            "ORDER BY id", (_ids_json(image_ids),))]

    def image_by_source(self, source_path: str) -> ImageRow | None:
        """The image imported from this file path, if any."""
        row = self._row("SELECT * FROM images WHERE source_path = ? ORDER BY id DESC LIMIT 1", (source_path,))
        return ImageRow.from_row(row) if row else None

    def image_by_sha256(self, sha256: str) -> ImageRow | None:
        """An image with exactly these bytes, if any."""
        row = self._row("SELECT * FROM images WHERE sha256 = ? ORDER BY id LIMIT 1", (sha256,))
        return ImageRow.from_row(row) if row else None

    def update_source(self, image_id: int, source: tuple) -> None:
        """Remember an imported file's path, size and mtime."""
        self.conn.execute("UPDATE images SET source_path = ?, source_size = ?, source_mtime = ? WHERE id = ?",
                          (*source, image_id))

    def delete_image(self, image_id: int) -> list[str]:
        """Delete an image row (and its embeddings); returns the relative paths of its files."""
        row = self.get_image(image_id)
        with self.transaction():
            self.conn.execute("UPDATE images INDEXED BY images_parent SET parent_id = NULL WHERE parent_id = ?", (image_id,))
            self.conn.execute("DELETE FROM embeddings WHERE image_id = ?", (image_id,))
            self.conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            if row.job_id is not None:
                self.conn.execute("UPDATE jobs SET done = (SELECT COUNT(*) FROM images WHERE job_id = ?) WHERE id = ?",
                                  (row.job_id, row.job_id))
        return [p for p in (row.path, row.animation_path) if p]
