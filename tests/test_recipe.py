import dataclasses

import pytest
from PIL import Image

from gallery.errors import RecipeError
from gallery.recipe import Recipe, png_info, read_png_recipe


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
    (dict(init_image="x.png", skip_timesteps=200, steps=100), "less than steps"), (dict(batch_size=0), "batch_size"),
    (dict(prompt="a\x00b"), "without control characters"), (dict(prompt=5), "prompt must be"),
    (dict(image_prompts=5), "image_prompts must be"), (dict(model=["x"]), "model must be"),
    (dict(steps=True), "steps must be"), (dict(seed=2 ** 70), "seed must be"),
])
def test_validate_names_the_bad_setting(change, words):
    with pytest.raises(RecipeError, match=words) as e:
        dataclasses.replace(Recipe(prompt="a fish"), **change).validate()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("payload, words", [
    ({"prompt": 5}, "prompt must be"), ({"prompt": "x", "image_prompts": 5}, "image_prompts must be"),
    ({"prompt": "x", "model": ["a"]}, "model must be"), ({"prompt": "x", "steps": "many"}, "steps must be"),
    (["not", "a", "dict"], "not a clip-curator recipe"), ({"seed": 1}, "not a clip-curator recipe"),
])
def test_recipe_chunks_of_the_wrong_types_are_refused_in_one_line(tmp_path, payload, words):
    import json

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("clip-curator:recipe", json.dumps(payload))
    path = tmp_path / "bad.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(RecipeError, match=words) as e:
        read_png_recipe(path)
    assert "\n" not in str(e.value)


def test_json_is_stable_and_ignores_unknown_keys():
    r = Recipe(prompt="a fish", seed=3)
    assert Recipe.from_json(r.to_json()) == r
    d = r.to_dict() | {"from_the_future": 1}
    assert Recipe.from_dict(d) == r


def test_the_tiny_defaults_come_from_the_preset_wherever_a_recipe_is_made():
    from generate.diffusion import complete
    from generate.presets import TINY_32, UNCOND_256

    tiny, big = complete(Recipe(prompt="x", model="tiny")), complete(Recipe(prompt="x"))
    for name, value in TINY_32.defaults.items():
        assert getattr(tiny, name) == value
    assert tiny.clip_model == "tiny" and big.clip_model == "vit-b-16"
    assert (tiny.steps, big.steps) == (50, 100) and tiny.clip_denoised and not big.clip_denoised
    assert big.clip_guidance_scale == UNCOND_256.defaults["clip_guidance_scale"]
    # What the user sets wins over the preset.
    assert complete(Recipe(prompt="x", model="tiny", steps=7)).steps == 7
