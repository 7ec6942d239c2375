"""Prompting from your own collection: collections, guide images CLIP picks, modifiers, variations, the report."""
import html
import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from conftest import new_image
from gallery.errors import BadRequest
from gallery.store import Filters, Store
from generate.modifiers import append
from generate.tiny.shapes import Drawing, draw

TINY = ["--model", "tiny", "--steps", "6"]


def _drawings(root, colour, n=4):
    folder = root / f"{colour}s"
    folder.mkdir()
    rng = random.Random(colour)
    for i, shape in enumerate(["square", "triangle", "circle", "star"][:n]):
        draw(Drawing(colour, shape, rng.choice(["white", "black"])), 32, rng).save(folder / f"{i}.png")
    return folder


def _redness(instance, row) -> float:
    a = np.asarray(Image.open(instance / row.path).convert("RGB")).astype(float)
    return float((a[..., 0] - a[..., 2]).mean())


@pytest.fixture
def drawn(cli, tmp_path, instance):
    """A gallery of imported red and blue drawings, each folder a collection of its own."""
    for colour in ("red", "blue"):
        done = cli("import", _drawings(tmp_path, colour))
        assert done.exit_code == 0 and f"in collection '{colour}s'" in done.output, done.output
    store = Store(instance / "gallery.db")
    yield store, set(store.ids_matching(Filters(collection="reds"))), set(store.ids_matching(Filters(collection="blues")))
    store.close()


def _guides(row) -> list[int]:
    return [int(g.split(":")[0]) for g in json.loads(row.recipe)["guide_images"]]


def test_guides_are_picked_by_clip_steer_the_image_and_reproduce_until_one_is_deleted(cli, instance, drawn):
    store, reds, blues = drawn
    assert len(reds) == len(blues) == 4
    red = cli("generate", *TINY, "-p", "a red circle", "--guides", 2, "--guide-pool", "all", "--guide-weight", 4,
              "--n", 3, "--seed", 7)
    assert red.exit_code == 0, red.output
    blue = cli("generate", *TINY, "-p", "a red circle", "--guides", 2, "--guide-pool", "collection:blues",
               "--guide-weight", 4, "--n", 3, "--seed", 7)
    assert blue.exit_code == 0, blue.output
    by_red, by_blue = store.images_for_job(1), store.images_for_job(2)
    for row in by_red:  # from the whole gallery, CLIP picks red drawings for a red prompt
        recipe = json.loads(row.recipe)
        assert len(_guides(row)) == 2 and set(_guides(row)) <= reds
        assert all(f"{g}:4" in recipe["image_prompts"] for g in _guides(row))
        assert all(g.split(":")[1] == store.get_image(int(g.split(":")[0])).sha256 for g in recipe["guide_images"])
    assert all(set(_guides(row)) <= blues for row in by_blue)
    assert [r.seed for r in by_red] == [r.seed for r in by_blue] == [7, 8, 9]
    gap = np.mean([_redness(instance, r) for r in by_red]) - np.mean([_redness(instance, r) for r in by_blue])
    assert gap > 20, gap  # the same seeds, steered by red drawings, come out redder

    chosen = by_red[0]
    again = cli("reproduce", chosen.id)
    assert again.exit_code == 0 and "identical pixels" in again.output, again.output
    from gallery.web import create_app

    page = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client().get(f"/image/{chosen.id}")
    text = page.get_data(as_text=True)
    assert "Guided by" in text and all(f'href="/image/{g}"' in text for g in _guides(chosen))

    gone = _guides(chosen)[0]
    assert cli("delete", gone).exit_code == 0
    refused = cli("reproduce", chosen.id)
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 1 and len(lines) == 1, refused.output
    assert f"guide image {gone} has since been deleted" in lines[0]


def test_collections_from_the_cli_and_the_site_filter_search_and_trash(cli, instance, drawn):
    store, reds, blues = drawn
    one_blue = min(blues)
    assert cli("collect", "favourite shapes", min(reds), one_blue).exit_code == 0
    listed = cli("collections").output
    assert re.search(r"4\s+blues", listed) and re.search(r"2\s+favourite shapes", listed)
    assert cli("collect", "favourite shapes", 999).output.strip() == "Error: image 999 doesn't exist"
    assert set(store.ids_matching(Filters(collection="Favourite Shapes"))) == {min(reds), one_blue}  # any case

    found = cli("search", "a blue star", "--collection", "reds", "--json")
    assert found.exit_code == 0 and {json.loads(line)["id"] for line in found.output.splitlines()} == reds
    assert cli("search", "a blue star", "--collection", "nope").output.strip() == \
        "Error: there is no collection named 'nope'"

    from gallery.web import create_app

    client = create_app({"INSTANCE": str(instance), "TESTING": True, "PAGE_SIZE": 50}).test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    post = lambda body: client.post("/api/images/bulk", json=body, headers={"X-CSRF-Token": token})  # noqa: E731
    added = post({"ids": sorted(blues), "action": "collect", "collection": "favourite shapes"})
    assert added.status_code == 200 and sorted(added.get_json()["ids"]) == sorted(blues - {one_blue})  # new ones only
    assert post({"ids": [min(reds), 999], "action": "collect", "collection": "other"}).status_code == 404
    assert "other" not in [c.name for c in store.collections()]
    grid = client.get("/?collection=favourite+shapes").get_data(as_text=True)
    shown = {int(i) for i in re.findall(r'data-id="(\d+)"', grid)}
    assert shown == blues | {min(reds)}
    assert post({"ids": added.get_json()["ids"], "action": "uncollect", "collection": "favourite shapes"}).status_code == 200
    assert set(store.ids_matching(Filters(collection="favourite shapes"))) == {min(reds), one_blue}

    store.reject([one_blue])
    assert cli("trash", "--empty").exit_code == 0
    assert set(store.ids_matching(Filters(collection="favourite shapes"))) == {min(reds)}


def test_variations_give_each_image_its_own_prompt_and_a_bad_template_queues_nothing(cli, instance, store):
    done = cli("generate", *TINY, "-p", "a {red|blue} circle on a white background", "--n", 8, "--seed", 3)
    assert done.exit_code == 0 and "combinatorial variations" in done.output, done.output
    rows = store.images_for_job(1)
    prompts = [r.prompt for r in rows]
    assert prompts == ["a red circle on a white background", "a blue circle on a white background"] * 4
    assert {r.template for r in rows} == {"a {red|blue} circle on a white background"}
    assert all(json.loads(r.recipe)["template"] == r.template for r in rows)
    red = [_redness(instance, r) for r in rows if "red" in r.prompt]
    blue = [_redness(instance, r) for r in rows if "blue" in r.prompt]
    assert np.mean(red) > np.mean(blue) + 20, (red, blue)
    assert [r.id for r in store.page_images(Filters(keyword="blue"))] == [r.id for r in rows if "blue" in r.prompt][::-1]
    again = cli("reproduce", rows[1].id)
    assert again.exit_code == 0 and "identical pixels" in again.output

    drawn = cli("generate", *TINY, "-p", "a {red|green|blue} circle", "--variations", "random", "--n", 6,
                "--seed", 11, "--queue")
    assert drawn.exit_code == 0
    for bad, message in [("a {red|blue circle", "malformed template"), ("a __colours__ circle", "wildcard __colours__ "
                         "has no values"), ("a {red|blue}} circle", "unbalanced braces")]:
        refused = cli("generate", *TINY, "-p", bad, "--n", 2, "--queue")
        assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1 and message in refused.output
    assert len(store.list_jobs()) == 2
    (instance / "wildcards").mkdir()
    (instance / "wildcards" / "colours.txt").write_text("red\ngreen\n")
    assert cli("generate", *TINY, "-p", "a __colours__ circle", "--n", 2, "--queue").exit_code == 0


def test_modifiers_append_the_communitys_way_and_your_own_library_overrides(cli, instance, store):
    assert append("a castle:2|blurry:-1", ["oil painting", "4k"]) == "a castle, oil painting, 4k:2|blurry:-1"
    assert append("a {red|blue:2} castle", ["oil"]) == "a {red|blue:2} castle, oil"
    done = cli("generate", *TINY, "-p", "a red circle", "--modifiers", "oil,artstation", "--queue")
    assert done.exit_code == 0, done.output
    recipe = json.loads(store.get_job(1).recipe)
    assert recipe["prompt"] == "a red circle, oil painting, trending on artstation"
    assert recipe["modifiers"] == ["oil", "artstation"]
    refused = cli("generate", *TINY, "-p", "a red circle", "--modifiers", "oil,sparkly", "--queue")
    assert refused.output.strip() == "Error: unknown modifier 'sparkly'; `clip-curator modifiers` lists them"
    assert len(store.list_jobs()) == 1
    listed = cli("modifiers", "--set", "artist", "me", "by the artist herself").output
    assert "artist:" in listed and "by the artist herself" in listed and "trending on artstation" in listed
    assert "oil painting" not in cli("modifiers", "--remove", "oil").output
    assert cli("generate", *TINY, "-p", "a cat", "--modifiers", "me", "--queue").exit_code == 0
    assert json.loads(store.get_job(2).recipe)["prompt"] == "a cat, by the artist herself"
    assert cli("generate", *TINY, "-p", "a cat", "--modifiers", "oil", "--queue").exit_code == 1


def test_the_site_queues_variations_modifiers_and_guides_and_refuses_a_bad_template(instance, store):
    from gallery.web import create_app

    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    form = client.get("/jobs/new").get_data(as_text=True)
    assert 'value="artstation"' in form and "trending on artstation" in form and 'name="guide_pool"' in form
    token = re.search(r'name="csrf-token" content="([^"]+)"', form).group(1)
    ok = client.post("/jobs/new", data={"csrf_token": token, "prompt": "a {red|blue} fish", "model": "tiny", "n": "4",
                                        "modifiers": ["oil", "4k"]})
    assert ok.status_code == 302, ok.get_data(as_text=True)
    recipe = json.loads(store.get_job(1).recipe)
    assert (recipe["prompt"], recipe["variations"], recipe["modifiers"]) == ("a {red|blue} fish, oil painting, 4k",
                                                                            "combinatorial", ["oil", "4k"])
    bad = client.post("/jobs/new", data={"csrf_token": token, "prompt": "a {red <b>fish</b>", "model": "tiny"})
    page = bad.get_data(as_text=True)
    assert bad.status_code == 400 and "malformed template" in html.unescape(page) and "<b>fish</b>" not in page
    empty = client.post("/jobs/new", data={"csrf_token": token, "prompt": "a fish", "model": "tiny", "guides": "2"})
    assert empty.status_code == 400 and "no guide images" in html.unescape(empty.get_data(as_text=True))
    assert len(store.list_jobs()) == 1


def test_the_report_counts_keepers_by_modifier_guide_pool_model_guidance_and_template(cli, instance, store):
    def made(modifiers=(), guides=0, pool="starred", scale=300, template=None, model="tiny"):
        recipe = {"prompt": "p", "modifiers": list(modifiers), "guides": guides, "guide_pool": pool,
                  "clip_guidance_scale": scale}
        return store.add_image(new_image(path=f"images/x/{random.random()}.png", recipe_json=json.dumps(recipe),
                                         model=model, template=template))

    a = made(["oil", "4k"], guides=2, pool="collection:reds")
    b = made(["oil"], guides=2, pool="collection:reds", scale=500)
    c = made(["4k"], template="{a|b}")
    d = made([], template="{a|b}")
    e = made(["oil"], model="uncond-256")
    store.add_image(new_image(path="images/imported/x.png", kind="imported", recipe_json="{}"))  # not generated
    store.set_starred([a, c], True)
    store.set_rating([b], 5)
    store.reject([d, e])
    rows = {(r.dimension, r.value): (r.images, r.kept, r.starred, r.rejected) for r in store.keep_report()}
    assert rows == {
        ("modifier", "oil"): (3, 2, 1, 1), ("modifier", "4k"): (2, 2, 2, 0),
        ("guides from", "collection:reds"): (2, 2, 1, 0),
        ("model", "tiny"): (4, 3, 2, 1), ("model", "uncond-256"): (1, 0, 0, 1),
        ("guidance scale", "300"): (4, 2, 2, 2), ("guidance scale", "500"): (1, 1, 0, 0),
        ("variations", "{a|b}"): (2, 1, 1, 1),
    }
    shown = cli("report").output
    assert re.search(r"oil\s+2/3\s+kept\s+66\.7%", shown) and "by guides from:" in shown
    from gallery.web import create_app

    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    page = client.get("/report").get_data(as_text=True)
    assert "<svg" in page and "By modifier" in page and "oil: 2 of 3 kept, 1 rejected" in page
    api = client.get("/api/report").get_json()["rows"]
    assert {(r["dimension"], r["value"], r["kept"]) for r in api} >= {("modifier", "oil", 2), ("model", "tiny", 3)}


def test_bad_guide_and_collection_settings_get_one_line(cli, store):
    for args, message in [(["--guides", 17], "guides must be a whole number from 0 to 16"),
                          (["--guides", 2, "--guide-pool", "friends"], "guide_pool must be starred, all, rating:N"),
                          (["--guides", 2, "--guide-pool", "collection:nope"], "there is no collection named 'nope'"),
                          (["--guides", 2], "no guide images: the pool 'starred' holds no image"),
                          (["--guide-init", 1.5], "guide_init must be a number from 0 to 0.95")]:
        refused = cli("generate", *TINY, "-p", "a red circle", *args, "--queue")
        assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1, refused.output
        assert message in refused.output, (args, refused.output)
    assert store.list_jobs() == []
    with pytest.raises(BadRequest, match="a collection needs a name"):
        store.add_to_collection("  ", [1])


def test_a_collection_named_in_the_prompt_ranks_higher_and_pulls_twice_as_hard(store):
    from gallery.recipe import Recipe
    from gallery.store import Embedding
    from generate.guides import NAMED_WEIGHT, pick

    text = np.eye(8, dtype=np.float32)[0]

    def image(name, similarity):
        v = np.zeros(8, np.float32)
        v[0], v[1] = similarity, np.sqrt(1 - similarity ** 2)
        return store.add_image(new_image(path=f"images/x/{name}.png", sha256=name.encode().hex().ljust(64, "0")),
                               Embedding("c", v))

    near = [image(f"near{i}", 0.60) for i in range(3)]
    owls = [image(f"owl{i}", 0.56) for i in range(3)]
    store.add_to_collection("my owls", owls)

    def picks(prompt):
        recipe = Recipe(prompt=prompt, guides=1, guide_pool="all", guide_weight=1.5)
        return [pick(store, recipe, seed, text, "c")[0] for seed in range(40)]

    plain, named = picks("an owl at night"), picks("an owl at night in the style of My Owls")
    assert sum(g.image_id in owls for g in named) > sum(g.image_id in owls for g in plain) + 10
    assert {g.weight for g in named if g.image_id in owls} == {1.5 * NAMED_WEIGHT}
    assert {g.weight for g in named if g.image_id in near} <= {1.5} and {g.weight for g in plain} == {1.5}
    assert picks("an owl at night") == plain  # each image's seed decides its draw


def test_guide_init_starts_from_the_closest_guide_and_each_image_recipe_is_fixed_by_its_seed(cli, instance, drawn,
                                                                                             models):
    import torch

    from gallery.instance import Instance
    from generate.queue.plan import ImagePlan

    store, reds, _ = drawn
    queued = cli("generate", *TINY, "-p", "a red square", "--guides", 3, "--guide-pool", "all", "--guide-init", 0.5,
                 "--n", 4, "--seed", 20, "--queue")
    assert queued.exit_code == 0, queued.output
    job = store.get_job(int(queued.output.strip().splitlines()[-1]))
    plan = lambda: ImagePlan(job, store, Instance(instance), models, torch.device("cpu"))  # noqa: E731
    recipes = [plan().image_recipe(i) for i in range(4)]
    assert recipes == [plan().image_recipe(i) for i in range(4)]
    for r in recipes:
        guides = [int(g.split(":")[0]) for g in r.guide_images]
        assert r.init_image == str(guides[0]) and r.skip_timesteps == 3  # half of the 6 steps' worth
        assert [p.split(":")[0] for p in r.image_prompts] == [str(g) for g in guides]
    assert len({r.guide_images for r in recipes}) > 1  # the seeds vary the draw
    batches = list(plan().batches(range(4), 4))
    assert [i for _, run in batches for i in run] == [0, 1, 2, 3]
    for recipe, run in batches:  # a batch shares one recipe but for the seed
        assert {recipes[i].guide_images for i in run} == {recipe.guide_images}
