import dataclasses

import pytest
from PIL import Image

from gallery.recipe import Recipe, RecipeError, png_info, read_png_recipe


def test_png_chunk_round_trip(tmp_path):
    r = Recipe(prompt='a "quoted" <b>owl</b>:1|watercolor:0.5', model="tiny", seed=42, steps=30,
               image_prompts=("7:0.5",))
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(r, {"job": 3}))
    back, extra = read_png_recipe(path)
    assert back == r
    assert extra == {"job": 3}


def test_png_without_recipe_is_refused(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(RecipeError, match="carries no clip-curator recipe"):
        read_png_recipe(path)


@pytest.mark.parametrize("change, words", [
    (dict(steps=0), "steps"), (dict(steps=10 ** 6), "steps"), (dict(cutn=-1), "cutn"),
    (dict(clip_guidance_scale=float("inf")), "clip_guidance_scale"), (dict(seed=-1), "seed"),
    (dict(method="euler"), "method"), (dict(skip_timesteps=5), "init image"),
    (dict(init_image="x.png", skip_timesteps=200), "less than steps"), (dict(batch_size=0), "batch_size"),
    (dict(prompt="a:b"), "malformed weight"),
])
def test_validate_names_the_bad_setting(change, words):
    with pytest.raises(RecipeError, match=words):
        dataclasses.replace(Recipe(prompt="a fish"), **change).validate()


def test_json_is_stable_and_ignores_unknown_keys():
    r = Recipe(prompt="a fish", seed=3)
    assert Recipe.from_json(r.to_json()) == r
    d = r.to_dict() | {"from_the_future": 1}
    assert Recipe.from_dict(d) == r
