"""Serving the site in production: waitress, with the worker alongside, and a clean shutdown.

The first Ctrl-C (or SIGTERM) stops accepting requests and lets the worker finish the image it is
making (its job goes back on the queue and resumes there next time); a second one abandons that
image at its next step. Request bodies over the limit are refused by waitress before they are
read, and the Server header names no versions.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable

from flask import Flask
from waitress.server import create_server

from generate.queue import Worker

from .context import EXTENSION

THREADS = 8


@contextmanager
def _interrupts(on_first: Callable[[], None], on_again: Callable[[], None]):
    # SIGTERM is treated like Ctrl-C; a second signal escalates.
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        if count[0] == 1:
            on_first()
            raise KeyboardInterrupt
        on_again()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def serve(app: Flask, host: str, port: int, worker: Worker | None = None,
          log: Callable[[str], None] = print) -> None:
    """Serve the app on host:port until interrupted, running the worker beside it if given."""
    server = create_server(app, host=host, port=port, threads=THREADS, ident="clip-curator",
                           max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
    thread = None
    if worker is not None:
        thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        thread.start()

    def first():
        log("stopping: finishing the current image (Ctrl-C again to abandon it)")
        if worker is not None:
            worker.stop()

    def again():
        log("abandoning the current image; its job resumes on the next start")
        if worker is not None:
            worker.stop(now=True)

    log(f"clip-curator on http://{server.effective_host}:{server.effective_port}/")
    with _interrupts(first, again):
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
