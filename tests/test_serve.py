"""The real server and CLI as processes: a damaged index never takes them down, and a shutdown
stops the worker between images with nothing lost."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, tiny_recipe
from gallery.files import sha256_file
from test_index import DIM, N, _damage_links, _vectors

CLIP_ID = "tiny-clip/tiny-clip.pt"  # the tiny CLIP's embeddings are 64-d, as the damaged-index tests' are


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {**os.environ, "CLIP_CURATOR_OFFLINE": "1", **extra}
    env.pop("CLIP_CURATOR_INSTANCE", None)
    return env


def _cli(instance, *args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "--instance", str(instance), *map(str, args)],
                          cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _serve(instance, port, *args, env=None):
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--instance", str(instance), "serve", "--port",
                             str(port), *args], cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_up(proc, url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


def _trusted(path) -> bool:
    try:
        return json.loads(path.with_suffix(".json").read_text())["checksum"] == sha256_file(path)
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def big_template(tmp_path_factory):
    """10,000 embedded images (hnswlib above a threshold of 100), its index built by `index`; made once."""
    from gallery.store import Embedding, NewImage, Store

    instance = tmp_path_factory.mktemp("big") / "instance"
    with Store(instance / "gallery.db") as store:
        store.conn.execute("PRAGMA synchronous = OFF")
        for i, v in enumerate(_vectors(N, 0)):
            store.add_image(NewImage(path=f"images/{i}.png", width=32, height=32, recipe_json="{}",
                                     prompt=f"drawing {i}"), Embedding(CLIP_ID, v))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    env = _env(CLIP_CURATOR_EXACT_BELOW="100")
    built = _cli(instance, "index", env=env)
    assert built.returncode == 0 and "hnsw search" in built.stdout, built.stderr[-2000:]
    assert DIM == 64 and _trusted(next((instance / "index").glob("*.hnsw")))
    return instance, env


@pytest.fixture
def big_gallery(big_template, tmp_path):
    """A copy of the big gallery for one test."""
    import shutil

    instance = tmp_path / "instance"
    shutil.copytree(big_template[0], instance)
    return instance, next((instance / "index").glob("*.hnsw")), big_template[1]


@pytest.mark.slow
def test_a_damaged_index_never_takes_down_search_or_the_server(big_gallery):
    instance, path, env = big_gallery
    _damage_links(path)  # the middle of the file: its first and last MiB untouched
    found = _cli(instance, "search", "a red circle", "-k", "5", "--json", env=env)
    assert found.returncode == 0, found.stderr[-2000:]  # the same command died with SIGSEGV before
    assert len(found.stdout.strip().splitlines()) == 5 and "clip-curator index" in found.stderr
    port = _free_port()
    server = _serve(instance, port, "--no-worker", env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(server, base + "/")
        for _ in range(3):
            r = requests.get(base + "/api/search", params={"q": "a red circle", "k": 5}, timeout=60)
            assert r.status_code == 200 and len(r.json()["results"]) == 5
        deadline = time.time() + 120  # the server repairs the file in the background meanwhile
        while not _trusted(path) and time.time() < deadline:
            assert server.poll() is None
            time.sleep(0.5)
        assert _trusted(path), "the server did not repair the index"
        assert requests.get(base + "/api/search", params={"q": "a red circle"}, timeout=60).status_code == 200
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_an_index_folder_replaced_by_a_file_is_one_line(big_gallery, monkeypatch):
    from click.testing import CliRunner

    from cli import main

    instance, path, _ = big_gallery
    folder = path.parent
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.write_text("not a folder")
    monkeypatch.setenv("CLIP_CURATOR_EXACT_BELOW", "100")
    runner = CliRunner()
    found = runner.invoke(main, ["--instance", str(instance), "search", "a red circle", "-k", "3", "--json"])
    assert found.exit_code == 0 and len(found.stdout.strip().splitlines()) == 3, found.output[-2000:]
    repaired = runner.invoke(main, ["--instance", str(instance), "index"])
    lines = repaired.stderr.strip().splitlines()
    assert repaired.exit_code == 1 and lines[-1].startswith("Error: ") and str(folder) in lines[-1], repaired.output
    assert repaired.exception is None or isinstance(repaired.exception, SystemExit)


@pytest.mark.slow
def test_stopping_the_server_stops_the_worker_between_images(tmp_path):
    from gallery.store import Store

    instance = tmp_path / "instance"
    with Store(instance / "gallery.db") as store:
        job = store.create_job("generate", tiny_recipe("a blue square on a white background", steps=30).to_json(),
                               40, 7)
    port = _free_port()
    server = _serve(instance, port)
    _wait_up(server, f"http://127.0.0.1:{port}/")
    store = Store(instance / "gallery.db")
    deadline = time.time() + 240
    while store.get_job(job).done < 1 and time.time() < deadline:
        time.sleep(0.1)
    assert requests.get(f"http://127.0.0.1:{port}/api/jobs", timeout=30).headers["Server"] == "clip-curator"
    server.send_signal(signal.SIGINT)
    out, _ = server.communicate(timeout=120)
    assert server.returncode == 0, out[-2000:]
    assert "finishing the current image" in out and "stopped" in out
    stopped = store.get_job(job)
    assert stopped.status == "queued" and stopped.worker is None and 1 <= stopped.done < 40
    files = {p.relative_to(instance).as_posix() for p in (instance / "images" / f"job{job:06d}").iterdir()}
    assert files == store.image_paths(job)  # every finished image is whole and recorded, nothing else
    store.close()


def test_ctrl_c_stops_the_worker_command_between_images(tmp_path):
    from gallery.store import Store

    instance = tmp_path / "instance"
    with Store(instance / "gallery.db") as store:
        job = store.create_job("generate", tiny_recipe("a red square on a white background", steps=20).to_json(), 40, 3)
    worker = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--instance", str(instance), "worker"],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = Store(instance / "gallery.db")
    deadline = time.time() + 240
    while store.get_job(job).done < 1 and time.time() < deadline and worker.poll() is None:
        time.sleep(0.05)
    worker.send_signal(signal.SIGINT)
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0 and "worker stopped" in out, out[-2000:]
    stopped = store.get_job(job)
    assert stopped.status == "queued" and 1 <= stopped.done < 40 and stopped.error is None
    store.close()
