import pytest

from gallery.errors import BadRequest
from generate.prompts import parse_image_prompt, parse_prompt


def test_weighted_parts():
    parts = parse_prompt("a red fish:2|trending on artstation|blurry:-0.5")
    assert [(p.text, p.weight) for p in parts] == [("a red fish", 2.0), ("trending on artstation", 1.0),
                                                   ("blurry", -0.5)]


def test_escaped_colon_and_bar_are_text():
    parts = parse_prompt(r"ratio 16\:9 \| wide:0.5")
    assert [(p.text, p.weight) for p in parts] == [("ratio 16:9 | wide", 0.5)]


@pytest.mark.parametrize("bad, words", [
    ("", "empty"), ("   ", "empty"), ("a:x", "malformed weight"), ("a:1.2.3", "malformed weight"),
    ("a:", "malformed weight"), ("a||b", "empty prompt part"), ("a:1|b:-1", "add up to zero"),
    ("a:1:2", "more than one weight"), ("a:nan", "malformed weight"), ("a:1e9", "out of range"),
    ("x" * 5000, "limit"),
])
def test_bad_prompts_name_the_problem(bad, words):
    with pytest.raises(BadRequest, match=words):
        parse_prompt(bad)


def test_image_prompt_refs():
    assert parse_image_prompt("12").image_id == 12
    ref = parse_image_prompt("dir/owl.png:0.5")
    assert (ref.ref, ref.weight, ref.image_id) == ("dir/owl.png", 0.5, None)


def test_a_recipe_with_a_malformed_prompt_is_refused_before_anything_is_recorded(inst):
    from gallery.recipe import Recipe
    from generate.diffusion import prepare

    with pytest.raises(BadRequest, match="malformed weight"):
        prepare(Recipe(prompt="a:b", model="tiny"), inst)
    assert not inst.db_path.exists()
