"""The Ray executor on real Ray: same pixels as in-process, two nodes, killed actors and heads, cancel, bad input.

One local Ray instance (2 CPUs) serves the tests that drive the dispatcher in this process; the
two-node test starts its own cluster with `ray start` and stops it; tests of the CLI run it as a
subprocess, as a user would.
"""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, new_image, tiny_recipe
from gallery.store import Store
from generate.queue import GenerateRunner, StopSignal

RAY = str(Path(sys.executable).with_name("ray"))
PROMPT = "a blue square on a white background"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for the module, and the executor connected to it."""
    from generate.queue.ray_executor import RayExecutor, RayOptions

    executor = RayExecutor.connect(RayOptions(local_cpus=2))
    executor.owns_connection = True
    yield executor
    executor.close()


@pytest.fixture
def ray_exec(cluster):
    """The shared executor; its actors (models loaded) carry over to the next test."""
    return cluster


def free(cluster):
    """Kill the shared executor's actors, so another driver can have the cluster's CPUs."""
    for pool in cluster.pools.values():
        pool.close()
    cluster.pools.clear()


def runner(executor, store, inst, models, on_progress=None, stop=None):
    return executor.runners(store, inst, models, "cpu", on_progress, stop or StopSignal())["generate"]


def pixels(inst, row):
    return np.asarray(Image.open(inst.root / row.path).convert("RGB"))


def files_of(inst, job_id):
    folder = inst.job_dir(job_id)
    return sorted(inst.rel(p) for p in folder.iterdir()) if folder.is_dir() else []


def assert_complete(store, inst, job_id, n, seed):
    """Exactly n images, one per index and seed, every file claimed by a row and no other."""
    job = store.get_job(job_id)
    rows = store.images_for_job(job_id)
    assert (job.status, job.done) == ("done", n)
    assert [r.idx for r in rows] == list(range(n))
    assert sorted(r.seed for r in rows) == list(range(seed, seed + n))
    assert files_of(inst, job_id) == sorted([r.path for r in rows] + [r.animation_path for r in rows])
    return rows


def test_two_cpu_actors_make_the_same_pixels_as_the_in_process_runner(ray_exec, store, inst, models):
    import torch

    recipe = tiny_recipe(PROMPT, steps=6, batch_size=2)
    local = store.create_job("generate", recipe.to_json(), 8, 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each CPU actor has one
    try:
        assert GenerateRunner(store, inst, models, "cpu").run(local) == "done"
    finally:
        torch.set_num_threads(threads)
    remote = store.create_job("generate", recipe.to_json(), 8, 100)
    assert runner(ray_exec, store, inst, models).run(remote) == "done"
    where = ray_exec.pools["cpu"].where
    assert len(where) == 2
    # The actors run this tree's code (shipped by Ray), not whatever else is installed.
    assert {Path(w["code"]).read_bytes() for w in where} == {(ROOT / "generate/queue/ray_actors.py").read_bytes()}
    want, got = store.images_for_job(local), assert_complete(store, inst, remote, 8, 100)
    for a, b in zip(want, got):
        assert (a.idx, a.seed) == (b.idx, b.seed)
        assert np.array_equal(pixels(inst, a), pixels(inst, b)), f"image {a.idx} differs"
        assert np.allclose(store.embedding(a.id), store.embedding(b.id), atol=1e-6)
        assert b.device == "cpu" and b.node.startswith(socket.gethostname() + "/")
    assert {b.node for b in got} <= {w["node"] for w in ray_exec.pools["cpu"].where}
    assert all(a.node == socket.gethostname() for a in want)


def test_per_image_recipes_and_another_backend_make_the_same_pixels_on_ray(ray_exec, store, inst, models):
    # A template's expansions and the guides picked per seed are worked out on the head; a VQGAN job
    # goes through the same actors. Both match the in-process runner pixel for pixel.
    import dataclasses
    import random

    import torch

    from gallery.recipe import Recipe
    from gallery.store import Embedding
    from generate.generators import complete
    from generate.tiny.shapes import Drawing, draw

    clip = models.clip("tiny", torch.device("cpu"))
    for i, colour in enumerate(["red", "blue", "red"]):
        rel = f"images/imported/guide{i}.png"
        (inst.root / rel).parent.mkdir(parents=True, exist_ok=True)
        im = draw(Drawing(colour, "circle", "white"), 32, random.Random(i))
        im.save(inst.root / rel)
        from search.embed import Embedder

        store.add_image(new_image(path=rel, kind="imported", sha256=f"{i:064x}"),
                        Embedding(clip.id, Embedder(clip).pixels([im])[0]))
    templated = dataclasses.replace(tiny_recipe("a {red|blue} square on a white background", steps=4,
                                                variations="combinatorial"), guides=1, guide_pool="all")
    vqgan = complete(Recipe(prompt="a red circle", model="vqgan-tiny", settings={"iterations": 6}))
    threads = torch.get_num_threads()
    for recipe in (templated, vqgan):
        local = store.create_job("generate", recipe.to_json(), 4, 30)
        torch.set_num_threads(1)  # each CPU actor has one
        try:
            assert GenerateRunner(store, inst, models, "cpu").run(local) == "done"
        finally:
            torch.set_num_threads(threads)
        remote = store.create_job("generate", recipe.to_json(), 4, 30)
        assert runner(ray_exec, store, inst, models).run(remote) == "done"
        want, got = store.images_for_job(local), assert_complete(store, inst, remote, 4, 30)
        for a, b in zip(want, got):
            assert (a.prompt, a.template, a.recipe) == (b.prompt, b.template, b.recipe)
            assert np.array_equal(pixels(inst, a), pixels(inst, b)), f"image {a.idx} differs"
    assert [r.prompt for r in want] == ["a red circle"] * 4 and "guide_images" in got[0].recipe
    assert {r.template for r in store.images_for_job(local - 1)} == {templated.prompt}


def test_an_actor_killed_mid_job_is_restarted_and_the_job_loses_nothing(ray_exec, store, inst, models):
    job = store.create_job("generate", tiny_recipe(PROMPT, steps=10).to_json(), 8, 200)
    killed = {}

    def on_progress(p):
        # Once an image is in: each actor is mid-task, with its next batch queued behind it.
        if not killed and p.done >= 1:
            pool = ray_exec.pools["cpu"]
            killed["pid"] = pool.pids()[0]
            os.kill(killed["pid"], signal.SIGKILL)

    assert runner(ray_exec, store, inst, models, on_progress).run(job) == "done"
    assert killed, "an actor must have been killed mid-job"
    assert killed["pid"] not in ray_exec.pools["cpu"].pids(), "the killed actor came back as a new process"
    assert_complete(store, inst, job, 8, 200)


def test_cancel_stops_remote_work_within_seconds(ray_exec, store, inst, models):
    job = store.create_job("generate", tiny_recipe(PROMPT, steps=24).to_json(), 40, 300)
    other = Store(store.path)  # the site asking, over its own connection
    asked = {}

    def on_progress(p):
        if not asked and p.done >= 1 and p.step >= 3:
            asked["t"] = time.monotonic()
            other.request_cancel(job)

    assert runner(ray_exec, store, inst, models, on_progress).run(job) == "cancelled"
    stopped_after = time.monotonic() - asked["t"]
    pool = ray_exec.pools["cpu"]
    t0 = time.monotonic()
    pool.pids()  # a sync actor answers only once it has stopped computing
    idle_after = time.monotonic() - t0
    assert stopped_after < 5 and idle_after < 2, (stopped_after, idle_after)
    j = store.get_job(job)
    rows = store.images_for_job(job)
    assert j.status == "cancelled" and 1 <= j.done == len(rows) < 40
    assert files_of(inst, job) == sorted([r.path for r in rows] + [r.animation_path for r in rows])
    other.close()


def test_a_node_that_cannot_fetch_the_weights_fails_the_job_in_one_line_naming_it(ray_exec, store, inst, models):
    from gallery.errors import WeightsMissing
    from gallery.recipe import Recipe

    # The big preset's weights are not here, and the actors are offline.
    job = store.create_job("generate", Recipe(prompt=PROMPT, model="uncond-256", steps=2).to_json(), 2, 0)
    with pytest.raises(WeightsMissing):
        runner(ray_exec, store, inst, models).run(job)
    j = store.get_job(job)
    assert j.status == "failed" and j.error.startswith("WeightsMissing: on ") and len(j.error.splitlines()) == 1
    assert any(w["node"] in j.error for w in ray_exec.pools["cpu"].where), j.error
    assert store.images_for_job(job) == [] and files_of(inst, job) == []


def test_upscales_run_on_the_pool_with_the_same_pixels_as_in_process(ray_exec, store, inst, models):
    from generate.queue import UpscaleRunner, queue_upscale

    recipe = tiny_recipe(PROMPT, steps=4)
    parents = []
    for _ in range(2):  # the same seeds twice: two sets of identical parents
        job = store.create_job("generate", recipe.to_json(), 2, 7)
        GenerateRunner(store, inst, models, "cpu").run(job)
        parents.append([r.id for r in store.images_for_job(job)])
    local = queue_upscale(store, parents[0], "compact")
    assert UpscaleRunner(store, inst).run(local) == "done"
    remote = queue_upscale(store, parents[1], "compact")
    assert ray_exec.runners(store, inst, models, "cpu", None, StopSignal())["upscale"].run(remote) == "done"
    assert store.get_job(remote).done == 2
    nodes = {w["node"] for w in ray_exec.pools["cpu"].where}
    for a, b in zip(parents[0], parents[1]):
        want, got = store.get_image(store.upscale_of(a, "compact")), store.get_image(store.upscale_of(b, "compact"))
        assert (got.parent_id, got.kind, got.width) == (b, "upscaled", 128) and got.node in nodes
        assert np.array_equal(pixels(inst, want), pixels(inst, got))


def test_a_job_asking_for_a_device_no_node_has_fails_with_that_reason(cluster, cli, store, instance):
    address = cluster_address()
    result = cli("generate", "--model", "tiny", "--steps", "4", "-p", PROMPT, "--n", "2", "--ray", address,
                 "--device", "cuda")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "no GPU" in lines[-1] and "cuda" in lines[-1], result.output
    job = store.list_jobs()[0]
    assert job.status == "failed" and "no GPU" in job.error and job.done == 0
    assert store.images_for_job(job.id) == []
    folder = Path(instance) / "images"
    assert not folder.exists() or not any(folder.rglob("*.*"))


def cluster_address():
    import ray

    return ray.get_runtime_context().gcs_address


def cli_cmd(instance, *args):
    return [sys.executable, str(ROOT / "cli.py"), "--instance", str(instance), *map(str, args)]


def subprocess_env():
    return {**os.environ, "CLIP_CURATOR_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_is_one_line_and_changes_nothing(instance, store):
    job = store.create_job("generate", tiny_recipe(PROMPT, steps=4).to_json(), 2, 0)
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = subprocess.run(cli_cmd(instance, "worker", "--ray", address, "--once"), cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and address in lines[0], result.stderr
    assert lines[0].startswith("Error: no Ray cluster answers at") and time.monotonic() - t0 < 60
    assert store.get_job(job).status == "queued" and store.images_for_job(job) == []
    # The same address given to a generate run: its job is recorded as failed, with that reason.
    result = subprocess.run(cli_cmd(instance, "generate", "--model", "tiny", "--steps", "4", "-p", PROMPT,
                                    "--ray", address), cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("Error: no Ray cluster")
    failed = store.list_jobs()[0]
    assert failed.status == "failed" and "no Ray cluster answers" in failed.error and failed.done == 0


def _done_count(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    finally:
        conn.close()


def test_a_head_killed_mid_job_resumes_from_the_rows(cluster, ray_exec, instance, store, inst):
    free(cluster)
    job = store.create_job("generate", tiny_recipe(PROMPT, steps=4).to_json(), 8, 400)
    cmd = cli_cmd(instance, "worker", "--ray", cluster_address(), "--once", "--device", "cpu")
    head = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _done_count(inst.db_path) < 2 and head.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    head.send_signal(signal.SIGKILL)
    head.wait()
    killed_at = _done_count(inst.db_path)
    assert 2 <= killed_at < 8, "the head must die part-way through the job"
    rerun = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{killed_at}/8 already done" in rerun.stderr
    assert_complete(store, inst, job, 8, 400)


def _wait_for_nodes(address, env, count, timeout=90):
    code = ("import sys, time, ray\nray.init(address=sys.argv[1], log_to_driver=False)\n"
            "t = time.time()\nwhile len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]):\n"
            "    assert time.time() - t < 60, 'nodes did not join'\n    time.sleep(0.2)\n")
    subprocess.run([sys.executable, "-c", code, address, str(count)], env=env, check=True, timeout=timeout,
                   capture_output=True)


def _nodes_of(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT node, COUNT(*) FROM images GROUP BY node").fetchall())
    finally:
        conn.close()


def test_a_two_node_cluster_on_loopback_makes_images_on_both_and_survives_losing_one(instance, store, inst):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**subprocess_env(), "RAY_AUTH_MODE": "token"}  # every node and driver of the cluster checks the token
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = [subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                               *common], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        nodes.append(subprocess.Popen([RAY, "start", "--address", address, *common], **quiet))
        _wait_for_nodes(address, env, 2)
        job = store.create_job("generate", tiny_recipe(PROMPT, steps=6).to_json(), 12, 500)
        worker = subprocess.Popen(cli_cmd(instance, "worker", "--ray", address, "--once", "--device", "cpu"),
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while len(_nodes_of(inst.db_path)) < 2 and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        made_on = _nodes_of(inst.db_path)
        nodes[1].terminate()  # the second node goes away mid-job: its work is redone on the head node
        nodes[1].wait(timeout=60)
        err = worker.communicate(timeout=300)[1]
        assert worker.returncode == 0, err[-2000:]
        assert "2 node(s), 2 CPU(s)" in err
        assert len(made_on) == 2 and all(n.startswith(socket.gethostname() + "/") for n in made_on), made_on
        rows = assert_complete(store, inst, job, 12, 500)
        assert len(rows) > sum(made_on.values()), "the job went on after the node left"
    finally:
        for node in reversed(nodes):
            node.terminate()  # `ray start --block` stops that node's processes on SIGTERM
        for node in nodes:
            node.wait(timeout=60)


def test_the_jobs_page_and_the_cli_show_where_each_image_was_made(instance, store, cli):
    from conftest import new_image
    from gallery.web import create_app

    job = store.create_job("generate", tiny_recipe(PROMPT).to_json(), 3, 0)
    for idx, (node, device) in enumerate([("<b>gpu-box</b>/1a2b", "cuda:3"), ("<b>gpu-box</b>/1a2b", "cuda:3"),
                                          ("laptop", "cpu")]):
        store.add_image(new_image(job, idx, node=node, device=device))
    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    page = client.get("/jobs").get_data(as_text=True)
    assert "&lt;b&gt;gpu-box&lt;/b&gt;/1a2b · cuda:3 ×2" in page and "laptop · cpu ×1" in page
    assert "<b>gpu-box" not in page
    made_on = client.get("/api/jobs").get_json()["jobs"][0]["made_on"]
    assert made_on == [{"node": "<b>gpu-box</b>/1a2b", "device": "cuda:3", "images": 2},
                       {"node": "laptop", "device": "cpu", "images": 1}]
    assert "on <b>gpu-box</b>/1a2b cuda:3 x2, laptop cpu x1" in cli("jobs").output


def test_without_ray_nothing_imports_it(instance):
    code = ("import sys\nfrom cli import main\n"
            "for args in (['--help'], sys.argv[1:]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nprint('ok')\n")
    args = ["--instance", str(instance), "generate", "--model", "tiny", "--steps", "2", "-p", PROMPT]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert Store(Path(instance) / "gallery.db").list_jobs()[0].status == "done"