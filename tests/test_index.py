"""The vector index against hostile index files: real hnswlib, real SQLite, crashes kept in child processes."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gallery.errors import IndexUnusable  # noqa: E402
from search.index import GalleryIndex, exact_search  # noqa: E402

MODEL = "ViT-T/test"
N, DIM = 10_000, 64
EXACT_BELOW = 100  # so that hnswlib serves this gallery
MIB = 1 << 20
GARBAGE_ID = 0x7FFF_FFF0


def _vectors(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors, as CLIP embeddings are (uniform ones make 'nearest' meaningless)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 64, n)] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A gallery database with N embeddings, made once; each test works on a copy."""
    from gallery.store import Embedding, NewImage, Store

    path = tmp_path_factory.mktemp("template") / "gallery.db"
    with Store(path) as s:
        s.conn.execute("PRAGMA synchronous = OFF")  # a scratch database: no need to wait for the disk
        for i, v in enumerate(_vectors(N, 0)):
            s.add_image(NewImage(path=f"i/{i}.png", width=1, height=1, recipe_json="{}", prompt=""),
                        Embedding(MODEL, v))
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def db(template, tmp_path) -> Path:
    shutil.copy(template, tmp_path / "gallery.db")
    return tmp_path / "gallery.db"


@pytest.fixture
def store(db):
    from gallery.store import Store

    s = Store(db)
    yield s
    s.close()


def _exact(store, query, k, allowed=None):
    ids, mats = zip(*store.iter_embeddings(MODEL, ids=allowed))
    return exact_search(np.concatenate(mats), np.concatenate(ids), query, k)[0]


def _queries(n=20, seed=1):
    """Fresh queries near stored images, as a search for "more like this one" is."""
    rng = np.random.default_rng(seed)
    q = _vectors(N, 0)[rng.integers(0, N, n)] + 0.1 * rng.normal(size=(n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _built(store, folder) -> GalleryIndex:
    index = GalleryIndex(store, MODEL, folder, exact_below=EXACT_BELOW)
    index.sync()
    assert index.kind == "hnsw" and index.rebuilt and index.path.stat().st_size > 3 * MIB
    return index


def _old_fingerprint(path: Path) -> str:
    """A cheap fingerprint that hashes only the size and the first and last MiB of a file."""
    data = path.read_bytes()
    return hashlib.blake2b(str(len(data)).encode() + data[:MIB] + data[-MIB:]).hexdigest()


def _damage_links(path: Path) -> None:
    """Overwrite the level-0 link ids of every element lying wholly between the first and the last MiB."""
    data = bytearray(path.read_bytes())
    n, per, max_m0 = (int.from_bytes(data[o:o + 8], "little") for o in (16, 24, 72))
    first, last = (MIB - 96) // per + 1, (len(data) - MIB - 96) // per - 1
    level0 = np.frombuffer(data, dtype=np.uint32, count=n * per // 4, offset=96).reshape(n, per // 4).copy()
    level0[first:min(last, n), 1:1 + max_m0] = GARBAGE_ID
    data[96:96 + n * per] = level0.tobytes()
    path.write_bytes(bytes(data))


# Shared by the child scripts: open the copied store and compare the index with the exact scan.
CHILD = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from gallery.store import Store
from search.index import GalleryIndex, exact_search
from gallery.files import sha256_file
store, folder, queries, MODEL = Store(sys.argv[1]), Path(sys.argv[2]), np.load(sys.argv[3]), sys.argv[4]
ids, mats = zip(*store.iter_embeddings(MODEL))
ids, mats = np.concatenate(ids), np.concatenate(mats)
truth = [exact_search(mats, ids, q, 10)[0].tolist() for q in queries]
def recall(index):
    return float(np.mean([len(set(index.search(q, 10)[0].tolist()) & set(t)) / 10 for q, t in zip(queries, truth)]))
def exact_answers(index):
    return all(index.search(q, 10)[0].tolist() == t for q, t in zip(queries, truth))
def trusted(index):
    return json.loads(index.path.with_suffix(".json").read_text())["checksum"] == sha256_file(index.path)
"""


def _run(code: str, *args) -> dict:
    """Run CHILD and then code in a child Python (a crash fails the test, not pytest); its JSON last line."""
    done = subprocess.run([sys.executable, "-c", CHILD + textwrap.dedent(code), *map(str, args), MODEL],
                          cwd=ROOT, capture_output=True, check=False, text=True, timeout=120)
    assert done.returncode == 0, f"child exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_damaged_graph_crashes_raw_hnswlib_but_search_answers_and_repair_restores_it(store, db, tmp_path):
    folder = tmp_path / "index"
    path = _built(store, folder).path
    before = _old_fingerprint(path)
    _damage_links(path)
    assert _old_fingerprint(path) == before  # the size and first and last MiB vouch for nothing in between
    queries = tmp_path / "q.npy"
    np.save(queries, _queries())
    raw = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import hnswlib, numpy as np
        index = hnswlib.Index(space="ip", dim={DIM})
        index.load_index({str(path)!r})
        index.set_ef(128)
        vectors = index.get_items(np.arange(1, {N} + 1, 37))
        print(index.knn_query(np.asarray(vectors, dtype=np.float32), k=10)[0][:1])
        """)], capture_output=True, check=False, timeout=120)
    assert raw.returncode < 0, "plain hnswlib must die of a signal on this file, as the site did"

    got = _run("""
    index = GalleryIndex(store, MODEL, folder, exact_below=100)
    first = exact_answers(index)
    damaged, note, untrusted = index.damaged, index.note, not trusted(index)
    status = index.repair()
    again = GalleryIndex(store, MODEL, folder, exact_below=100)
    again.sync()
    print(json.dumps(dict(first=first, damaged=damaged, note=note, untrusted=untrusted, status=status,
                          rebuilt=index.rebuilt, trusted=trusted(index), reopened_rebuilt=again.rebuilt,
                          recall=recall(again), kind=again.kind, note_after=again.note)))
    """, db, folder, queries)
    assert got["first"] and got["untrusted"]  # exact answers while the file is not trusted
    assert "checksum" in got["damaged"] and "clip-curator index" in got["note"] and "\n" not in got["note"]
    assert got["rebuilt"] and "rebuilt" in got["status"] and "checksum" in got["status"]
    assert got["trusted"] and not got["reopened_rebuilt"] and got["note_after"] is None
    assert got["kind"] == "hnsw" and got["recall"] >= 0.95


def test_a_forged_header_is_caught_by_the_test_load_in_a_child_process(store, db, tmp_path):
    folder = tmp_path / "index"
    path = _built(store, folder).path
    _damage_links(path)
    header = path.with_suffix(".json")
    forged = json.loads(header.read_text()) | {"checksum": hashlib.sha256(path.read_bytes()).hexdigest()}
    header.write_text(json.dumps(forged))
    queries = tmp_path / "q.npy"
    np.save(queries, _queries())
    got = _run("""
    index = GalleryIndex(store, MODEL, folder, exact_below=100)
    first = exact_answers(index)
    damaged = index.damaged
    index.sync()
    print(json.dumps(dict(first=first, damaged=damaged, rebuilt=index.rebuilt, recall=recall(index))))
    """, db, folder, queries)
    assert got["first"] and "test of it" in got["damaged"] and "a link of its graph" in got["damaged"]
    assert got["rebuilt"] and got["recall"] >= 0.95


def test_background_repair_answers_exactly_at_once_then_swaps_in_a_trusted_index(store, db, tmp_path):
    folder = tmp_path / "index"
    path = _built(store, folder).path
    _damage_links(path)
    queries = tmp_path / "q.npy"
    np.save(queries, _queries())
    got = _run("""
    index = GalleryIndex(store, MODEL, folder, exact_below=100, background_repair=True)
    index.search(queries[0], 10)
    note = index.note  # read at once: the rebuild of 10k vectors takes a second or more
    first = exact_answers(index)
    done = index.wait(60)
    print(json.dumps(dict(first=first, note=note, done=done, rebuilt=index.rebuilt, note_after=index.note,
                          recall=recall(index), trusted=trusted(index), status=index.status)))
    """, db, folder, queries)
    assert got["first"] and "background" in got["note"]
    assert got["done"] and got["rebuilt"] and got["note_after"] is None and got["trusted"]
    assert got["recall"] >= 0.95 and "checksum" in got["status"]
    reopened = GalleryIndex(store, MODEL, folder, exact_below=EXACT_BELOW)
    reopened.sync()
    assert not reopened.rebuilt and reopened.note is None


def test_a_same_size_change_anywhere_fails_the_checksum(store, tmp_path):
    folder = tmp_path / "index"
    path = _built(store, folder).path
    data = bytearray(path.read_bytes())
    before = _old_fingerprint(path)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert _old_fingerprint(path) == before
    index = GalleryIndex(store, MODEL, folder, exact_below=EXACT_BELOW)
    q = _queries(1)[0]
    assert index.search(q, 10)[0].tolist() == _exact(store, q, 10).tolist()
    assert "checksum does not match" in index.damaged
    index.sync()
    assert index.rebuilt and index.note is None
    header = json.loads(path.with_suffix(".json").read_text())
    assert header["checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("breakage", ["file is a folder", "folder is a file"])
def test_an_unusable_index_location_searches_exactly_and_repair_says_what_to_do(store, tmp_path, breakage):
    folder = tmp_path / "index"
    index = _built(store, folder)
    shutil.rmtree(folder)
    if breakage == "file is a folder":
        index.path.mkdir(parents=True)
    else:
        folder.write_text("not a folder")
    fresh = GalleryIndex(store, MODEL, folder, exact_below=EXACT_BELOW)
    q = _queries(1)[0]
    assert fresh.search(q, 10)[0].tolist() == _exact(store, q, 10).tolist()
    assert fresh.note and "clip-curator index" in fresh.note
    for call in (fresh.repair, fresh.sync):
        with pytest.raises(IndexUnusable) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and str(index.path if breakage == "file is a folder" else folder) in message
        assert "clip-curator index" in message
    assert fresh.search(q, 10)[0].tolist() == _exact(store, q, 10).tolist()


def test_a_broad_filter_on_a_large_index_uses_hnswlib_filter_and_matches_the_exact_scan(store, tmp_path):
    index = _built(store, tmp_path / "index")
    rng = np.random.default_rng(2)
    allowed = sorted(int(i) for i in rng.choice(np.arange(1, N + 1), size=N // 5, replace=False))
    calls = []
    real = index._hnsw.index

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def knn_query(self, data, **kwargs):
            calls.append(kwargs)
            return real.knn_query(data, **kwargs)

    index._hnsw.index = Spy()
    queries = _queries(20, seed=3)
    same = 0
    for q in queries:
        got = index.search(q, 10, allowed)[0].tolist()
        assert set(got) <= set(allowed) and len(got) == 10
        same += got == _exact(store, q, 10, allowed).tolist()
    assert same >= 19
    assert len(calls) == len(queries) and all(callable(c["filter"]) and c["k"] == 10 for c in calls)
    few = allowed[:EXACT_BELOW]  # a narrow filter is scanned exactly, without hnswlib
    assert index.search(queries[0], 10, few)[0].tolist() == _exact(store, queries[0], 10, few).tolist()
    assert len(calls) == len(queries)


def test_deleted_and_added_rows_keep_the_index_in_step_without_a_rebuild(store, tmp_path):
    from gallery.store import Embedding, NewImage

    index = _built(store, tmp_path / "index")
    v = _queries(1, seed=9)[0]
    new_id = store.add_image(NewImage(path="i/new.png", width=1, height=1, recipe_json="{}", prompt=""),
                             Embedding(MODEL, v))
    assert index.search(v, 1)[0].tolist() == [new_id] and not index.rebuilt
    store.delete_image(new_id)
    reopened = GalleryIndex(store, MODEL, tmp_path / "index", exact_below=EXACT_BELOW)
    assert new_id not in reopened.search(v, 50)[0].tolist() and not reopened.rebuilt and reopened.note is None
