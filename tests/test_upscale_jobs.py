"""Upscale jobs: recipe kept, parent linked, no duplicates, failures leave nothing behind."""
import pytest
from PIL import Image

from gallery.recipe import read_png_recipe

GEN = ["generate", "--model", "tiny", "--steps", "4", "-p", "a yellow circle on a blue background"]


@pytest.fixture
def two_images(cli, store):
    assert cli(*GEN, "--n", "2", "--seed", "11").exit_code == 0
    return [r["id"] for r in store.images_for_job(1)]


def test_upscale_starred_keeps_the_recipe_and_never_duplicates(cli, store, instance, two_images):
    a, b = two_images
    assert cli("star", a).exit_code == 0
    first = cli("upscale", "--starred", "--model", "compact")
    assert first.exit_code == 0, first.output
    child_id = store.upscale_of(a, "compact")
    assert child_id is not None and store.upscale_of(b, "compact") is None
    child, parent = store.get_image(child_id), store.get_image(a)
    assert (child["width"], child["height"]) == (parent["width"] * 4, parent["height"] * 4)
    assert child["parent_id"] == a and child["kind"] == "upscaled" and child["seed"] == parent["seed"]
    recipe, extra = read_png_recipe(instance / child["path"])
    parent_recipe, _ = read_png_recipe(instance / parent["path"])
    assert recipe == parent_recipe
    assert extra["parent"] == a and "compact" in extra["upscaler"]
    with Image.open(instance / child["path"]) as im:
        assert im.size == (128, 128)
    count = store.count_images()
    second = cli("upscale", "--starred", "--model", "compact")
    assert second.exit_code == 0 and "nothing to upscale" in second.output
    again = cli("upscale", str(a), "--model", "compact")
    assert "nothing to upscale" in again.output
    assert store.count_images() == count
    assert cli("upscale", str(child_id)).exit_code != 0  # an upscale of an upscale is refused


def test_failed_upscale_leaves_no_file_and_no_row(cli, store, instance, two_images):
    a, _ = two_images
    path = instance / store.get_image(a)["path"]
    path.write_bytes(path.read_bytes()[:60])  # truncated behind the gallery's back
    result = cli("upscale", str(a), "--model", "compact")
    assert result.exit_code != 0
    job = store.list_jobs(limit=1)[0]
    assert job.kind == "upscale" and job.status == "failed"
    assert "Truncated" in job.error or "truncated" in job.error
    assert store.upscale_of(a, "compact") is None
    upscaled = instance / "images" / "upscaled"
    assert not upscaled.exists() or not any(p.is_file() for p in upscaled.rglob("*"))


def test_bad_upscale_requests(cli, two_images):
    for args, words in [(["upscale"], "name image ids"), (["upscale", "999"], "image 999 doesn't exist"),
                        (["upscale", "1", "--model", "x8"], "unknown upscaler")]:
        r = cli(*args)
        assert r.exit_code != 0 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
