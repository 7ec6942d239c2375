"""The search, index, import and delete commands through the real CLI."""
import json
import random
from pathlib import Path

from generate.tiny.shapes import Drawing, draw

COLOURS = ["red", "red", "blue", "blue", "green"]


def _folder(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    rng = random.Random(3)
    for i, c in enumerate(COLOURS):
        draw(Drawing(c, "circle", "white"), 32, rng).save(folder / f"{i}-{c}.png")
    (folder / "broken.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPjunk")
    (folder / "readme.txt").write_text("hello")
    return folder


def _hits(result):
    return [json.loads(line) for line in result.output.strip().splitlines()]


def test_import_then_search_then_delete(cli, tmp_path, instance, store):
    folder = _folder(tmp_path)
    first = cli("import", folder)
    assert first.exit_code == 0, first.output
    assert "imported 5 new, 0 changed, 0 unchanged, 2 skipped" in first.output
    assert "broken.webp: unreadable" in first.output and "readme.txt: not an image file" in first.output
    second = cli("import", folder)
    assert "imported 0 new, 0 changed, 5 unchanged, 2 skipped" in second.output

    colour_of = {r.id: Path(r.source_path).stem.split("-")[1] for r in store.page_images()}
    hits = _hits(cli("search", "red", "-k", "5", "--json"))
    # Both red drawings rank above every other colour, with scores in order.
    assert [colour_of[h["id"]] for h in hits[:2]] == ["red", "red"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all((instance / h["path"]).is_file() for h in hits)
    assert [colour_of[h["id"]] for h in _hits(cli("search", "blue", "-k", "2", "--json"))] == ["blue", "blue"]

    red_ids = [h["id"] for h in hits[:2]]
    gone = Path(hits[0]["path"])
    assert cli("delete", red_ids[0]).exit_code == 0
    after = _hits(cli("search", "red", "-k", "5", "--json"))
    assert [h["id"] for h in after][0] == red_ids[1] and red_ids[0] not in [h["id"] for h in after]
    assert not gone.exists()

    rebuilt = cli("index", "--rebuild")
    assert rebuilt.exit_code == 0 and "4 images indexed" in rebuilt.output


def test_search_errors_are_one_line(cli, tmp_path):
    cli("import", _folder(tmp_path))
    for args, words in [(["search", ""], "query is empty"), (["search", "?!?"], "no words"),
                        (["search", "x" * 10_000], "limit is"), (["search"], "give a query"),
                        (["search", "--like", "999"], "image 999 doesn't exist"),
                        (["search", "red", "--page", "0"], "--page must be")]:
        r = cli(*args)
        assert r.exit_code != 0 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
