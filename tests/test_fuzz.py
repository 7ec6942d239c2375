"""Fuzzing the boundaries: JSON API bodies, query strings and recipe chunks never give a 500 or a
traceback, and a rejected request writes nothing."""
import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from conftest import new_image, tiny_recipe
from gallery.errors import CuratorError, RecipeError
from gallery.recipe import Recipe, read_png_recipe

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FIELDS = ["prompt", "n", "init_strength", "image_prompt_weight", "model", "starred", "steps", "seed", "cutn",
          "image_prompts", "init_image", "clip_model", "method", "precision", "batch_size", "eta", "version"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 80, max_value=2 ** 80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["x4plus", "compact", "tiny", "ddim", "nan", "1e309", "\x00", "-1", "12"]))
json_values = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=3),
                                                               st.dictionaries(st.text(max_size=8), children,
                                                                               max_size=3)), max_leaves=6)
bodies = st.one_of(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4), json_values)
query_keys = st.sampled_from(["before", "starred", "job", "keyword", "q", "page", "like", "k", "limit", "x"])
query_values = st.one_of(st.text(alphabet=string.printable, max_size=30), st.integers(-2 ** 70, 2 ** 70).map(str),
                         st.sampled_from(["", "1", "0", "1e30", "nan", "-0", "9223372036854775808"]))


@pytest.fixture(scope="module")
def site(tmp_path_factory, models):
    from gallery.store import Store
    from gallery.web import create_app

    root = tmp_path_factory.mktemp("fuzz") / "instance"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 20, 20)).save(root / "images" / "a.png")
    with Store(root / "gallery.db") as store:
        store.add_image(new_image(path="images/a.png", recipe_json=tiny_recipe().to_json(), prompt="a red circle"))
    app = create_app({"INSTANCE": str(root), "TESTING": True}, models=models)
    client = app.test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    return {"client": client, "token": token, "db": root / "gallery.db"}


def _state(db):
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT (SELECT COUNT(*) FROM jobs), (SELECT group_concat(starred) FROM images), "
                            "(SELECT COUNT(*) FROM images)").fetchone()
    finally:
        conn.close()


def _check(response):
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    if response.status_code >= 400 and response.mimetype == "application/json":
        error = response.get_json()["error"]
        assert isinstance(error, str) and "\n" not in error


@FUZZ
@given(endpoint=st.sampled_from(["images/1/star", "images/1/upscale", "images/1/regenerate", "jobs/1/cancel",
                                 "images/99999999999999999999/star"]),
       body=bodies)
def test_api_bodies(site, endpoint, body):
    before = _state(site["db"])
    r = site["client"].post(f"/api/{endpoint}", data=json.dumps(body), content_type="application/json",
                            headers={"X-CSRF-Token": site["token"]})
    _check(r)
    if r.status_code >= 400:
        assert _state(site["db"]) == before


@FUZZ
@given(path=st.sampled_from(["/", "/favourites", "/api/images", "/api/search", "/image/1", "/jobs"]),
       params=st.dictionaries(query_keys, query_values, max_size=4))
def test_query_strings(site, path, params):
    _check(site["client"].get(path, query_string=params))


@FUZZ
@given(payload=st.one_of(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5).map(
    lambda d: {"prompt": "a red circle", **d}), json_values))
def test_recipe_chunks(tmp_path_factory, inst_for_fuzz, payload):
    from generate.diffusion import prepare

    path = tmp_path_factory.mktemp("chunk") / "r.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("clip-curator:recipe", json.dumps(payload))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    try:
        recipe, _ = read_png_recipe(path)
    except RecipeError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(recipe, Recipe)
    try:
        prepare(recipe, inst_for_fuzz)
    except CuratorError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def inst_for_fuzz(tmp_path_factory):
    from gallery.instance import Instance

    return Instance(tmp_path_factory.mktemp("fuzz-instance"))
