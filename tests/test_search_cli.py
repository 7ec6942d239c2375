"""The search, index, import and delete commands through the real CLI."""
import json
import random

from generate.tiny.shapes import Drawing, draw


def _folder(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    rng = random.Random(3)
    for i, c in enumerate(["red", "red", "blue", "blue", "green"]):
        draw(Drawing(c, "circle", "white"), 32, rng).save(folder / f"{i}-{c}.png")
    (folder / "broken.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPjunk")
    (folder / "readme.txt").write_text("hello")
    return folder


def test_import_then_search_then_delete(cli, tmp_path, instance):
    folder = _folder(tmp_path)
    first = cli("import", folder)
    assert first.exit_code == 0, first.output
    assert "imported 5 new, 0 changed, 0 unchanged, 2 skipped" in first.output
    assert "broken.webp: unreadable" in first.output and "readme.txt: not an image file" in first.output
    second = cli("import", folder)
    assert "imported 0 new, 0 changed, 5 unchanged, 2 skipped" in second.output

    result = cli("search", "red", "-k", "2", "--json")
    hits = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(hits) == 2 and all("-red.png" in h["path"] or h["score"] > 0 for h in hits)
    red_ids = [h["id"] for h in hits]
    imported_names = {h["id"]: h["path"] for h in hits}
    assert all((instance / p).is_file() for p in imported_names.values())

    assert cli("delete", red_ids[0]).exit_code == 0
    after = cli("search", "red", "-k", "5", "--json")
    assert red_ids[0] not in [json.loads(line)["id"] for line in after.output.strip().splitlines()]

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
