"""Upscale jobs: recipe kept, parent linked, no duplicates, failures leave nothing behind."""
import pytest
from PIL import Image

from gallery.recipe import read_png_recipe

GEN = ["generate", "--model", "tiny", "--steps", "4", "-p", "a yellow circle on a blue background"]


@pytest.fixture
def two_images(cli, store):
    assert cli(*GEN, "--n", "2", "--seed", "11").exit_code == 0
    return [r.id for r in store.images_for_job(1)]


def test_upscale_starred_keeps_the_recipe_and_never_duplicates(cli, store, instance, two_images):
    a, b = two_images
    assert cli("star", a).exit_code == 0
    first = cli("upscale", "--starred", "--model", "compact")
    assert first.exit_code == 0, first.output
    child_id = store.upscale_of(a, "compact")
    assert child_id is not None and store.upscale_of(b, "compact") is None
    child, parent = store.get_image(child_id), store.get_image(a)
    assert (child.width, child.height) == (parent.width * 4, parent.height * 4)
    assert child.parent_id == a and child.kind == "upscaled" and child.seed == parent.seed
    recipe, extra = read_png_recipe(instance / child.path)
    parent_recipe, _ = read_png_recipe(instance / parent.path)
    assert recipe == parent_recipe
    assert extra["parent"] == a and "compact" in extra["upscaler"]
    with Image.open(instance / child.path) as im:
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
    path = instance / store.get_image(a).path
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


def _dead_pid() -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def test_upscale_and_import_sweep_what_a_killed_run_left(cli, instance, two_images, tmp_path):
    # What a SIGKILL in the middle of writing leaves: a temp file named after a writer now dead.
    import os

    a, _ = two_images
    dead = _dead_pid()
    left = {}
    for kind in ("upscaled/0000", "imported/ab"):
        folder = instance / "images" / kind
        folder.mkdir(parents=True)
        left[kind] = folder / f".half.tmp{dead}-1.png"
        left[kind].write_bytes(b"half a png")
    busy = instance / "images" / "upscaled" / "0000" / f".busy.tmp{os.getpid()}-1.png"
    busy.write_bytes(b"another worker is writing this")
    assert cli("upscale", a, "--model", "compact").exit_code == 0
    assert not left["upscaled/0000"].exists() and busy.exists()  # a live writer's file is left alone
    assert left["imported/ab"].exists()  # each kind sweeps its own folder
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "in" / "x.png")
    assert cli("import", tmp_path / "in").exit_code == 0
    assert not left["imported/ab"].exists()
