"""Triage in the store and the library: reject and restore with the family, the trash and its emptying
(also under SIGKILL), ratings and bulk actions, stacks, the taste model, and the text-query cache."""
import io
import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, new_image
from gallery.curate import BulkRequest, apply, empty_trash
from gallery.errors import BadRequest, ImageNotFound
from gallery.store import Embedding, Filters
from generate.tiny.shapes import Drawing, draw


def _file(inst, rel, colour=(200, 10, 10)):
    path = inst.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return rel


def _image(store, inst, name, **kw):
    rel = _file(inst, f"images/imported/{name}.png")
    return store.add_image(new_image(path=rel, prompt=name, **kw), Embedding("m", np.random.default_rng(len(name))
                                                                               .normal(size=8)))


def test_reject_moves_the_family_to_the_trash_and_restore_brings_it_back(store, inst):
    parent = _image(store, inst, "parent")
    child = _image(store, inst, "child", parent_id=parent, upscaler="compact", kind="upscaled")
    other = _image(store, inst, "other")
    assert sorted(store.reject([parent])) == [parent, child]
    assert [r.id for r in store.page_images()] == [other]
    assert sorted(r.id for r in store.page_images(Filters(trash=True))) == [parent, child]
    assert store.neighbours(other) == (None, None) and store.rejected_ids() == {parent, child}
    assert store.restore([parent]) == [parent, child]
    assert [r.id for r in store.page_images()] == [other, child, parent]


def test_bulk_actions_are_one_transaction_and_an_unknown_id_changes_nothing(store, inst):
    a, b = _image(store, inst, "a"), _image(store, inst, "b")
    with pytest.raises(ImageNotFound, match="image 999"):
        apply(store, {"ids": [a, 999, b], "action": "reject"})
    assert store.rejected_ids() == set()
    assert apply(store, BulkRequest(ids=[a, b], action="rate", rating=4)).ids == [a, b]
    assert [store.get_image(i).rating for i in (a, b)] == [4, 4]
    with pytest.raises(BadRequest, match="rating must be a whole number from 0 to 5"):
        apply(store, {"ids": [a], "action": "rate", "rating": 9})
    with pytest.raises(BadRequest, match="action must be star, unstar, reject, restore, rate, upscale, collect or uncollect"):
        apply(store, {"ids": [a], "action": "burn"})
    assert [r.id for r in store.page_images(Filters(min_rating=4))] == [b, a]


def test_emptying_the_trash_removes_rows_embeddings_files_and_index_entries_and_nothing_else(store, inst):
    from search.index import GalleryIndex

    keep = [_image(store, inst, f"keep{i}") for i in range(3)]
    gone = [_image(store, inst, f"gone{i}") for i in range(3)]
    index = GalleryIndex(store, "m", inst.index_dir, exact_below=0)
    index.sync()
    store.reject(gone)
    files = {i: inst.root / store.get_image(i).path for i in keep + gone}
    assert sorted(empty_trash(store, inst)) == gone
    assert [r.id for r in store.page_images()] == keep[::-1] and store.count_images() == 3
    assert store.embedding_ids("m") == set(keep) and store.purge_pending() == []
    assert all(files[i].exists() for i in keep) and not any(files[i].exists() for i in gone)
    found = index.search(np.ones(8, np.float32) / np.sqrt(8), 10)[0].tolist()
    assert sorted(found) == keep  # the index follows the database, no rebuild asked for


def _invariant(db, root):
    """(rows whose file is missing, files with no row that are not listed for deletion)."""
    conn = sqlite3.connect(db)
    try:
        rows = {p for (p,) in conn.execute("SELECT path FROM images")}
        listed = {p for (p,) in conn.execute("SELECT path FROM purge_queue")}
    finally:
        conn.close()
    on_disk = {p.relative_to(root).as_posix() for p in (root / "images").rglob("*.png")}
    return rows - on_disk, on_disk - rows - listed, listed


@pytest.mark.slow
def test_a_sigkill_while_emptying_loses_no_row_and_leaves_no_forgotten_file(store, inst):
    data = io.BytesIO()
    Image.new("RGB", (4, 4)).save(data, format="PNG")
    with store.transaction():  # 3,000 rejected images written straight in: setting the scene quickly
        for i in range(3000):
            rel = f"images/imported/{i % 50:02d}/{i}.png"
            (inst.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (inst.root / rel).write_bytes(data.getvalue())
            store.conn.execute("INSERT INTO images (path, width, height, prompt, recipe, created, kind, rejected) "
                               "VALUES (?, 4, 4, '', '{}', '2026-01-01', 'imported', '2026-01-02')", (rel,))
    cmd = [sys.executable, str(ROOT / "cli.py"), "--instance", str(inst.root), "trash", "--empty"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = sqlite3.connect(inst.db_path, timeout=30)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if watcher.execute("SELECT COUNT(*) FROM purge_queue").fetchone()[0]:
            proc.send_signal(signal.SIGKILL)  # rows deleted and committed, files still being deleted
            break
        time.sleep(0.001)
    proc.wait()
    watcher.close()
    missing, forgotten, listed = _invariant(inst.db_path, inst.root)
    assert proc.returncode == -signal.SIGKILL and listed, "the kill must land between the commit and the last file"
    assert missing == set() and forgotten == set()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _invariant(inst.db_path, inst.root) == (set(), set(), set())
    assert not list((inst.root / "images").rglob("*.png"))


@pytest.fixture(scope="module")
def clip(models):
    from search.embed import Embedder

    return Embedder(models.clip("tiny", torch.device("cpu")))


def _embedded(store, inst, clip, drawing, name, rng, jpeg=False):
    im = draw(drawing, 32, rng)
    if jpeg:  # the same picture again, as a seed that converged to it would be: re-encoded
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        im = Image.open(buf).convert("RGB")
    rel = f"images/imported/{name}.png"
    (inst.root / rel).parent.mkdir(parents=True, exist_ok=True)
    im.save(inst.root / rel)
    return store.add_image(new_image(path=rel, prompt=name, kind="imported"),
                           Embedding(clip.id, clip.pixels([im])[0]))


def test_an_image_with_its_upscale_and_a_near_copy_stack_but_different_images_do_not(store, inst, clip):
    from gallery.instance import STACK_THRESHOLD
    from search.stacks import stack_page

    rng = random.Random(4)
    a = _embedded(store, inst, clip, Drawing("red", "circle", "white"), "a", random.Random(1))
    near = _embedded(store, inst, clip, Drawing("red", "circle", "white"), "a-again", random.Random(1), jpeg=True)
    other = _embedded(store, inst, clip, Drawing("blue", "square", "yellow"), "b", rng)
    up = store.add_image(new_image(path=_file(inst, "images/upscaled/a.png"), prompt="a", kind="upscaled",
                                   parent_id=a, upscaler="compact"))
    rows = store.page_images(Filters(originals=True))
    stacks = stack_page(store, rows, clip.id, STACK_THRESHOLD)
    cells = sorted((s.lead.id, sorted(m.id for m in s.members)) for s in stacks)
    assert cells == sorted([(a, sorted([near, up])), (other, [])]) or cells == sorted([(near, sorted([a, up])),
                                                                                        (other, [])])
    # The control: with the threshold above any pair, the near copy stands alone; the upscale still joins.
    alone = sorted((s.lead.id, sorted(m.id for m in s.members)) for s in stack_page(store, rows, clip.id, 1.0))
    assert alone == sorted([(a, [up]), (near, []), (other, [])])


def test_the_taste_model_ranks_held_out_keepers_first_and_stays_off_with_too_few_labels(store, inst, clip):
    from search.taste import MIN_PER_CLASS, Taste, auc

    rng = random.Random(7)
    shapes = ["circle", "square", "triangle", "star"]
    backgrounds = ["white", "black", "yellow", "green"]
    made = {"red": [], "blue": []}
    for i in range(40):
        colour = "red" if i % 2 else "blue"
        made[colour].append(_embedded(store, inst, clip, Drawing(colour, shapes[i % 4], backgrounds[i // 4 % 4]),
                                      f"{colour}{i}", rng))
    taste = Taste(clip.id)
    store.set_starred(made["red"][:MIN_PER_CLASS - 1], True)
    store.reject(made["blue"][:MIN_PER_CLASS])
    assert taste.current(store) is None  # 7 keepers: not enough to learn from
    assert taste.rank(store, made["red"] + made["blue"]) == made["red"] + made["blue"]
    store.set_starred(made["red"][:12], True)
    store.reject(made["blue"][:12])
    model = taste.current(store)
    assert model is not None and (model.keepers, model.rejects) == (12, 12)
    held_out = made["red"][12:] + made["blue"][12:]
    scores = dict(taste.score_ids(store, model, held_out))
    labels = np.array([1] * 8 + [0] * 8)
    measured = auc(np.array([scores[i] for i in held_out]), labels)
    print(f"taste model AUC on held-out drawings: {measured:.3f}")
    assert measured >= 0.9
    ranked = taste.rank(store, held_out)
    assert sum(i in made["red"] for i in ranked[:8]) >= 7
    assert taste.current(store) is model  # not refitted while the labels stand
    store.set_rating([made["red"][13]], 5)
    assert taste.current(store) is not model


def test_query_embeddings_from_the_cache_and_the_real_tokens_equal_the_full_ones(models):
    import open_clip

    from generate.models import Clip
    from search.embed import Embedder

    tiny = models.clip("tiny", torch.device("cpu"))
    big = open_clip.create_model("ViT-B-32").eval()
    vit = Clip("ViT-B-32/random", big, open_clip.get_tokenizer("ViT-B-32"), 224, tiny.mean, tiny.std)
    texts = ["a red circle", "child's drawing of an owl, watercolor, trending on artstation", "x" * 400]
    for clip in (tiny, vit):
        full = clip.encode_text(texts).numpy()
        emb = Embedder(clip)
        first, cached = emb.texts(texts), emb.texts(texts[::-1])[::-1]
        assert np.abs(first - full).max() < 1e-5 and np.array_equal(first, cached)
    calls = []
    emb = Embedder(tiny, cache_size=2)
    real = tiny.encode_text
    tiny_calls = type("Spy", (), {})()
    tiny_calls.encode_text = lambda t, real_tokens_only=False: calls.append(list(t)) or real(t, real_tokens_only)
    tiny_calls.id, tiny_calls.image_size = tiny.id, tiny.image_size
    emb.clip = tiny_calls
    emb.texts(["a", "b"])
    emb.texts(["a", "b", "c"])  # a and b are cached; c is new and pushes a out
    emb.texts(["a"])
    assert calls == [["a", "b"], ["c"], ["a"]]
