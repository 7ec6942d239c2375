"""The gallery: the Flask site (``create_app``), the store and recipes."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def _secret_key(instance: Path) -> str:
    """A per-instance random key, created once and kept private in the instance folder."""
    path = instance / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key
    except OSError:
        return secrets.token_hex(32)


def create_app(test_config: dict | None = None):
    """Build the Flask app; ``test_config`` overrides settings (tests point INSTANCE at tmp_path)."""
    from flask import Flask

    from search.embed import read_config

    default_instance = os.environ.get("CLIP_CURATOR_INSTANCE") or str(Path(__file__).resolve().parent.parent
                                                                       / "instance")
    instance = Path((test_config or {}).get("INSTANCE", default_instance)).resolve()
    instance.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=str(instance))
    config = read_config(instance)
    app.config.from_mapping(
        INSTANCE=str(instance),
        DATABASE=str(instance / "gallery.db"),
        PASSWORD_HASH=config.get("password_hash"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PAGE_SIZE=60,
        THUMB_SIZE=256,
        MAX_CONTENT_LENGTH=1 << 20,
    )
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(instance)

    from . import api, auth, browse, images, jobs, security, web

    web.init_app(app)
    security.init_app(app)
    for module in (auth, browse, images, jobs, api):
        app.register_blueprint(module.bp)
    return app
