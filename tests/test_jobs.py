"""Jobs end to end on the tiny preset: files, rows, recipes, resume after SIGKILL, reproduce, cancel."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_recipe
from gallery.instance import Instance
from gallery.recipe import read_png_recipe
from generate.queue import GenerateRunner, Worker

GEN = ["generate", "--model", "tiny", "--steps", "6", "-p", "a green star on a black background"]


def files_of(instance, job_id):
    return sorted(p.relative_to(instance).as_posix() for p in Instance(instance).job_dir(job_id).iterdir())


def test_generate_job_end_to_end(cli, instance, store):
    result = cli(*GEN, "--n", "3", "--seed", "40", "--save-every", "2")
    assert result.exit_code == 0, result.output
    job = store.list_jobs()[0]
    assert (job.status, job.done, job.n, job.seed) == ("done", 3, 3, 40)
    rows = store.images_for_job(job.id)
    assert [r.seed for r in rows] == [40, 41, 42]
    expected = sorted([r.path for r in rows] + [r.animation_path for r in rows])
    assert files_of(instance, job.id) == expected
    for r in rows:
        recipe, extra = read_png_recipe(instance / r.path)
        assert recipe.seed == r.seed and recipe.prompt == "a green star on a black background"
        assert recipe.steps == 6 and recipe.model == "tiny" and recipe.clip_model == "tiny"
        assert extra["job"] == job.id and extra["index"] == r.idx
        assert json.loads(r.recipe) == recipe.to_dict()
        emb = store.embedding(r.id)
        assert emb.shape == (64,) and abs(float(np.linalg.norm(emb)) - 1) < 1e-5
        import imageio.v3 as iio
        frames = iio.imread(instance / r.animation_path)  # every 2nd of 6 steps + final, + a hold
        assert frames.ndim == 4 and frames.shape[0] >= 4 and frames.shape[1] >= 256
    shown = cli("show", rows[0].id)
    assert "a green star on a black background" in shown.output and '"seed": 40' in shown.output
    listed = cli("jobs")
    assert f"{job.id}" in listed.output and "done" in listed.output and "3/3" in listed.output


def test_identical_rerun_resumes_instead_of_duplicating(cli, store):
    assert cli(*GEN, "--n", "2", "--seed", "1", "--queue").exit_code == 0
    again = cli(*GEN, "--n", "2", "--seed", "1")
    assert "resuming job 1" in again.output
    assert len(store.list_jobs()) == 1 and store.get_job(1).done == 2


def _done_count(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _kill_inside_image(proc, image: int, steps: int, n: int) -> None:
    """Read the job's progress bar (fed by the runner's progress callback) and SIGKILL the
    process as soon as it reports the first steps of image ``image`` (counting from 1)."""
    seen = b""
    while proc.poll() is None:
        chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
        if not chunk:
            break
        seen += chunk
        done = [int(m) for m in re.findall(rb"\| *(\d+)/%d \[" % (n * steps), seen[-400:])]
        if done and (image - 1) * steps < done[-1] < image * steps - 1:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "vqgan-tiny"])
def test_sigkill_then_rerun_ends_with_exactly_n_images(instance, model):
    n, seed, steps = 6, 5, 12
    count = "--steps" if model == "tiny" else "--iterations"  # the steps of guided diffusion, or Adam's
    gen = ["generate", "--model", model, count, str(steps), *GEN[5:]]
    cmd = [sys.executable, str(ROOT / "cli.py"), "--instance", str(instance), *gen, "--n", str(n), "--seed", str(seed)]
    env = {**os.environ, "CLIP_CURATOR_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_inside_image(proc, 3, steps, n)
    assert proc.returncode == -signal.SIGKILL, "the job must be killed part-way"
    killed_at = _done_count(instance / "gallery.db")
    assert killed_at == 2, "killed inside the third image: the first two are recorded, no more"
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{killed_at}/{n} images already done" in rerun.stderr
    conn = sqlite3.connect(instance / "gallery.db")
    rows = conn.execute("SELECT idx, seed, path, animation_path FROM images ORDER BY idx").fetchall()
    jobs = conn.execute("SELECT status, done FROM jobs").fetchall()
    conn.close()
    assert jobs == [("done", n)]
    assert [r[0] for r in rows] == list(range(n))
    assert sorted(r[1] for r in rows) == list(range(seed, seed + n))  # no duplicate seeds
    assert files_of(instance, 1) == sorted([r[2] for r in rows] + [r[3] for r in rows])  # no orphans
    import imageio.v3 as iio
    assert all(iio.imread(instance / r[3]).shape[0] >= 3 for r in rows)  # frames became an animation


def test_reproduce_from_the_gallery_and_from_the_png_alone(cli, instance, store, tmp_path):
    assert cli(*GEN, "--n", "1", "--seed", "77").exit_code == 0
    row = store.images_for_job(1)[0]
    result = cli("reproduce", row.id, "-o", tmp_path / "again.png")
    assert result.exit_code == 0 and "identical pixels" in result.output, result.output
    original = np.asarray(Image.open(instance / row.path))
    assert np.array_equal(original, np.asarray(Image.open(tmp_path / "again.png")))
    # The file alone, copied out of the gallery, into an instance with no database.
    lone = tmp_path / "elsewhere" / "lone.png"
    lone.parent.mkdir()
    lone.write_bytes((instance / row.path).read_bytes())
    from click.testing import CliRunner
    from cli import main
    r2 = CliRunner().invoke(main, ["--instance", str(tmp_path / "empty"), "reproduce", str(lone), "-o",
                                   str(tmp_path / "from-file.png")])
    assert r2.exit_code == 0 and "identical pixels" in r2.output, r2.output
    assert not (tmp_path / "empty" / "gallery.db").exists()


def test_reproduce_without_an_output_file_never_writes_into_a_job_folder(cli, instance, store):
    assert cli(*GEN, "--n", "1", "--seed", "3").exit_code == 0
    row = store.images_for_job(1)[0]
    before = files_of(instance, 1)
    result = cli("reproduce", row.id)
    assert result.exit_code == 0 and "identical pixels" in result.output, result.output
    out = instance / "reproduced" / (Path(row.path).stem + "-reproduced.png")
    assert out.is_file() and str(out) in result.output
    assert files_of(instance, 1) == before  # nothing a resume would sweep away


def test_reproduce_refuses_oversized_files_and_recipes_of_the_wrong_types_in_one_line(cli, tmp_path):
    from PIL import PngImagePlugin

    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("clip-curator:recipe", json.dumps({"prompt": 5, "image_prompts": 5, "model": ["x"]}))
    typed = tmp_path / "typed.png"
    Image.new("RGB", (8, 8)).save(typed, pnginfo=info)
    for path, words in ((huge, "over the limit of"), (typed, "prompt must be")):
        result = cli("reproduce", path)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and words in lines[0], result.output


def test_cancel_stops_after_the_current_image_and_keeps_what_finished(store, inst, models):
    recipe = tiny_recipe(steps=6)
    job = store.create_job("generate", recipe.to_json(), 50, 0)
    from gallery.store import Store
    other = Store(store.path)  # the site or CLI asking, over its own connection

    def on_progress(p):
        if p.done >= 1:
            other.request_cancel(job)

    status = GenerateRunner(store, inst, models, "cpu", on_progress=on_progress, heartbeat_s=0).run(job)
    assert status == "cancelled"
    j = store.get_job(job)
    assert j.status == "cancelled" and 1 <= j.done < 50
    assert len(store.images_for_job(job)) == j.done
    other.close()


def test_worker_records_a_failing_job_and_runs_the_next(store, inst, models, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 0, 0)).save(init)
    bad = store.create_job("generate", tiny_recipe(steps=4, init_image=str(init), skip_timesteps=2).to_json(), 1, 0)
    init.unlink()  # gone by the time the worker gets to it
    good = store.create_job("generate", tiny_recipe(steps=4).to_json(), 1, 0)
    events = []
    Worker.standard(store, inst, models, "cpu", on_event=events.append).run(once=True)
    assert store.get_job(bad).status == "failed" and "image file not found" in store.get_job(bad).error
    assert store.get_job(good).status == "done" and store.get_job(good).done == 1
    assert any("failed" in e for e in events)


def test_worker_resumes_a_job_whose_worker_died(store, inst, models):
    job = store.create_job("generate", tiny_recipe(steps=4).to_json(), 2, 9)
    store.claim_job(job, "elsewhere:1")
    store.conn.execute("UPDATE jobs SET heartbeat = heartbeat - 3600 WHERE id = ?", (job,))
    Worker.standard(store, inst, models, "cpu").run(once=True)
    assert store.get_job(job).status == "done" and store.get_job(job).done == 2
