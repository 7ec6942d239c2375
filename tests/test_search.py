"""CLIP search over a gallery of drawn images of known colours and shapes, on the tiny CLIP."""
import random

import pytest
import torch

from gallery.errors import BadRequest
from generate.tiny.shapes import Drawing, draw
from gallery.instance import Instance
from search.embed import Embedder
from search.importer import import_folder
from search.index import GalleryIndex
from gallery.store import Filters
from search.query import Searcher, parse_query

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square"]


@pytest.fixture
def embedder(models):
    return Embedder(models.clip("tiny", torch.device("cpu")))


@pytest.fixture
def drawn(tmp_path):
    """A folder of 4 colours x 2 shapes x 3 drawings on white; returns {filename: Drawing}."""
    folder = tmp_path / "drawn"
    folder.mkdir()
    rng = random.Random(1)
    truth = {}
    for c in COLOURS:
        for s in SHAPES:
            for i in range(3):
                d = Drawing(c, s, "white")
                name = f"{c}-{s}-{i}.png"
                draw(d, 32, rng).save(folder / name)
                truth[name] = d
    return folder, truth


def searcher_of(store, embedder, instance):
    return Searcher(store, embedder, GalleryIndex(store, embedder.id, instance / "index"))


def _truth_of(row, truth):
    return truth[row.source_path.rsplit("/", 1)[-1]]


@pytest.fixture
def gallery(store, embedder, instance, drawn):
    folder, truth = drawn
    report = import_folder(store, embedder, Instance(instance), folder)
    assert len(report.added) == len(truth) and not report.skipped
    return truth


@pytest.mark.parametrize("exact_below", [10_000, 0], ids=["exact", "hnsw"])
def test_colour_query_ranks_that_colour_first(store, embedder, instance, gallery, exact_below):
    searcher = Searcher(store, embedder, GalleryIndex(store, embedder.id, instance / "index", exact_below=exact_below))
    for colour in ("red", "blue"):
        hits = searcher.text(colour, k=6)
        got = [_truth_of(h.row, gallery).colour for h in hits]
        precision = got.count(colour) / 6
        assert precision >= 5 / 6, (colour, got)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert searcher.index.kind == ("exact" if exact_below else "hnsw")


def test_more_like_a_red_circle_returns_red_circles_first(store, embedder, instance, gallery):
    searcher = searcher_of(store, embedder, instance)
    red_circle = next(r for r in store.images_by_ids(range(1, 100))
                      if _truth_of(r, gallery) == Drawing("red", "circle", "white"))
    hits = searcher.like(red_circle.id, k=3)
    assert red_circle.id not in [h.id for h in hits]
    top = [_truth_of(h.row, gallery) for h in hits]
    assert [(d.colour, d.shape) for d in top[:2]] == [("red", "circle")] * 2, top


def test_filters_and_paging(store, embedder, instance, gallery):
    searcher = searcher_of(store, embedder, instance)
    blue = [h.id for h in searcher.text("blue", k=24)]
    store.star(blue[-1])
    starred = searcher.text("blue", k=5, filters=Filters(starred=True))
    assert [h.id for h in starred] == [blue[-1]]
    page2 = searcher.text("blue", k=4, offset=4)
    assert [h.id for h in page2] == blue[4:8]


def test_prompt_keyword_filter_uses_fts(store, embedder, instance, gallery):
    searcher = searcher_of(store, embedder, instance)
    ids = [h.id for h in searcher.text("red", k=3)]
    store.conn.execute("UPDATE images SET prompt = 'an owl, watercolor' WHERE id = ?", (ids[2],))
    hits = searcher.text("red", k=5, filters=Filters(keyword='owl "'))
    assert [h.id for h in hits] == [ids[2]]


def test_text_arithmetic(store, embedder, instance, gallery):
    searcher = searcher_of(store, embedder, instance)
    hits = searcher.text('"circle" + "red" - "blue"', k=3)
    assert all(_truth_of(h.row, gallery).colour == "red" for h in hits)


@pytest.mark.parametrize("query", ["", "   ", "x" * 10_000, "!!! ??? ...", '"unclosed', '- "blue"'])
def test_bad_queries_get_a_clear_error(query, store, embedder, instance, gallery):
    searcher = searcher_of(store, embedder, instance)
    with pytest.raises(BadRequest):
        searcher.text(query)


def test_incremental_add_and_delete_without_rebuild(store, embedder, instance, gallery, tmp_path):
    index = GalleryIndex(store, embedder.id, instance / "index", exact_below=0)
    searcher = Searcher(store, embedder, index)
    searcher.text("red", k=3)
    assert index.rebuilt  # first build
    extra = tmp_path / "extra"
    extra.mkdir()
    draw(Drawing("purple", "star", "white"), 32, random.Random(5)).save(extra / "purple.png")
    new_id = import_folder(store, embedder, Instance(instance), extra).added[0]
    hits = searcher.text("purple", k=1)
    assert hits[0].id == new_id and not index.rebuilt  # topped up, not rebuilt
    store.delete_image(new_id)
    assert new_id not in [h.id for h in searcher.text("purple", k=30)]
    assert not index.rebuilt


def _fresh_index(store, embedder, instance):
    return GalleryIndex(store, embedder.id, instance / "index", exact_below=0)


def test_stale_truncated_and_foreign_index_files_are_rebuilt(store, embedder, instance, gallery):
    index = _fresh_index(store, embedder, instance)
    index.sync()
    path = index.path
    # Reopen an intact file: trusted, not rebuilt.
    again = _fresh_index(store, embedder, instance)
    again.sync()
    assert not again.rebuilt
    # Truncated file: detected, rebuilt, and results are complete.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    t = _fresh_index(store, embedder, instance)
    t.sync()
    assert t.rebuilt and len(t.search(embedder.texts(["red"])[0], 100)[0]) == len(gallery)
    # Another model's file under this name: rebuilt, never trusted.
    header = path.with_suffix(".json")
    header.write_text(header.read_text().replace(embedder.id, "ViT-B-32/openai"))
    f = _fresh_index(store, embedder, instance)
    f.sync()
    assert f.rebuilt
    # Stale: a row deleted behind the index's back (another process) never comes back.
    victim = f.search(embedder.texts(["red"])[0], 1)[0][0]
    store.delete_image(int(victim))
    s = _fresh_index(store, embedder, instance)
    assert int(victim) not in s.search(embedder.texts(["red"])[0], 100)[0].tolist()


def test_import_names_bad_files_and_second_run_embeds_nothing(store, embedder, instance, drawn, tmp_path):
    folder, truth = drawn
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (folder / "notes.txt").write_text("not an image")
    jpg = folder / "photo.jpg"
    draw(Drawing("green", "star", "black"), 32).save(jpg)
    first = import_folder(store, embedder, Instance(instance), folder)
    assert len(first.added) == len(truth) + 1
    skipped = dict(first.skipped)
    assert set(skipped) == {str((folder / "corrupt.png").resolve()), str((folder / "notes.txt").resolve())}

    calls = []
    real = embedder.pixels
    embedder.pixels = lambda images: calls.append(images) or real(images)
    second = import_folder(store, embedder, Instance(instance), folder)
    assert second.added == [] and second.updated == [] and calls == []
    assert second.unchanged == len(truth) + 1
    # A changed file is re-embedded, in place of its old row.
    draw(Drawing("red", "star", "white"), 32).save(jpg)
    third = import_folder(store, embedder, Instance(instance), folder)
    assert len(third.updated) == 1 and len(calls) == 1
    assert store.count_images() == len(truth) + 1


def test_recipe_is_read_from_imported_pngs(store, embedder, instance, tmp_path):
    from PIL import Image

    from gallery.recipe import Recipe, png_info

    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a.png",
                                                   pnginfo=png_info(Recipe(prompt="an owl", seed=4)))
    image_id = import_folder(store, embedder, Instance(instance), folder).added[0]
    row = store.get_image(image_id)
    assert row.prompt == "an owl" and '"seed":4' in row.recipe
    assert (instance / row.path).is_file() and str(instance) not in row.path


def test_parse_query_terms():
    assert parse_query('"owl" + "watercolor" - "photo"') == [("owl", 1.0), ("watercolor", 1.0), ("photo", -1.0)]
    assert parse_query("child's drawing") == [("child's drawing", 1.0)]


def test_import_skips_oversized_files_and_link_loops_by_name_and_goes_on(store, embedder, instance, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    draw(Drawing("red", "circle", "white"), 32).save(folder / "a-good.png")
    Image.new("1", (20000, 20000)).save(folder / "b-huge.png")  # 400 megapixels, small on disk
    draw(Drawing("blue", "square", "white"), 32).save(folder / "c-good.png")
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)  # a folder link leading back up
    report = import_folder(store, embedder, Instance(instance), folder)
    assert len(report.added) == 2
    skipped = dict(report.skipped)
    assert "over the limit of" in skipped[str((folder / "b-huge.png").resolve())]
    assert skipped[str(folder / "loop")] == "symbolic link loop"
    assert skipped[str(folder / "gone.png")] == "broken symbolic link"
    assert any("link loop" in why for path, why in report.skipped if path.endswith("up"))
