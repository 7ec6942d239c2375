"""Serving the site in production: waitress, with the worker alongside, and a clean shutdown.

The first Ctrl-C (or SIGTERM) stops accepting requests and lets the worker finish the image it is
making (its job goes back on the queue and resumes there next time); a second one abandons that
image at its next step. Request bodies over the limit are refused by waitress before they are
read, and the Server header names no versions.
"""
from __future__ import annotations

import threading
from typing import Callable

from flask import Flask
from waitress.server import create_server

from generate.queue import Worker
from generate.queue.worker import stop_on_signals

from .context import EXTENSION

THREADS = 8


def serve(app: Flask, host: str, port: int, worker: Worker | None = None,
          log: Callable[[str], None] = print) -> None:
    """Serve the app on host:port until interrupted, running the worker beside it if given."""
    server = create_server(app, host=host, port=port, threads=THREADS, ident="clip-curator",
                           max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
    thread = None
    if worker is not None:
        thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        thread.start()
    log(f"clip-curator on http://{server.effective_host}:{server.effective_port}/")
    with stop_on_signals(worker, log, interrupt=True):
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            if thread is not None:
                worker.stop()
                thread.join()
            app.extensions[EXTENSION].close()
    log("stopped")
