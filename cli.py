"""clip-curator's command line: generate, run the queue, inspect and reproduce images.

Every command works on one instance folder (``--instance``, or $CLIP_CURATOR_INSTANCE, default
./instance) that holds the database, the images and the model cache.
"""
from __future__ import annotations

import functools
import json
import logging
import secrets
import sys
import warnings
from pathlib import Path

import click

from generate.errors import CuratorError

__version__ = "0.1.0"
DEFAULT_INSTANCE = Path(__file__).resolve().parent / "instance"
DB_NAME = "gallery.db"


def fail_cleanly(f):
    """Turn domain errors into one-line click errors (exit code 1)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from gallery.recipe import RecipeError

        try:
            return f(*args, **kwargs)
        except (CuratorError, RecipeError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


class Ctx:
    """What every command needs: the instance folder, and the store opened on demand."""

    def __init__(self, instance: Path):
        self.instance = instance
        self._store = None

    @property
    def db_path(self) -> Path:
        return self.instance / DB_NAME

    def store(self):
        """The gallery store (created on first use)."""
        if self._store is None:
            from gallery.store import Store

            self._store = Store(self.db_path)
        return self._store

    def existing_store(self):
        """The store if the database exists, else None (read-only commands create nothing)."""
        return self.store() if self.db_path.exists() else None

    def store_with_images(self, image_ids):
        """The store, after checking every id exists (so a command with a bad id changes nothing)."""
        from generate.errors import ImageNotFound

        store = self.existing_store()
        if store is None:
            raise ImageNotFound(f"image {image_ids[0]} doesn't exist")
        for image_id in image_ids:
            store.get_image(image_id)
        return store

    def models(self):
        from generate.models import ModelCache

        return ModelCache(self.instance)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clip-curator")
@click.option("--instance", type=click.Path(file_okay=False, path_type=Path), envvar="CLIP_CURATOR_INSTANCE",
              default=DEFAULT_INSTANCE, show_default="./instance", help="Folder holding all data.")
@click.pass_context
def main(ctx, instance: Path):
    """A gallery and curation server for CLIP-guided diffusion art.

    Example: python cli.py generate -p "beautiful colorful fish, trending on artstation" --n 100
    """
    # guided_diffusion's decorators warn about a torch API rename on import; users can do nothing about it.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"guided_diffusion\..*")
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.custom_(fwd|bwd).*")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "no pretrained weights" at WARNING
    ctx.obj = Ctx(instance.expanduser().resolve())


def device_option(f):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(f)


def _progress_printer(total_images: int):
    """A tqdm bar over all steps of a job, fed by the runner's Progress reports."""
    from tqdm import tqdm

    bar = {"bar": None}

    def on_progress(p):
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=p.total * p.steps, unit="step", desc=f"job {p.job_id}", file=sys.stderr,
                              dynamic_ncols=True)
        b = bar["bar"]
        b.n = p.done * p.steps + p.step
        b.set_postfix_str(f"image {min(p.done + 1, p.total)}/{p.total}", refresh=False)
        b.refresh()

    def close():
        if bar["bar"] is not None:
            bar["bar"].close()

    return on_progress, close


@main.command()
@click.option("-p", "--prompt", required=True, help='Text prompt; weighted parts like "a:1|b:-0.5".')
@click.option("--n", "n", default=1, show_default=True, type=int, help="How many images.")
@click.option("--model", default="uncond-256", show_default=True, help="Diffusion preset (uncond-256, tiny).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Local weights for the preset's architecture.")
@click.option("--clip", "clip_model", help="CLIP preset or open_clip MODEL/TAG (default: the preset's).")
@click.option("--image-prompt", "image_prompts", multiple=True, help="Image file or gallery id as a target, PATH[:W].")
@click.option("--init", "init_image", help="Init image file or gallery id.")
@click.option("--skip-steps", "skip_timesteps", default=0, type=int, help="Steps to skip with --init.")
@click.option("--seed", type=int, help="Seed of the first image (image i gets seed+i); random if unset.")
@click.option("--steps", default=None, type=int, help="Sampling steps (timestep respacing).")
@click.option("--method", default="ddpm", show_default=True, help="ddpm or ddim.")
@click.option("--eta", default=0.0, type=float, help="DDIM eta.")
@click.option("--guidance-scale", "clip_guidance_scale", default=None, type=float, help="CLIP guidance scale.")
@click.option("--tv-scale", default=None, type=float, help="Smoothness (total variation) loss scale.")
@click.option("--range-scale", default=None, type=float, help="Out-of-range loss scale.")
@click.option("--cutn", default=None, type=int, help="Random cutouts per step.")
@click.option("--cut-pow", default=0.5, show_default=True, type=float, help="Cutout size power.")
@click.option("--clip-denoised/--no-clip-denoised", default=None, help="Clamp the x0 prediction (default: off; on for tiny).")
@click.option("--precision", default="auto", show_default=True, help="auto, fp32, bf16 or fp16.")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Images sampled together.")
@click.option("--save-every", type=int, help="Keep a frame every k steps for the animation.")
@click.option("--queue", is_flag=True, help="Only queue the job, for a worker to run.")
@click.option("--new", is_flag=True, help="Start a new job even if an identical one is unfinished.")
@device_option
@pass_ctx
@fail_cleanly
def generate(c: Ctx, n, seed, save_every, queue, new, device, **settings):
    """Generate N images for a prompt (resumes an identical unfinished job).

    Example: python cli.py generate -p "a red circle on a white background" --model tiny --n 8
    """
    from gallery.recipe import Recipe
    from generate.jobs import MAX_N, check_recipe, resolve_precision
    from generate.models import pick_device
    from generate.presets import diffusion_preset

    if not 1 <= n <= MAX_N:
        raise click.ClickException(f"--n must be from 1 to {MAX_N}, not {n}")
    if seed is not None and not 0 <= seed < 2 ** 62:
        raise click.ClickException(f"seed must be a whole number from 0 to 2**62, not {seed}")
    if save_every is not None and save_every < 1:
        raise click.ClickException(f"--save-every must be at least 1, not {save_every}")
    preset = diffusion_preset(settings["model"])
    defaults = TINY_DEFAULTS if preset.name == "tiny" else {}
    for key, value in defaults.items():
        if settings.get(key) is None:
            settings[key] = value
    settings = {k: v for k, v in settings.items() if v is not None}
    settings["image_prompts"] = tuple(settings.get("image_prompts", ()))
    recipe = Recipe(**settings, seed=0)
    recipe = check_recipe(recipe, c.instance, c.existing_store())
    resolve_precision(recipe.precision, pick_device(device))
    store = c.store()
    params = {"save_every": save_every} if save_every else {}
    job = None if new else store.find_unfinished_job("generate", recipe.to_json(), n, seed, params)
    if job is not None:
        click.echo(f"resuming job {job.id}: {job.done}/{job.n} images already done", err=True)
        job_id = job.id
    else:
        seed = secrets.randbelow(2 ** 31) if seed is None else seed
        job_id = store.create_job("generate", recipe.to_json(), n, seed, params, steps=recipe.steps)
        click.echo(f"job {job_id}: {n} image(s) of {recipe.prompt!r}, seeds {seed}..{seed + n - 1}", err=True)
    if queue:
        click.echo(job_id)
        return
    _run_job(c, store, job_id, device)


# Settings that suit the tiny preset when the user gives none (the notebook defaults suit the 256 model).
TINY_DEFAULTS = dict(steps=50, clip_guidance_scale=300.0, tv_scale=0.0, range_scale=0.0, cutn=8, clip_denoised=True)


def _run_job(c: Ctx, store, job_id: int, device: str) -> None:
    from generate.jobs import JobRunner

    on_progress, close = _progress_printer(store.get_job(job_id).n)
    models = c.models()
    try:
        status = JobRunner(store, models, device, on_progress=on_progress).run(job_id)
    finally:
        close()
        models.close()
    job = store.get_job(job_id)
    click.echo(f"job {job_id}: {status}, {job.done}/{job.n} images in {c.instance / 'images'}", err=True)
    if status != "done":
        raise click.ClickException(f"job {job_id} {status}")


@main.command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty.")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between looks at an empty queue.")
@device_option
@pass_ctx
@fail_cleanly
def worker(c: Ctx, once, poll, device):
    """Run queued jobs, and resume jobs whose worker died.

    Example: python cli.py worker --once
    """
    from generate.worker import Worker

    on_progress, close = _progress_printer(0)
    models = c.models()
    w = Worker(c.store(), models, device, on_progress=on_progress, on_event=lambda m: click.echo(m, err=True))
    try:
        w.run(once=once, poll_s=poll)
    except KeyboardInterrupt:
        click.echo("worker stopped; running jobs resume on the next start", err=True)
    finally:
        close()
        models.close()


@main.command()
@click.option("--status", help="Only jobs with this status.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
@fail_cleanly
def jobs(c: Ctx, status, limit, as_json):
    """List jobs, newest first.

    Example: python cli.py jobs --status running
    """
    store = c.existing_store()
    for j in store.list_jobs(status, limit) if store else []:
        recipe = json.loads(j.recipe)
        if as_json:
            click.echo(json.dumps({"id": j.id, "kind": j.kind, "status": j.status, "done": j.done, "n": j.n,
                                   "prompt": recipe.get("prompt"), "error": j.error, "created": j.created}))
        else:
            line = f"{j.id:>5}  {j.kind:<8} {j.status:<9} {j.done:>4}/{j.n:<4} {recipe.get('prompt', '')[:60]}"
            click.echo(line + (f"  ({j.error})" if j.error else ""))


@main.command()
@click.argument("image_id", type=int)
@pass_ctx
@fail_cleanly
def show(c: Ctx, image_id):
    """Show an image's file, recipe and lineage.

    Example: python cli.py show 12
    """
    from generate.errors import ImageNotFound

    store = c.existing_store()
    if store is None:
        raise ImageNotFound(f"image {image_id} doesn't exist")
    row = store.get_image(image_id)
    click.echo(f"image {row['id']}  job {row['job_id']} #{row['idx']}  seed {row['seed']}  "
               f"{row['width']}x{row['height']}  {'starred' if row['starred'] else ''}".rstrip())
    click.echo(f"file: {c.instance / row['path']}")
    if row["animation_path"]:
        click.echo(f"animation: {c.instance / row['animation_path']}")
    if row["parent_id"]:
        click.echo(f"parent: {row['parent_id']}")
    click.echo(f"models: {row['model']} + {row['clip_model']}  on {row['device']}")
    click.echo("recipe: " + json.dumps(json.loads(row["recipe"]), indent=2, sort_keys=True))


@main.command()
@click.argument("source")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the new PNG.")
@device_option
@pass_ctx
@fail_cleanly
def reproduce(c: Ctx, source, out, device):
    """Regenerate an image from its recipe: a gallery id, or any PNG clip-curator wrote.

    Example: python cli.py reproduce 12 -o again.png
    """
    import numpy as np
    from PIL import Image

    from gallery.recipe import png_info, read_png_recipe
    from generate.errors import BadRequest
    from generate.files import write_png
    from generate.jobs import Generator, check_recipe, to_uint8
    from generate.models import pick_device

    store = c.existing_store()
    if source.isdigit():
        if store is None:
            raise BadRequest(f"image {source} doesn't exist")
        row = store.get_image(int(source))
        original = c.instance / row["path"]
    else:
        original = Path(source)
    recipe, extra = read_png_recipe(original)
    recipe = check_recipe(recipe, c.instance, store)
    models = c.models()
    try:
        gen = Generator(recipe, models, pick_device(device), store)
        pixels = to_uint8(gen.run([recipe.seed]))[0]
    finally:
        models.close()
    out = out or original.with_name(original.stem + "-reproduced.png")
    write_png(Image.fromarray(pixels), out, png_info(recipe, extra))
    with Image.open(original) as im:
        before = np.asarray(im.convert("RGB"))
    diff = int(np.abs(before.astype(int) - pixels.astype(int)).max()) if before.shape == pixels.shape else None
    verdict = "identical pixels" if diff == 0 else f"max pixel difference {diff}"
    click.echo(f"{out}: {verdict}")


@main.command()
@click.option("--n", "n", default=8, show_default=True, type=int, help="Images in the demo job.")
@click.option("--seed", default=0, show_default=True, type=int)
@device_option
@pass_ctx
@fail_cleanly
def demo(c: Ctx, n, seed, device):
    """Offline demo: a job on the tiny preset, with animations, into the instance folder.

    Example: python cli.py demo --n 8
    """
    ctx = click.get_current_context()
    # click fills every other option of `generate` with its declared default.
    ctx.invoke(generate, prompt="a red circle on a blue background", n=n, model="tiny", seed=seed,
               device=device, save_every=1)
    store = c.store()
    job = store.list_jobs(limit=1)[0]
    for row in store.images_for_job(job.id):
        click.echo(f"{row['id']:>5}  {c.instance / row['path']}  {c.instance / row['animation_path']}")


def _searcher(c: Ctx, store):
    from search.embed import Embedder, search_clip_name
    from search.query import Searcher

    models = c.models()
    clip = models.clip(search_clip_name(store, c.instance), _cpu_or_auto())
    return Searcher(store, Embedder(clip), c.instance / "index")


def _cpu_or_auto():
    from generate.models import pick_device

    return pick_device("auto")


@main.command()
@click.argument("query", required=False)
@click.option("--like", "like_id", type=int, help="Images like this gallery image instead of a text query.")
@click.option("-k", "k", default=12, show_default=True, help="Results per page.")
@click.option("--page", default=1, show_default=True, help="Page of results (1 is the best).")
@click.option("--starred", is_flag=True, help="Only starred images.")
@click.option("--job", "job_id", type=int, help="Only images of this job.")
@click.option("--since", help="Only images created at or after this date (YYYY-MM-DD).")
@click.option("--until", help="Only images created before this date (YYYY-MM-DD).")
@click.option("--keyword", help="Only images whose prompt contains these words.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
@pass_ctx
@fail_cleanly
def search(c: Ctx, query, like_id, k, page, starred, job_id, since, until, keyword, as_json):
    """Search the gallery with CLIP by phrase, text arithmetic, or likeness to an image.

    Example: python cli.py search '"owl" + "watercolor" - "photo"' --starred -k 12
    """
    from generate.errors import BadRequest
    from search.query import Filters

    if (query is None) == (like_id is None):
        raise BadRequest("give a query phrase or --like ID (one of them)")
    if page < 1:
        raise BadRequest(f"--page must be at least 1, not {page}")
    store = c.existing_store()
    if store is None:
        return
    searcher = _searcher(c, store)
    filters = Filters(starred=starred, job_id=job_id, since=since, until=until, keyword=keyword)
    offset = (page - 1) * k
    hits = (searcher.like(like_id, k, offset, filters) if like_id is not None
            else searcher.text(query, k, offset, filters))
    for h in hits:
        if as_json:
            click.echo(json.dumps({"id": h.id, "score": round(h.score, 4), "prompt": h.row["prompt"],
                                   "path": str(c.instance / h.row["path"]), "starred": bool(h.row["starred"])}))
        else:
            star = "*" if h.row["starred"] else " "
            click.echo(f"{h.id:>6} {star} {h.score:+.3f}  {h.row['prompt'][:50]:<50}  {c.instance / h.row['path']}")


@main.command()
@click.option("--rebuild", is_flag=True, help="Rebuild the vector index from the database.")
@pass_ctx
@fail_cleanly
def index(c: Ctx, rebuild):
    """Embed images that lack a search embedding and bring the vector index up to date.

    Example: python cli.py index --rebuild
    """
    from tqdm import tqdm

    store = c.store()
    searcher = _searcher(c, store)
    emb = searcher.embedder
    todo = store.images_without_embedding(emb.id)
    if todo:
        with tqdm(total=len(todo), unit="img", desc="embedding", file=sys.stderr) as bar:
            vecs = emb.files([c.instance / r["path"] for r in todo], progress=bar.update)
        good = [(r["id"], v) for r, v in zip(todo, vecs) if not isinstance(v, Exception)]
        for r, v in zip(todo, vecs):
            if isinstance(v, Exception):
                click.echo(f"skipped image {r['id']}: {v}", err=True)
        store.put_embeddings(emb.id, good)
    total = store.embedding_stats(emb.id)[0]
    with tqdm(total=total, unit="vec", desc="indexing", file=sys.stderr) as bar:
        searcher.index.sync(force_rebuild=rebuild, progress=bar.update)
    click.echo(f"{total} images indexed for {emb.id} ({searcher.index.kind} search)")


@main.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@pass_ctx
@fail_cleanly
def import_(c: Ctx, folder):
    """Import a folder of PNG/JPEG/WebP images (new or changed files only).

    Example: python cli.py import ~/old-generations
    """
    from tqdm import tqdm

    from search.importer import import_folder

    store = c.store()
    searcher = _searcher(c, store)
    total = sum(1 for p in folder.rglob("*") if p.is_file())
    with tqdm(total=total, unit="file", desc="importing", file=sys.stderr) as bar:
        report = import_folder(store, searcher.embedder, c.instance, folder, progress=bar.update)
    for path, why in report.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo(f"imported {len(report.added)} new, {len(report.updated)} changed, {report.unchanged} unchanged, "
               f"{len(report.skipped)} skipped")


@main.command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
@click.option("--off", is_flag=True, help="Remove the star instead.")
@pass_ctx
@fail_cleanly
def star(c: Ctx, image_ids, off):
    """Star images (or unstar them with --off).

    Example: python cli.py star 12 15
    """
    store = c.store_with_images(image_ids)
    for image_id in image_ids:
        store.star(image_id, not off)
    click.echo(f"{'unstarred' if off else 'starred'} {len(image_ids)} image(s)")


@main.command()
@click.argument("image_ids", type=int, nargs=-1, required=True)
@pass_ctx
@fail_cleanly
def delete(c: Ctx, image_ids):
    """Delete images (rows, files and embeddings).

    Example: python cli.py delete 12 13
    """
    store = c.store_with_images(image_ids)
    for image_id in image_ids:
        for rel in store.delete_image(image_id):
            (c.instance / rel).unlink(missing_ok=True)
        click.echo(f"deleted image {image_id}")


@main.command()
@click.argument("image_ids", type=int, nargs=-1)
@click.option("--starred", is_flag=True, help="Every starred image not yet upscaled by this model.")
@click.option("--model", default="x4plus", show_default=True, help="x4plus, x4plus-anime or compact.")
@click.option("--queue", is_flag=True, help="Only queue the job, for a worker to run.")
@pass_ctx
@fail_cleanly
def upscale(c: Ctx, image_ids, starred, model, queue):
    """Upscale images 4x with Real-ESRGAN, keeping their recipes (skips ones already upscaled).

    Example: python cli.py upscale --starred
    """
    from gallery.actions import queue_upscale
    from generate.errors import BadRequest, ImageNotFound
    from generate.upscale_jobs import UpscaleRunner

    if not image_ids and not starred:
        raise BadRequest("name image ids or use --starred")
    store = c.existing_store()
    if store is None:
        if image_ids:
            raise ImageNotFound(f"image {image_ids[0]} doesn't exist")
        click.echo("nothing to upscale")
        return
    ids = list(image_ids) + (store.starred_ids() if starred else [])
    job_id = queue_upscale(store, ids, model)
    if job_id is None:
        click.echo("nothing to upscale: every image already has a " + model + " upscale")
        return
    if queue:
        click.echo(job_id)
        return
    from tqdm import tqdm

    n = store.get_job(job_id).n
    runner = UpscaleRunner(store, c.instance)
    with tqdm(total=n, unit="img", desc=f"upscale job {job_id}", file=sys.stderr) as bar:
        runner.on_progress = lambda p: setattr(bar, "n", p.done) or bar.refresh()
        try:
            status = runner.run(job_id)
        finally:
            runner.close()
        bar.n = store.get_job(job_id).done
        bar.refresh()
    for row in store.images_for_job(job_id):
        click.echo(f"{row['parent_id']:>6} -> {row['id']:>6}  {row['width']}x{row['height']}  {c.instance / row['path']}")
    if status != "done":
        raise click.ClickException(f"job {job_id} {status}")


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (others need a password).")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-worker", is_flag=True, help="Serve only; run jobs with a separate `cli.py worker`.")
@device_option
@pass_ctx
@fail_cleanly
def serve(c: Ctx, host, port, no_worker, device):
    """Serve the gallery site, with a worker for the queue unless --no-worker.

    Example: python cli.py serve --port 8080
    """
    import threading

    from gallery import create_app
    from generate.errors import BadRequest

    app = create_app({"INSTANCE": str(c.instance)})
    if host not in LOOPBACK and not app.config.get("PASSWORD_HASH"):
        raise BadRequest(f"refusing to serve on {host} without a password: run `cli.py set-password` first, "
                         "or bind to 127.0.0.1")
    if not no_worker:
        from gallery.store import Store
        from generate.worker import Worker

        models = c.models()
        worker = Worker(Store(c.db_path), models, device, on_event=lambda m: click.echo(m, err=True))
        threading.Thread(target=worker.run, name="worker", daemon=True).start()
    click.echo(f"clip-curator on http://{host}:{port}/ (instance {c.instance})", err=True)
    app.run(host=host, port=port, threaded=True, use_reloader=False)


@main.command("set-password")
@click.password_option()
@pass_ctx
@fail_cleanly
def set_password_(c: Ctx, password):
    """Set the password the site asks for (needed to serve beyond this machine).

    Example: python cli.py set-password
    """
    from gallery.auth import set_password

    if len(password) < 8:
        raise click.ClickException("the password must be at least 8 characters long")
    c.instance.mkdir(parents=True, exist_ok=True)
    set_password(c.instance, password)
    click.echo("password set; restart `cli.py serve` for it to take effect")


if __name__ == "__main__":
    main()
