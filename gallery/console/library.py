"""Commands over the collection: show, search, index, import, star, delete and upscale."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gallery.curate import delete_images, empty_trash
from gallery.errors import BadRequest
from gallery.store import Filters
from gallery.validate import parse_day

from .base import Ctx, command


@command()
@click.argument("image_id", type=int)
def show(c: Ctx, image_id):
    """Show an image's file, recipe and lineage.

    Example: clip-curator show 12
    """
    _, (row,) = c.images([image_id])
    click.echo(f"image {row.id}  job {row.job_id} #{row.idx}  seed {row.seed}  {row.width}x{row.height}  "
               f"{'starred' if row.starred else ''}".rstrip())
    click.echo(f"file: {c.instance.root / row.path}")
    if row.animation_path:
        click.echo(f"animation: {c.instance.root / row.animation_path}")
    if row.parent_id:
        click.echo(f"parent: {row.parent_id}")
    click.echo(f"models: {row.model} + {row.clip_model}  on {row.device}")
    click.echo("recipe: " + json.dumps(row.recipe_dict, indent=2, sort_keys=True))


def _searcher(c: Ctx, store):
    from search.service import open_searcher

    return open_searcher(store, c.instance, c.models())


@command()
@click.argument("query", required=False)
@click.option("--like", "like_id", type=int, help="Images like this gallery image instead of a text query.")
@click.option("-k", "k", default=12, show_default=True, help="Results per page.")
@click.option("--page", default=1, show_default=True, help="Page of results (1 is the best).")
@click.option("--starred", is_flag=True, help="Only starred images.")
@click.option("--job", "job_id", type=int, help="Only images of this job.")
@click.option("--since", help="Only images created at or after this date (YYYY-MM-DD).")
@click.option("--until", help="Only images created before this date (YYYY-MM-DD).")
@click.option("--keyword", help="Only images whose prompt contains these words.")
@click.option("--collection", help="Only images in this collection.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def search(c: Ctx, query, like_id, k, page, starred, job_id, since, until, keyword, collection, as_json):
    """Search the gallery with CLIP by phrase, text arithmetic, or likeness to an image.

    Example: clip-curator search '"owl" + "watercolor" - "photo"' --starred -k 12
    """
    if (query is None) == (like_id is None):
        raise BadRequest("give a query phrase or --like ID (one of them)")
    if page < 1:
        raise BadRequest(f"--page must be at least 1, not {page}")
    filters = Filters(starred=starred, job_id=job_id, since=parse_day(since, "--since"),
                      until=parse_day(until, "--until"), keyword=keyword, collection=collection)
    store = c.existing_store()
    if store is None:
        return
    if collection is not None:
        store.collection_id(collection)
    searcher = _searcher(c, store)
    offset = (page - 1) * k
    hits = (searcher.like(like_id, k, offset, filters) if like_id is not None
            else searcher.text(query, k, offset, filters))
    if getattr(searcher.index, "note", None):
        click.echo(searcher.index.note, err=True)
    for h in hits:
        path = c.instance.root / h.row.path
        if as_json:
            click.echo(json.dumps({"id": h.id, "score": round(h.score, 4), "prompt": h.row.prompt,
                                   "path": str(path), "starred": h.row.starred}))
        else:
            click.echo(f"{h.id:>6} {'*' if h.row.starred else ' '} {h.score:+.3f}  {h.row.prompt[:50]:<50}  {path}")


@command()
@click.option("--rebuild", is_flag=True, help="Rebuild the vector index from the database.")
def index(c: Ctx, rebuild):
    """Embed images that lack a search embedding, and check, repair or rebuild the vector index.

    Example: clip-curator index --rebuild
    """
    from tqdm import tqdm

    from search.service import update_index

    bars = {}

    def on_total(todo, total):
        bars["embed"] = tqdm(total=todo, unit="img", desc="embedding", file=sys.stderr, disable=not todo)
        bars["index"] = tqdm(total=total, unit="vec", desc="indexing", file=sys.stderr)

    searcher = _searcher(c, c.store())
    try:
        report = update_index(searcher, c.instance, rebuild, on_embed=lambda n: bars["embed"].update(n),
                              on_index=lambda n: bars["index"].update(n), on_total=on_total)
    finally:
        for bar in bars.values():
            bar.close()
    for image_id, why in report.skipped:
        click.echo(f"skipped image {image_id}: {why}", err=True)
    click.echo(f"{report.total} images indexed for {searcher.embedder.id} ({report.kind} search)"
               + (f"; {report.status}" if report.status else ""))


@command(name="import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", "collection", default="", help="Collection to put the images in (default: the "
              "folder's name).")
@click.option("--no-collection", is_flag=True, help="Put them in no collection.")
def import_(c: Ctx, folder, collection, no_collection):
    """Import a folder of PNG/JPEG/WebP images (new or changed files only) into a collection named after it.

    Example: clip-curator import ~/art/watercolours
    """
    from tqdm import tqdm

    from search.importer import import_folder
    from search.service import open_embedder

    embedder = open_embedder(c.store(), c.instance, c.models())
    with tqdm(unit="file", desc="importing", file=sys.stderr) as bar:
        report = import_folder(c.store(), embedder, c.instance, folder, progress=bar.update,
                               collection=None if no_collection else collection)
    for path, why in report.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"imported {len(report.added)} new, {len(report.updated)} changed, {report.unchanged} unchanged, "
               f"{len(report.skipped)} skipped" + (f", in collection {report.collection!r}" if report.collection
                                                   and report.ids else ""))


@command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
@click.option("--off", is_flag=True, help="Remove the star instead.")
def star(c: Ctx, image_ids, off):
    """Star images (or unstar them with --off).

    Example: clip-curator star 12 15
    """
    store, _ = c.images(image_ids)
    store.set_starred(list(image_ids), not off)
    click.echo(f"{'unstarred' if off else 'starred'} {len(image_ids)} image(s)")


@command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
def delete(c: Ctx, image_ids):
    """Delete images (rows, files and embeddings).

    Example: clip-curator delete 12 13
    """
    store, _ = c.images(image_ids)
    for image_id in delete_images(store, c.instance, list(image_ids)):
        click.echo(f"deleted image {image_id}")


@command()
@click.argument("image_ids", type=int, nargs=-1)
@click.option("--starred", is_flag=True, help="Every starred image not yet upscaled by this model.")
@click.option("--model", default="x4plus", show_default=True, help="x4plus, x4plus-anime or compact.")
@click.option("--queue", is_flag=True, help="Only queue the job, for a worker to run.")
def upscale(c: Ctx, image_ids, starred, model, queue):
    """Upscale images 4x with Real-ESRGAN, keeping their recipes (skips ones already upscaled).

    Example: clip-curator upscale --starred
    """
    from tqdm import tqdm

    from generate.queue import UpscaleRunner, queue_upscale

    if not image_ids and not starred:
        raise BadRequest("name image ids or use --starred")
    store = c.images(image_ids)[0] if image_ids else c.existing_store()
    job_id = queue_upscale(store, list(image_ids) + (store.starred_ids() if starred else []), model) if store else None
    if job_id is None:
        click.echo(f"nothing to upscale: every image already has a {model} upscale")
        return
    if queue:
        click.echo(job_id)
        return
    runner = UpscaleRunner(store, c.instance)
    with tqdm(total=store.get_job(job_id).n, unit="img", desc=f"upscale job {job_id}", file=sys.stderr) as bar:
        runner.on_progress = lambda p: setattr(bar, "n", p.done) or bar.refresh()
        try:
            status = runner.run(job_id)
        finally:
            runner.close()
        bar.n = store.get_job(job_id).done
    for row in store.images_for_job(job_id):
        click.echo(f"{row.parent_id:>6} -> {row.id:>6}  {row.width}x{row.height}  {c.instance.root / row.path}")
    if status != "done":
        raise click.ClickException(f"job {job_id} {status}")


@command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
def reject(c: Ctx, image_ids):
    """Move images (with their upscales) to the trash; nothing is lost until it is emptied.

    Example: clip-curator reject 12 13
    """
    store, _ = c.images(image_ids)
    moved = store.reject(list(image_ids))
    click.echo(f"moved {len(moved)} image(s) to the trash (restore with: clip-curator restore ID)")


@command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
def restore(c: Ctx, image_ids):
    """Bring images (with their upscales) back from the trash.

    Example: clip-curator restore 12
    """
    store, _ = c.images(image_ids)
    click.echo(f"restored {len(store.restore(list(image_ids)))} image(s)")


@command()
@click.argument("rating", type=int)
@click.argument("image_ids", type=int, nargs=-1, required=True)
def rate(c: Ctx, rating, image_ids):
    """Rate images 1-5 (0 clears the rating).

    Example: clip-curator rate 5 12 15
    """
    store, _ = c.images(image_ids)
    store.set_rating(list(image_ids), rating)
    click.echo(f"rated {len(image_ids)} image(s) {rating}" if rating else f"cleared {len(image_ids)} rating(s)")


@command()
@click.option("--empty", is_flag=True, help="Delete everything in the trash for good (rows, embeddings, files).")
@click.option("--older-than", type=float, help="With --empty: only images rejected more than this many days ago.")
def trash(c: Ctx, empty, older_than):
    """List the trash, or empty it.

    Example: clip-curator trash --empty --older-than 30
    """
    store = c.existing_store()
    if store is None:
        click.echo("the trash is empty")
        return
    if empty:
        gone = empty_trash(store, c.instance, older_than)
        click.echo(f"deleted {len(gone)} image(s) for good")
        return
    ids = store.trash_ids()
    for row in store.images_by_ids(ids):
        click.echo(f"{row.id:>6}  rejected {row.rejected[:19].replace('T', ' ')}  {row.prompt[:60]}")
    click.echo(f"{len(ids)} image(s) in the trash")
