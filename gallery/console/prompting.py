"""Commands for prompting from your own collection: collections, style modifiers, the keep-rate report."""
from __future__ import annotations

import json

import click

from .base import Ctx, command, need


@command()
def collections(c: Ctx):
    """List the collections and how many images each holds.

    Example: clip-curator collections
    """
    store = c.existing_store()
    rows = store.collections() if store is not None else []
    if not rows:
        click.echo("no collections yet: `clip-curator import FOLDER` makes one, `clip-curator collect NAME ID...` too")
    for row in rows:
        click.echo(f"{row.count:>6}  {row.name}")


@command()
@click.argument("name")
@click.argument("image_ids", type=int, nargs=-1)
@click.option("--remove", is_flag=True, help="Take the images out of the collection instead.")
@click.option("--delete", is_flag=True, help="Delete the collection itself (its images stay in the gallery).")
def collect(c: Ctx, name, image_ids, remove, delete):
    """Add images to a collection (made if new), take them out, or delete the collection.

    Example: clip-curator collect "my watercolours" 12 15 16
    """
    store = c.store()
    if delete:
        need(not image_ids and not remove, "--delete takes the collection's name only")
        store.delete_collection(name)
        click.echo(f"deleted collection {name!r}")
        return
    need(bool(image_ids), "name the images: clip-curator collect NAME ID...")
    if remove:
        click.echo(f"took {store.remove_from_collection(name, list(image_ids))} image(s) out of {name!r}")
    else:
        click.echo(f"added {len(store.add_to_collection(name, list(image_ids)))} image(s) to {name!r}")


@command()
@click.option("--set", "set_", nargs=3, metavar="KIND NAME TEXT", help="Add or change one of your own modifiers.")
@click.option("--remove", metavar="NAME", help="Take a modifier out of the library.")
def modifiers(c: Ctx, set_, remove):
    """List the style modifiers by kind (use them with generate --modifiers NAME,NAME), or edit your own.

    Example: clip-curator modifiers --set artist gurney "by James Gurney"
    """
    from generate.modifiers import by_kind, library, save_own

    if set_:
        save_own(c.instance, *set_)
    if remove:
        known = library(c.instance).get(remove)
        need(known is not None, f"unknown modifier {remove!r}")
        save_own(c.instance, known.kind, remove, "")
    for kind, items in by_kind(c.instance).items():
        click.echo(f"{kind}:")
        for m in items:
            click.echo(f"  {m.name:<14} {m.text}")


@command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
def report(c: Ctx, as_json):
    """What produces keepers: keep rate (starred or rated 4-5) by modifier, guide pool, model, guidance and template.

    Example: clip-curator report
    """
    store = c.existing_store()
    rows = store.keep_report() if store is not None else []
    if not rows:
        click.echo("nothing to report yet: generate some images and star, rate or reject them")
        return
    last = None
    for r in rows:
        if as_json:
            click.echo(json.dumps({"dimension": r.dimension, "value": r.value, "images": r.images, "kept": r.kept,
                                   "starred": r.starred, "rejected": r.rejected, "keep_rate": round(r.keep_rate, 4)}))
            continue
        if r.dimension != last:
            click.echo(f"by {r.dimension}:")
            last = r.dimension
        bar = "#" * round(20 * r.keep_rate)
        click.echo(f"  {r.value[:40]:<40} {r.kept:>4}/{r.images:<4} kept {100 * r.keep_rate:5.1f}%  {bar:<20}  "
                   f"{r.rejected} rejected")
