"""Shared fixtures: a temp instance folder, its store, the tiny models, the CLI runner."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach for the network: weight lookups fail fast instead of probing hosts.
    monkeypatch.setenv("CLIP_CURATOR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def instance(tmp_path) -> Path:
    path = tmp_path / "instance"
    path.mkdir()
    return path


@pytest.fixture
def store(instance):
    from gallery.store import Store

    s = Store(instance / "gallery.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny models loaded once for the whole session (they are read-only)."""
    from generate.models import ModelCache

    cache = ModelCache(tmp_path_factory.mktemp("models-instance"), progress=False)
    yield cache
    cache.close()


@pytest.fixture
def cli(instance):
    """Invoke the real click CLI in-process on the temp instance; returns the Result."""
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["--instance", str(instance), *map(str, args)], catch_exceptions=False)

    return invoke


def tiny_recipe(prompt="a red circle on a white background", **kw):
    """The tiny preset's recipe with the CLI's tiny defaults."""
    from cli import TINY_DEFAULTS
    from gallery.recipe import Recipe

    settings = {**TINY_DEFAULTS, **kw}
    return Recipe(prompt=prompt, model="tiny", **settings)
