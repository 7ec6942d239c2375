"""Curation actions shared by the CLI and the site: each one store transaction, files kept in step."""
from __future__ import annotations

from .instance import Instance
from .store import Store


def delete_images(store: Store, instance: Instance, image_ids: list[int]) -> list[int]:
    """Delete images (rows, embeddings, then files no other row uses); every id is checked first."""
    store.require_images(image_ids)
    for image_id in image_ids:
        files = store.delete_image(image_id)
        in_use = store.paths_in_use(files)
        for rel in files:
            path = instance.file(rel)
            if path is not None and rel not in in_use:
                path.unlink(missing_ok=True)
    return list(image_ids)
