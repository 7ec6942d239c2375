"""Commands that make images: generate, the worker, jobs, reproduce, the demo, and model weights."""
from __future__ import annotations

import json
from pathlib import Path

import click

from gallery.errors import CuratorError
from gallery.recipe import Recipe
from gallery.store import JOB_STATUSES

from .base import Ctx, command, device_option, need, progress_bar, ray_executor, ray_options


@command()
@click.option("-p", "--prompt", required=True, help='Text prompt; weighted parts like "a:1|b:-0.5".')
@click.option("--n", "n", default=1, show_default=True, type=int, help="How many images.")
@click.option("--model", default="uncond-256", show_default=True,
              help="Model preset, which picks the generator (see `models`): guided diffusion (uncond-256, tiny), "
              "VQGAN-CLIP (vqgan-imagenet-16384, vqgan-tiny), SIREN+CLIP (siren, siren-tiny) or BigGAN+CLIP "
              "(biggan-deep-128/256/512, biggan-tiny).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Local weights for the preset's architecture.")
@click.option("--clip", "clip_model", help="CLIP preset or open_clip MODEL/TAG (default: the preset's).")
@click.option("--image-prompt", "image_prompts", multiple=True, help="Image file or gallery id as a target, PATH[:W].")
@click.option("--init", "init_image", help="Init image file or gallery id.")
@click.option("--skip-steps", "skip_timesteps", default=0, type=int, help="Steps to skip with --init.")
@click.option("--seed", type=int, help="Seed of the first image (image i gets seed+i); random if unset.")
@click.option("--steps", type=int, help="Sampling steps (timestep respacing; default: the preset's).")
@click.option("--method", default="ddpm", show_default=True, help="ddpm or ddim.")
@click.option("--eta", default=0.0, type=float, help="DDIM eta.")
@click.option("--guidance-scale", "clip_guidance_scale", type=float, help="CLIP guidance scale.")
@click.option("--tv-scale", type=float, help="Smoothness (total variation) loss scale.")
@click.option("--range-scale", type=float, help="Out-of-range loss scale.")
@click.option("--cutn", type=int, help="Random cutouts per step (every backend; default: the preset's).")
@click.option("--cut-pow", type=float, help="Cutout size power (every backend; default 0.5, or the preset's).")
@click.option("--iterations", type=int, help="SIREN, VQGAN and BigGAN: Adam iterations per image.")
@click.option("--lr", type=float, help="SIREN, VQGAN and BigGAN: Adam's learning rate.")
@click.option("--size", type=int, help="SIREN and VQGAN: the image's side in pixels.")
@click.option("--setting", "more_settings", multiple=True, metavar="KEY=VALUE",
              help="Another setting of SIREN, VQGAN or BigGAN: noise (VQGAN's init, 0-1), truncation (BigGAN), "
              "hidden and layers (SIREN), augment (true/false), frame_every.")
@click.option("--clip-denoised/--no-clip-denoised", default=None, help="Clamp the x0 prediction (default: the preset's).")
@click.option("--precision", default="auto", show_default=True, help="auto, fp32, bf16 or fp16.")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Images sampled together.")
@click.option("--save-every", type=int, help="Keep a frame every k steps for the animation.")
@click.option("--variations", type=click.Choice(["auto", "combinatorial", "random", "none"]), default="auto",
              show_default=True, help="Expand {a|b} and __wildcards__ in the prompt per image: every combination "
              "in turn, or drawn by each image's seed; auto is combinatorial when the prompt has any.")
@click.option("--modifiers", "modifier_names", help="Style modifiers to append, by name: artstation,oil (see `modifiers`).")
@click.option("--guides", default=0, show_default=True, type=int,
              help="Gallery images CLIP picks per image as image prompts, by similarity to the prompt.")
@click.option("--guide-pool", default="starred", show_default=True,
              help="Where guides come from: starred, all, rating:N or collection:NAME.")
@click.option("--guide-weight", default=1.0, show_default=True, type=float, help="Weight of each guide image.")
@click.option("--guide-init", default=0.0, show_default=True, type=float,
              help="Start from the closest guide, keeping this fraction (0-0.95) of the steps' worth of it.")
@click.option("--queue", is_flag=True, help="Only queue the job, for a worker to run.")
@click.option("--new", is_flag=True, help="Start a new job even if an identical one is unfinished.")
@device_option
@ray_options
def generate(c: Ctx, n, seed, save_every, queue, new, device, variations, modifier_names, iterations, lr, size,
             more_settings, ray_address, cpus_per_actor, actors, **settings):
    """Generate N images for a prompt (resumes an identical unfinished job).

    Example: clip-curator generate -p "a red circle on a white background" --model tiny --n 8

    With variations, modifiers and guides from your starred images:
    clip-curator generate -p "{castle|cathedral} at dusk" --modifiers oil,artstation --guides 2 --n 8

    Another generator: clip-curator generate -p "a red circle" --model vqgan-tiny --iterations 60 --lr 0.1
    """
    from generate.diffusion import resolve_precision
    from generate.modifiers import with_modifiers
    from generate.models import pick_device
    from generate.queue import check_job, record_job
    from generate.variations import resolve_mode

    settings, own = _backend_settings(settings, iterations, lr, size, more_settings)
    recipe = Recipe(**{**settings, "image_prompts": tuple(settings["image_prompts"]),
                       "variations": resolve_mode(variations, settings["prompt"]), "settings": own})
    recipe = with_modifiers(recipe, modifier_names, c.instance)
    if ray_address is None:  # on a cluster the actors' devices count, checked where they run
        resolve_precision(recipe.precision, pick_device(device))
    recipe, request = check_job(c.instance, recipe, {"n": n, "seed": seed, "save_every": save_every},
                                c.existing_store(), fetch=True)
    job = record_job(c.store(), recipe, request, resume=not new)
    if job.resumed:
        click.echo(f"resuming job {job.job_id}: {job.done}/{job.n} images already done", err=True)
    else:
        click.echo(f"job {job.job_id}: {n} image(s) of {recipe.prompt!r}, seeds {job.seed}..{job.seed + n - 1}"
                   + (f", {recipe.variations} variations" if recipe.variations != "none" else "")
                   + (f", {recipe.guides} guide image(s) each from {recipe.guide_pool}" if recipe.guides else ""),
                   err=True)
    if queue:
        click.echo(job.job_id)
        return
    try:
        executor = ray_executor(ray_address, cpus_per_actor, actors)
    except CuratorError as e:
        c.store().finish_job(job.job_id, "failed", f"{type(e).__name__}: {e}"[:500])
        raise
    _run_job(c, job.job_id, device, executor)


def _setting_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _backend_settings(settings: dict, iterations, lr, size, more: tuple) -> tuple[dict, dict]:
    """The recipe's fields and the optimising backend's own settings, from the command's options."""
    from generate.generators import DIFFUSION, backend_of

    own = {k: v for k, v in (("iterations", iterations), ("lr", lr), ("size", size)) if v is not None}
    for pair in more:
        key, eq, value = pair.partition("=")
        need(bool(eq and key.strip()), f"--setting takes KEY=VALUE, not {pair!r}")
        own[key.strip().replace("-", "_")] = _setting_value(value.strip())
    settings = {k: v for k, v in settings.items() if not (k == "cut_pow" and v is None)}
    if backend_of(settings["model"]) != DIFFUSION:  # cutouts are theirs too, among their own settings
        own.update({k: settings.pop(k) for k in ("cutn", "cut_pow") if settings.get(k) is not None})
    return settings, own


def _run_job(c: Ctx, job_id: int, device: str, executor=None) -> None:
    from generate.queue import GenerateRunner, StopSignal

    on_progress, close = progress_bar()
    models = c.models()
    try:
        if executor is None:
            runner = GenerateRunner(c.store(), c.instance, models, device, on_progress=on_progress)
        else:
            runner = executor.runners(c.store(), c.instance, models, device, on_progress, StopSignal())["generate"]
        status = runner.run(job_id)
    finally:
        close()
        models.close()
        if executor is not None:
            executor.close()
    job = c.store().get_job(job_id)
    click.echo(f"job {job_id}: {status}, {job.done}/{job.n} images in {c.instance.images_dir}", err=True)
    if status != "done":
        raise click.ClickException(f"job {job_id} {status}")


@command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty.")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between looks at an empty queue.")
@device_option
@ray_options
def worker(c: Ctx, once, poll, device, ray_address, cpus_per_actor, actors):
    """Run queued jobs, and resume jobs whose worker died; with --ray, on every GPU of a Ray cluster.

    Example: clip-curator worker --once
    Example: clip-curator worker --ray 10.0.0.1:6379
    """
    from generate.queue import Worker
    from generate.queue.worker import stop_on_signals

    executor = ray_executor(ray_address, cpus_per_actor, actors)
    on_progress, close = progress_bar()
    models = c.models()
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        if executor is not None:
            executor.check(device)
            log(f"Ray cluster: {executor.describe()}")
        w = Worker.standard(c.store(), c.instance, models, device, on_progress=on_progress, on_event=log,
                            executor=executor)
        with stop_on_signals(w, log):
            w.run(once=once, poll_s=poll)
    finally:
        close()
        models.close()
        if executor is not None:
            executor.close()
    log("worker stopped; an unfinished job resumes where it stopped")


@command()
@click.option("--status", help="Only jobs with this status (queued, running, done, failed, cancelled).")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs(c: Ctx, status, limit, as_json):
    """List jobs, newest first.

    Example: clip-curator jobs --status running
    """
    need(status is None or status in JOB_STATUSES, f"status must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
    store = c.existing_store()
    listed = store.list_jobs(status, limit) if store else []
    made_on = store.made_on([j.id for j in listed]) if store else {}
    for j in listed:
        where = made_on.get(j.id, [])
        if as_json:
            click.echo(json.dumps({"id": j.id, "kind": j.kind, "status": j.status, "done": j.done, "n": j.n,
                                   "prompt": j.prompt, "error": j.error, "created": j.created,
                                   "made_on": [{"node": n, "device": d, "images": k} for n, d, k in where]}))
        else:
            line = f"{j.id:>5}  {j.kind:<8} {j.status:<9} {j.done:>4}/{j.n:<4} {j.prompt[:60]}"
            line += f"  ({j.error})" if j.error else ""
            click.echo(line + ("  on " + ", ".join(f"{n} {d} x{k}" for n, d, k in where) if where else ""))


@command()
@click.argument("source")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the new PNG (default: the instance's reproduced/ folder).")
@device_option
def reproduce(c: Ctx, source, out, device):
    """Regenerate an image from its recipe: a gallery id, or any PNG clip-curator wrote.

    Example: clip-curator reproduce 12 -o again.png
    """
    from generate.reproduce import reproduce as run

    models = c.models()
    try:
        result = run(source, c.instance, c.existing_store(), models, device, out)
    finally:
        models.close()
    diff = result.max_difference
    click.echo(f"{result.path}: {'identical pixels' if diff == 0 else f'max pixel difference {diff}'}")


DEMO_MODELS = ("tiny", "vqgan-tiny")  # guided diffusion and VQGAN-CLIP, on the committed tiny models


@command()
@click.option("--n", "n", default=8, show_default=True, type=int, help="Images in each demo job.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--models", "models_", default=",".join(DEMO_MODELS), show_default=True,
              help="The presets to run, one job each (see `models`; the tiny ones need no download).")
@device_option
def demo(c: Ctx, n, seed, models_, device):
    """Offline demo: a job on each of two tiny presets (two generators), with animations, into the instance folder.

    Example: clip-curator demo --n 8
    """
    for model in [m.strip() for m in models_.split(",") if m.strip()]:
        # click fills every other option of `generate` with its declared default.
        click.get_current_context().invoke(generate, prompt="a red circle on a blue background", n=n, model=model,
                                           seed=seed, device=device, save_every=1 if model == "tiny" else 2)
        store = c.store()
        for row in store.images_for_job(store.list_jobs(limit=1)[0].id):
            click.echo(f"{row.id:>5}  {model:<12} {c.instance.root / row.path}  {c.instance.root / row.animation_path}")


@command()
@click.argument("model", required=False)
@click.option("--clip", "clip_model", help="A CLIP preset or open_clip MODEL/TAG to fetch as well.")
def fetch(c: Ctx, model, clip_model):
    """Download a model preset's weights (and its CLIP's) into the instance's model cache.

    Example: clip-curator fetch uncond-256
    """
    from generate.generators import fetch_weights
    from generate.presets import clip_spec
    from generate.weights import fetch_clip

    need(model is not None or clip_model is not None, "name a model preset, or --clip NAME")
    if model is not None:
        fetch_weights(Recipe(prompt="-", model=model, clip_model=clip_model), c.instance)
    else:
        fetch_clip(clip_spec(clip_model), c.instance)
    click.echo(f"weights are in {c.instance.models_dir}")


@command()
def models(c: Ctx):
    """List the model presets, their size, their default CLIP and whether their weights are here.

    Example: clip-curator models
    """
    from generate.presets import BACKEND_PRESETS, DIFFUSION_PRESETS
    from generate.weights import locate_backend, locate_diffusion

    for p in DIFFUSION_PRESETS.values():
        try:
            where = str(locate_diffusion(p, c.instance))
        except CuratorError:
            where = f"not downloaded (clip-curator fetch {p.name})"
        click.echo(f"{p.name:<20} diffusion {p.image_size}x{p.image_size}  clip {p.clip:<9} {p.description}\n"
                   f"{'':<20} weights: {where}")
    for p in BACKEND_PRESETS.values():
        size = p.config.get("output_dim") or p.defaults.get("size") or p.config.get("image_size")
        if p.weights is None:
            where = "none needed (only its CLIP's)"
        else:
            try:
                where = str(locate_backend(p, c.instance))
            except CuratorError:
                where = f"not downloaded (clip-curator fetch {p.name})"
        click.echo(f"{p.name:<20} {p.backend:<9} {size}x{size}  clip {p.clip:<9} {p.description}\n"
                   f"{'':<20} weights: {where}")
