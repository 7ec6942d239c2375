"""Curation actions shared by the CLI and the site: each one store transaction, files kept in step."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .errors import BadRequest
from .instance import Instance
from .store import Store
from .store.rows import SQLITE_INT_MAX
from .validate import Whole, parse

MAX_SELECTION = 5_000


def _unlink(instance: Instance, rels: list[str]) -> None:
    for rel in rels:
        path = instance.file(rel)
        if path is not None:
            path.unlink(missing_ok=True)


def finish_purges(store: Store, instance: Instance) -> int:
    """Delete the files a purge that was cut short listed but did not get to; returns how many."""
    pending = store.purge_pending()
    in_use = store.paths_in_use(pending)  # listed, then shared by a row imported since: keep
    _unlink(instance, [p for p in pending if p not in in_use])
    store.end_purge(pending)
    return len(pending)


def purge(store: Store, instance: Instance, image_ids: list[int]) -> int:
    """Delete rejected images for good: rows and embeddings in one transaction, then their files."""
    finish_purges(store, instance)
    files = store.begin_purge(image_ids)
    in_use = store.paths_in_use(files)
    _unlink(instance, [p for p in files if p not in in_use])
    store.end_purge(files)
    return len(files)


def empty_trash(store: Store, instance: Instance, older_than_days: float | None = None) -> list[int]:
    """Delete every image in the trash (or only those rejected longer ago than that); returns their ids."""
    before = None
    if older_than_days is not None:
        before = (datetime.now(timezone.utc) - timedelta(days=older_than_days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ids = store.trash_ids(before)
    purge(store, instance, ids)
    return ids


def delete_images(store: Store, instance: Instance, image_ids: list[int]) -> list[int]:
    """Delete images at once, whether in the trash or not (rows, embeddings, then files no other row uses)."""
    store.require_images(image_ids)
    store.reject(image_ids, family=False)
    purge(store, instance, image_ids)
    return list(image_ids)


Ids = Annotated[list[Annotated[Whole, Field(ge=1, le=SQLITE_INT_MAX)]],
                Field(min_length=1, max_length=MAX_SELECTION, description=f"a list of 1 to {MAX_SELECTION} image ids")]


class BulkRequest(BaseModel):
    """One action on a selection of images (``POST /api/images/bulk``)."""

    model_config = ConfigDict(extra="forbid")

    ids: Ids
    action: Annotated[Literal["star", "unstar", "reject", "restore", "rate", "upscale", "collect", "uncollect"],
                      Field(description="star, unstar, reject, restore, rate, upscale, collect or uncollect")]
    rating: Annotated[Whole | None, Field(ge=0, le=5, description="a whole number from 0 to 5")] = None
    collection: Annotated[StrictStr | None, Field(max_length=200, description="a collection name")] = None


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action changed: every id it touched (a family included)."""

    action: str
    ids: list[int]


def apply(store: Store, request: BulkRequest | dict) -> BulkResult:
    """Apply one action to a selection, in one transaction (an unknown id changes nothing).

    Upscaling queues a job, which is the queue's business: the caller hands that action there.
    """
    req = request if isinstance(request, BulkRequest) else parse(BulkRequest, request)
    ids = list(dict.fromkeys(req.ids))
    if req.action == "upscale":
        raise BadRequest("upscale a selection through the job queue")
    if req.action in ("star", "unstar"):
        store.set_starred(ids, req.action == "star")
    elif req.action == "rate":
        if req.rating is None:
            raise BadRequest("rating is required to rate images")
        store.set_rating(ids, req.rating)
    elif req.action in ("collect", "uncollect"):
        if req.collection is None:
            raise BadRequest(f"collection is required to {req.action} images")
        if req.action == "collect":
            ids = store.add_to_collection(req.collection, ids)  # those new to it: what an undo takes out
        else:
            store.require_images(ids)
            store.remove_from_collection(req.collection, ids)
    elif req.action == "reject":
        ids = store.reject(ids)
    else:
        ids = store.restore(ids)
    return BulkResult(req.action, ids)
