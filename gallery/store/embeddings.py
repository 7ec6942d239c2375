"""SQL of the embeddings table: unit-norm float32 CLIP vectors, by model and image."""
from __future__ import annotations

import json

import numpy as np

from .rows import ImageRow


def _unpack(rows) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, mat


class EmbeddingsMixin:
    """Embeddings: one vector per image and CLIP model."""

    def _put_embedding(self, image_id: int, model: str, vector: np.ndarray) -> None:
        v = np.asarray(vector, dtype=np.float32).ravel()
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        self.conn.execute("INSERT OR REPLACE INTO embeddings (image_id, model, vector) VALUES (?, ?, ?)",
                          (image_id, model, v.astype(np.float32).tobytes()))

    def put_embeddings(self, model: str, items: list[tuple[int, np.ndarray]]) -> None:
        """Store unit-normalised embeddings of one model for existing images."""
        with self.transaction():
            for image_id, vector in items:
                self._put_embedding(image_id, model, vector)

    def embedding(self, image_id: int, model: str | None = None) -> np.ndarray | None:
        """An image's unit-norm float32 CLIP embedding (of ``model``, or of the CLIP that made it)."""
        model = model or self.get_image(image_id).clip_model
        got = self.conn.execute("SELECT vector FROM embeddings WHERE image_id = ? AND model = ?",
                                (image_id, model)).fetchone()
        return None if got is None else np.frombuffer(got[0], dtype=np.float32).copy()

    def embedding_models(self) -> dict[str, int]:
        """How many embeddings each CLIP model has, most first."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT model, COUNT(*) FROM embeddings GROUP BY model ORDER BY 2 DESC")}

    def embedding_stats(self, model: str) -> tuple[int, int, int]:
        """(count, largest image id, sum of image ids) of a model's embeddings: a cheap fingerprint.

        Re-read only when the embeddings' change counter has moved, so a search asks one row of
        the database whether its index is still in step, not the whole table.
        """
        version = self.counter("embeddings")
        cached = self._stats_cache.get(model)
        if cached is not None and cached[0] == version:
            return cached[1]
        stats = tuple(self.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(image_id), 0), COALESCE(SUM(image_id), 0) FROM embeddings WHERE model = ?",
            (model,)).fetchone())
        self._stats_cache[model] = (version, stats)
        return stats

    def iter_embeddings(self, model: str, after_id: int = 0, ids=None, chunk: int = 50_000):
        """Yield (ids, [n, d] float32 matrix) chunks of a model's embeddings, by image id."""
        if ids is not None:
            rows = self.conn.execute(
                "SELECT image_id, vector FROM embeddings WHERE model = ? AND image_id IN "
                "(SELECT value FROM json_each(?)) ORDER BY image_id", (model, json.dumps(sorted(int(i) for i in ids))))
            while batch := rows.fetchmany(chunk):
                yield _unpack(batch)
            return
        last = after_id
        while True:
            batch = self.conn.execute("SELECT image_id, vector FROM embeddings WHERE model = ? AND image_id > ? "
                                      "ORDER BY image_id LIMIT ?", (model, last, chunk)).fetchall()
            if not batch:
                return
            last = batch[-1][0]
            yield _unpack(batch)

    def embedding_ids(self, model: str) -> set[int]:
        """Ids of the images that have an embedding of this model."""
        return {r[0] for r in self.conn.execute("SELECT image_id FROM embeddings WHERE model = ?", (model,))}

    def images_without_embedding(self, model: str) -> list[ImageRow]:
        """Images that have no embedding of this model yet."""
        return [ImageRow.from_row(r) for r in self._rows(
            "SELECT * FROM images WHERE id NOT IN (SELECT image_id FROM embeddings WHERE model = ?) ORDER BY id",
            (model,))]
