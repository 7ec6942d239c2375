"""clip-curator's command line: generate, run the queue, search, curate, upscale and serve.

Every command works on one instance folder (``--instance``, or $CLIP_CURATOR_INSTANCE, default
./instance under the current directory) that holds the database, the images and the model cache.
Each command (in ``gallery.console``) parses its options, calls one library function and prints
the outcome; a ``CuratorError`` becomes one line (``Error: ...``) and exit code 1.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

from gallery.console import generation, library, prompting, server
from gallery.console.base import Ctx, Group
from gallery.instance import ENV_INSTANCE, Instance, default_root

__version__ = "0.1.0"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clip-curator")
@click.option("--instance", type=click.Path(file_okay=False, path_type=Path), envvar=ENV_INSTANCE,
              default=default_root, show_default="./instance", help="Folder holding all data.")
@click.pass_context
def main(ctx, instance: Path):
    """A gallery and curation server for CLIP-guided diffusion art.

    Example: clip-curator generate -p "beautiful colorful fish, trending on artstation" --n 100
    """
    # guided_diffusion's decorators warn about a torch API rename on import; users can do nothing about it.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"guided_diffusion\..*")
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.custom_(fwd|bwd).*")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "no pretrained weights" at WARNING
    ctx.obj = Ctx(Instance(instance))


for module in (generation, library, prompting, server):
    for name in sorted(vars(module)):
        if isinstance(getattr(module, name), click.Command):
            main.add_command(getattr(module, name))


if __name__ == "__main__":
    main()
