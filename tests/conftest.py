"""Shared fixtures: a temp instance folder, its store, the tiny models, the CLI runner."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("CLIP_CURATOR_ARTIFACTS", ROOT / "artifacts"))


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
def inst(instance):
    """The temp instance folder as the Instance object the library takes."""
    from gallery.instance import Instance

    return Instance(instance)


@pytest.fixture
def store(inst):
    from gallery.store import Store

    s = Store(inst.db_path)
    yield s
    s.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny models loaded once for the whole session (they are read-only)."""
    from gallery.instance import Instance
    from generate.models import ModelCache

    cache = ModelCache(Instance(tmp_path_factory.mktemp("models-instance")), progress=False)
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
    """A tiny-preset recipe, completed with the preset's defaults as a submitted job's is."""
    from gallery.recipe import Recipe
    from generate.diffusion import complete

    return complete(Recipe(prompt=prompt, model="tiny", **kw))


def new_image(job_id=None, idx=None, path=None, **kw):
    """A NewImage with the fields tests do not care about filled in."""
    from gallery.store import NewImage

    fields = dict(path=path or f"images/job{job_id or 0:06d}/{idx or 0:05d}.png", width=32, height=32,
                  recipe_json="{}", prompt="p", job_id=job_id, idx=idx, seed=idx)
    return NewImage(**{**fields, **kw})


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Debian's headless Chromium through its own chromedriver, shared by the browser tests."""
    from selenium import webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(fn, timeout=30.0, what="condition"):
    """Poll fn until it returns something true; fail after timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def no_alert(driver):
    """Whether no JavaScript alert is open."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def images_loaded(driver):
    """Whether every image shown on the page has loaded (hidden ones load lazily, when shown)."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => i.offsetParent !== null && i.getAttribute('src'))"
        ".every(i => i.complete && i.naturalWidth > 0)")


def cells(driver, visible=True):
    """The grid's cells (only those shown, unless visible=False)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, "#grid .cell")
    return [c for c in found if c.is_displayed()] if visible else found
