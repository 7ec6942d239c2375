"""What every command shares: the instance and its store, one-line errors, shared options.

The commands import the machine-learning side (torch, open_clip, ncnn) only inside the commands
that use it, so ``clip-curator --help`` and the light commands start in a fraction of a second.
"""
from __future__ import annotations

import functools
import sys

import click

from gallery.errors import BadRequest, CuratorError, ImageNotFound
from gallery.instance import Instance
from gallery.store import Store


class Group(click.Group):
    """A click group whose usage errors are one line too (``Error: ...``, exit code 2)."""

    def main(self, *args, **kwargs):
        """Run the CLI, printing a usage error as one line instead of a usage screen."""
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.UsageError as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)


class Ctx:
    """What every command needs: the instance, and the store and models opened on demand."""

    def __init__(self, instance: Instance):
        self.instance = instance
        self._store = None

    def store(self):
        """The gallery store (created on first use)."""
        if self._store is None:
            self._store = Store(self.instance.db_path)
        return self._store

    def existing_store(self):
        """The store if the database exists, else None (read-only commands create nothing)."""
        return self.store() if self.instance.db_path.exists() else None

    def images(self, image_ids):
        """The store and the rows of these ids, every one of which must exist (else nothing changes)."""
        store = self.existing_store()
        if store is None:
            raise ImageNotFound(f"image {image_ids[0]} doesn't exist")
        return store, store.require_images(list(image_ids))

    def models(self):
        """A model cache that may download what a command needs, with progress bars."""
        from generate.models import ModelCache

        return ModelCache(self.instance, progress=True, fetch=True)


pass_ctx = click.make_pass_decorator(Ctx)


def command(**kwargs):
    """A command that gets the Ctx and turns domain errors into one line (exit code 1)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kw):
            try:
                return fn(*args, **kw)
            except CuratorError as e:
                raise click.ClickException(str(e)) from None
        return click.command(**kwargs)(pass_ctx(run))
    return wrap


def device_option(f):
    """The --device option."""
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(f)


def ray_options(f):
    """--ray [ADDRESS], --cpus-per-actor and --actors: run the queue's images on a Ray cluster."""
    f = click.option("--actors", type=click.IntRange(min=1), help="At most this many Ray actors (default: one per "
                     "GPU, or per --cpus-per-actor CPUs on CPU-only clusters).")(f)
    f = click.option("--cpus-per-actor", default=1, show_default=True, type=click.IntRange(min=1),
                     help="CPUs each Ray actor uses on CPU-only clusters.")(f)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                        help="Make images on a Ray cluster: HOST:PORT of `ray start --head` (or 'auto'); "
                             "without an address, a local one on this machine.")(f)


def ray_executor(ray_address, cpus_per_actor=1, actors=None):
    """The Ray executor for these options, connected; None when --ray was not given (nothing imported)."""
    if ray_address is None:
        return None
    from generate.queue.executors import ray_executor as connect

    return connect(ray_address, cpus_per_actor=cpus_per_actor, max_actors=actors)


def progress_bar(unit: str = "step"):
    """(on_progress, close): a tqdm bar over all steps of a job, fed by a runner's Progress reports."""
    from tqdm import tqdm

    bar = {}

    def on_progress(p):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=p.total * p.steps, unit=unit, desc=f"job {p.job_id}", file=sys.stderr,
                              dynamic_ncols=True)
        b = bar["bar"]
        b.n = p.done * p.steps + p.step
        b.set_postfix_str(f"image {min(p.done + 1, p.total)}/{p.total}", refresh=False)
        b.refresh()

    return on_progress, lambda: bar and bar["bar"].close()


def need(condition: bool, message: str) -> None:
    """BadRequest(message) unless condition holds."""
    if not condition:
        raise BadRequest(message)
