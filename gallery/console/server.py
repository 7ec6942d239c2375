"""Commands that run the site: serve it, and set its password."""
from __future__ import annotations

import click

from gallery.errors import BadRequest
from gallery.store import Store

from .base import Ctx, command, device_option, ray_executor, ray_options

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (others need a password).")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-worker", is_flag=True, help="Serve only; run jobs with a separate `clip-curator worker`.")
@click.option("--behind-proxy", is_flag=True, help="Trust X-Forwarded-For/-Proto/-Host from a local TLS proxy.")
@device_option
@ray_options
def serve(c: Ctx, host, port, no_worker, behind_proxy, device, ray_address, cpus_per_actor, actors):
    """Serve the gallery site (waitress), with a worker for the queue unless --no-worker.

    Example: clip-curator serve --port 8080
    """
    from gallery.web import create_app
    from gallery.web.server import serve as run

    app = create_app({"INSTANCE": str(c.instance.root), "BEHIND_PROXY": behind_proxy})
    if host not in LOOPBACK and not c.instance.config().password_hash:
        raise BadRequest(f"refusing to serve on {host} without a password: run `clip-curator set-password` "
                         "first, or bind to 127.0.0.1")
    worker, executor = None, None
    if not no_worker:
        from generate.queue import Worker

        # Joined here, on the main thread, so a wrong address is one line before anything is served.
        executor = ray_executor(ray_address, cpus_per_actor, actors)
        if executor is not None:
            executor.check(device)
        worker = Worker.standard(Store(c.instance.db_path), c.instance, c.models(), device,
                                 on_event=lambda m: click.echo(m, err=True), executor=executor)
    click.echo(f"instance {c.instance.root}", err=True)
    try:
        run(app, host, port, worker, log=lambda m: click.echo(m, err=True))
    finally:
        if executor is not None:
            executor.close()


@command(name="set-password")
@click.password_option()
def set_password_(c: Ctx, password):
    """Set the password the site asks for (needed to serve beyond this machine); ends every session.

    Example: clip-curator set-password
    """
    from gallery.web.auth import set_password

    set_password(c.instance, password)
    click.echo("password set; every logged-in session has been logged out")
