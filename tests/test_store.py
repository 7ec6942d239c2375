import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from gallery.store import SCHEMA_VERSION, Store
from generate.errors import ImageNotFound, JobNotFound


def _image(store, job_id, idx, **kw):
    args = dict(job_id=job_id, idx=idx, seed=100 + idx, path=f"images/{job_id}/{idx}.png", width=32, height=32,
                recipe_json="{}", prompt="p", model="tiny", clip_model="c", embedding=np.arange(4) + 1.0,
                embedding_model="c")
    args.update(kw)
    return store.add_image(**args)


def test_schema_version_and_wal(store):
    assert store.schema_version == SCHEMA_VERSION >= 1
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    again = Store(store.path)  # re-opening runs no migration twice
    assert again.schema_version == SCHEMA_VERSION
    again.close()


def test_refuses_a_newer_schema(instance):
    path = instance / "gallery.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this clip-curator"):
        Store(path)


def test_image_row_and_job_count_commit_together(store):
    job = store.create_job("generate", '{"prompt": "p"}', 3, 100)
    image_id = _image(store, job, 0)
    assert store.get_job(job).done == 1
    emb = store.embedding(image_id)
    assert emb.dtype == np.float32 and np.isclose(np.linalg.norm(emb), 1.0)
    with pytest.raises(sqlite3.IntegrityError):  # same index twice: nothing changes
        _image(store, job, 0, path="images/other.png")
    assert store.get_job(job).done == 1 and store.count_images() == 1


def test_star_and_missing_ids(store):
    job = store.create_job("generate", "{}", 1, 0)
    image_id = _image(store, job, 0)
    store.star(image_id)
    assert store.get_image(image_id)["starred"] == 1
    store.star(image_id, False)
    assert store.get_image(image_id)["starred"] == 0
    with pytest.raises(ImageNotFound):
        store.star(9999)
    with pytest.raises(JobNotFound):
        store.get_job(9999)


def test_claim_excludes_live_workers_and_takes_over_dead_ones(store):
    job = store.create_job("generate", "{}", 1, 0)
    assert store.claim_job(job, "otherhost:1")  # queued: anyone may claim
    assert not store.claim_job(job, "me:2")  # held by a worker with a fresh heartbeat
    # A worker on this host whose process has exited is dead, whatever its heartbeat says.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    store.conn.execute("UPDATE jobs SET worker = ? WHERE id = ?", (f"{socket.gethostname()}:{dead.stdout.strip()}", job))
    assert store.claim_next_job("me:2").id == job


def test_cancel_queued_job(store):
    job = store.create_job("generate", "{}", 1, 0)
    store.request_cancel(job)
    assert store.get_job(job).status == "cancelled"
    assert store.claim_next_job("me:1") is None
