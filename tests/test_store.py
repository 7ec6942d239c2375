import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, new_image
from gallery.errors import ImageNotFound, JobNotFound, SchemaTooNew
from gallery.store import SCHEMA_VERSION, Embedding, Filters, Store

RELEASED_V3 = ROOT / "tests" / "fixtures" / "released-v3.db"


def _image(store, job_id, idx, **kw):
    return store.add_image(new_image(job_id, idx, seed=100 + idx, model="tiny", clip_model="c", **kw),
                           Embedding("c", np.arange(4) + 1.0))


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
    with pytest.raises(SchemaTooNew, match="newer than this clip-curator"):
        Store(path)


def _schema(conn, skip=()):
    return {(t, n, " ".join((sql or "").split())) for t, n, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT IN (SELECT value FROM json_each(?))",
        (json.dumps(list(skip)),))}


def test_a_database_of_the_first_release_keeps_every_row_embedding_and_star(tmp_path):
    # The fixture was written by the first released clip-curator (schema 3): a generate job with
    # two images (one starred) and their embeddings of two CLIPs, an imported image, an upscale.
    db = tmp_path / "gallery.db"
    shutil.copy(RELEASED_V3, db)
    old = sqlite3.connect(db)
    before_images = old.execute("SELECT * FROM images ORDER BY id").fetchall()
    before_emb = old.execute("SELECT image_id, model, vector FROM embeddings ORDER BY model, image_id").fetchall()
    before_jobs = old.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    released_schema = _schema(old)
    old.close()
    assert len(before_images) == 4 and len(before_emb) == 4
    store = Store(db)
    assert store.schema_version == SCHEMA_VERSION
    after = sqlite3.connect(db)
    migrated = after.execute("SELECT * FROM images ORDER BY id").fetchall()
    assert [r[:len(before_images[0])] for r in migrated] == before_images  # every column as it was
    # unrated, not rejected, made on no recorded node, from no template
    assert [r[len(before_images[0]):] for r in migrated] == [(0, None, None, None)] * 4
    assert after.execute("SELECT image_id, model, vector FROM embeddings ORDER BY model, image_id").fetchall() \
        == before_emb
    assert after.execute("SELECT * FROM jobs ORDER BY id").fetchall() == before_jobs
    assert [r.starred for r in store.page_images()] == [False, False, True, False]
    assert store.get_image(4).parent_id == 2 and store.upscale_of(2, "compact") == 4
    assert store.embedding(1, "ViT-B-32/openai").shape == (512,)
    assert [r.id for r in store.page_images(Filters(keyword="owl"))] == [4, 2, 1]  # the prompt index came along
    # A new database gets exactly the schema the migrations made of the released one.
    fresh = Store(tmp_path / "new.db")
    migrated_schema = _schema(after)
    assert _schema(fresh.conn) == migrated_schema
    assert {n for _, n, _ in released_schema} < {n for _, n, _ in migrated_schema}  # nothing dropped
    fresh.close()
    after.close()
    store.close()


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
    assert store.get_image(image_id).starred is True
    store.star(image_id, False)
    assert store.get_image(image_id).starred is False
    with pytest.raises(ImageNotFound):
        store.star(9999)
    with pytest.raises(JobNotFound):
        store.get_job(9999)
    for huge in (2 ** 63, 2 ** 70, -1):  # ids no row can have are simply not found
        with pytest.raises(ImageNotFound):
            store.get_image(huge)
        with pytest.raises(JobNotFound):
            store.get_job(huge)


def test_bulk_star_changes_all_or_nothing(store):
    job = store.create_job("generate", "{}", 2, 0)
    a, b = _image(store, job, 0), _image(store, job, 1)
    with pytest.raises(ImageNotFound, match="image 999"):
        store.set_starred([a, 999, b], True)
    assert not store.get_image(a).starred and not store.get_image(b).starred
    store.set_starred([a, b], True)
    assert store.get_image(a).starred and store.get_image(b).starred


def test_concurrent_toggles_never_lose_a_flip(instance, store):
    # Two connections flipping the same star 50 times each: one UPDATE per flip, so an even
    # number of flips always leaves it where it started.
    job = store.create_job("generate", "{}", 1, 0)
    image_id = _image(store, job, 0)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from gallery.store import Store; "
            "s = Store(sys.argv[1]); [s.toggle_star(1) for _ in range(50)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.path), str(ROOT)]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert store.get_image(image_id).starred is False


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
    assert store.request_cancel(job).status == "cancelled"
    assert store.get_job(job).status == "cancelled"
    assert store.claim_next_job("me:1") is None


def test_sessions_are_revocable(store):
    a, b = store.create_session(), store.create_session()
    assert store.session_valid(a) and store.session_valid(b) and not store.session_valid("forged")
    store.end_session(a)
    assert not store.session_valid(a) and store.session_valid(b)
    assert store.end_all_sessions() == 1 and not store.session_valid(b)
    # Only a hash of the token is kept: the database alone cannot forge a session.
    assert b not in str(store.conn.execute("SELECT * FROM sessions").fetchall())


HOLD_READ_MARKS = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123, 0)  # the WAL index's five read-mark locks
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_write_outlasts_sqlites_own_patience_with_a_lost_lock_race(store):
    # A process that holds the WAL's read marks makes SQLite give up with "locking protocol" after
    # about ten seconds; the transaction starts again once they are free, and the write lands.
    job = store.create_job("generate", "{}", 1, 0)
    image_id = _image(store, job, 0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_READ_MARKS, f"{store.path}-shm", "11"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        store.set_starred([image_id], True)
    finally:
        holder.kill()
        holder.wait()
    assert store.get_image(image_id).starred
