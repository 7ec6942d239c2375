"""Every backend through the queue: jobs, recipes in the PNG, reproduce from the file alone, bad settings."""
import json

import numpy as np
import pytest
from PIL import Image

FEW = {"siren-tiny": 10, "vqgan-tiny": 10, "biggan-tiny": 10}


@pytest.mark.parametrize("model", sorted(FEW))
def test_each_backend_makes_a_job_and_reproduces_it_from_its_png_alone(cli, instance, store, tmp_path, model):
    made = cli("generate", "--model", model, "--iterations", FEW[model], "--lr", 0.05, "-p", "a red circle",
               "--n", 2, "--seed", 3)
    assert made.exit_code == 0, made.output
    rows = store.images_for_job(1)
    recipe = json.loads(rows[0].recipe)
    assert recipe["backend"] == model.split("-")[0] and recipe["settings"]["iterations"] == FEW[model]
    assert recipe["settings"]["lr"] == 0.05 and recipe["version"] == 3 and recipe["clip_model"] == "tiny"
    first, second = (np.asarray(Image.open(instance / r.path)) for r in rows)
    assert not np.array_equal(first, second)  # seeds 3 and 4 are two images
    lone = tmp_path / "lone.png"
    lone.write_bytes((instance / rows[1].path).read_bytes())
    again = cli("reproduce", lone, "-o", tmp_path / "again.png")
    assert again.exit_code == 0 and "identical pixels" in again.output, again.output
    assert store.get_job(1).steps == FEW[model]  # progress counts the backend's iterations


@pytest.mark.parametrize("args, message", [
    (["--model", "vqgan-tiny", "--iterations", "-1"], "iterations must be a whole number from 1 to 100000"),
    (["--model", "siren-tiny", "--lr", "0"], "lr must be a number above 0"),
    (["--model", "vqgan-tiny", "--setting", "bogus=1"], "bogus is not a setting of vqgan (vqgan-tiny)"),
    (["--model", "biggan-tiny", "--setting", "truncation=2"], "truncation must be a number above 0 and at most 1"),
    (["--model", "vqgan-tiny", "--method", "ddim"], "--method is a guided diffusion setting; vqgan-tiny (vqgan) takes"),
    (["--model", "tiny", "--iterations", "5"], "not a setting of guided diffusion"),
    (["--model", "biggan-tiny", "--init", "1"], "takes no init image"),
    (["--model", "dall-e"], "unknown model preset 'dall-e'"),
])
def test_bad_backend_settings_get_one_line_and_record_nothing(cli, store, args, message):
    refused = cli("generate", *args, "-p", "a red circle", "--queue")
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 1 and len(lines) == 1 and message in lines[0], refused.output
    assert store.list_jobs() == []


def test_the_site_filters_by_backend_shows_its_settings_and_offers_every_preset(instance, store):
    import re

    from conftest import new_image
    from gallery.web import create_app

    old = store.add_image(new_image(path="images/a.png", recipe_json='{"prompt": "p", "model": "tiny", "version": 1}'))
    vq = store.add_image(new_image(path="images/b.png", recipe_json=json.dumps(
        {"prompt": "p", "model": "vqgan-tiny", "backend": "vqgan", "settings": {"iterations": 40, "noise": 0.25}})))
    store.add_image(new_image(path="images/c.png", kind="imported", recipe_json="{}"))
    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    shown = lambda q: {int(i) for i in re.findall(r'data-id="(\d+)"', client.get(q).get_data(as_text=True))}  # noqa: E731
    assert shown("/?backend=vqgan") == {vq} and shown("/?backend=diffusion") == {old}  # version 1: diffusion
    assert client.get("/?backend=dalle").status_code == 400
    page = client.get(f"/image/{vq}").get_data(as_text=True)
    assert "vqgan: iterations" in page and "vqgan: noise" in page and "iterations 40, noise 0.25" in page
    form = client.get("/jobs/new").get_data(as_text=True)
    assert all(f'value="{m}"' in form for m in ("tiny", "vqgan-tiny", "siren-tiny", "biggan-tiny"))


def test_regenerate_and_old_recipes_go_through_each_backend(instance, store):
    import re

    from PIL import Image as PILImage

    from conftest import new_image
    from gallery.recipe import Recipe
    from gallery.web import create_app
    from generate.generators import complete

    assert complete(Recipe.from_json('{"prompt": "a fish", "model": "tiny", "version": 1}')).backend == "diffusion"
    ids = {}
    (instance / "images").mkdir()
    for model in ("vqgan-tiny", "biggan-tiny"):
        rel = f"images/{model}.png"
        PILImage.new("RGB", (32, 32), (200, 20, 20)).save(instance / rel)
        ids[model] = store.add_image(new_image(path=rel, recipe_json=complete(Recipe(prompt="a red circle",
                                                                                     model=model)).to_json()))
    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    post = lambda i, body: client.post(f"/api/images/{i}/regenerate", json=body,  # noqa: E731
                                       headers={"X-CSRF-Token": token})
    queued = post(ids["vqgan-tiny"], {"n": 2, "init_strength": 0.75})
    assert queued.status_code == 202, queued.get_json()
    recipe = json.loads(store.get_job(queued.get_json()["job"]).recipe)
    assert recipe["init_image"] == str(ids["vqgan-tiny"]) and recipe["settings"]["noise"] == 0.25
    refused = post(ids["biggan-tiny"], {"n": 2, "init_strength": 0.5})
    assert refused.status_code == 400 and "takes no init image" in refused.get_json()["error"]
    assert post(ids["biggan-tiny"], {"n": 1, "image_prompt_weight": 1}).status_code == 202
    assert len(store.list_jobs()) == 2
