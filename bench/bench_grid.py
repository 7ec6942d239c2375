"""Benchmark: server time of the gallery grid at 100k images, first page and a deep page.

    python bench/bench_grid.py              # 100k rows, 200 requests per figure
    python bench/bench_grid.py --rows 20000

Seeds a fresh store under bench/out/ with N image rows (small generated PNGs shared between
rows, so seeding stays quick; the grid page itself never reads image files), then renders the
grid through Flask's test client, in this process, and prints p50/p99 server time for the
newest page, a deep keyset page (``?before=`` near the oldest rows), a starred-only page and a
prompt-keyword page. The baseline, run in the same process, is the same deep page fetched with
LIMIT/OFFSET, which is what keyset pagination avoids. Target: < 50 ms for first and deep pages.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["owl", "fish", "castle", "portrait", "forest", "watercolor", "oil painting", "trending on artstation",
         "by James Gurney", "child's drawing", "victorian", "orchid", "4k", "fresco", "acrylic"]


def seed(instance: Path, rows: int) -> None:
    """Write ``rows`` image rows (and a few hundred tiny PNGs) straight into a new store."""
    from PIL import Image

    from gallery.store import Store, now

    store = Store(instance / "gallery.db")
    rng = random.Random(0)
    files = []
    folder = instance / "images" / "seed"
    folder.mkdir(parents=True)
    for i in range(256):
        path = folder / f"{i}.png"
        Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3))).save(path)
        files.append(path.relative_to(instance).as_posix())
    jobs = rows // 100
    t = now()
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO jobs (id, kind, status, recipe, n, seed, done, created, updated) "
            "VALUES (?, 'generate', 'done', '{}', 100, 0, 100, ?, ?)", [(j + 1, t, t) for j in range(jobs)])
        batch = []
        for i in range(rows):
            prompt = " ".join(rng.sample(WORDS, 3))
            recipe = json.dumps({"prompt": prompt, "seed": i, "steps": 100, "model": "uncond-256"})
            batch.append((i // 100 + 1, i % 100, i, f"{files[i % 256][:-4]}-{i}.png", 256, 256, prompt, recipe,
                          t, int(rng.random() < 0.07)))
            if len(batch) == 10_000:
                store.conn.executemany(
                    "INSERT INTO images (job_id, idx, seed, path, width, height, prompt, recipe, created, starred) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
                batch = []
        if batch:
            store.conn.executemany(
                "INSERT INTO images (job_id, idx, seed, path, width, height, prompt, recipe, created, starred) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
    store.conn.execute("ANALYZE")
    store.close()


def timed(client, url: str, repeats: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of server time for GET url."""
    for _ in range(5):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, url
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main(argv=None) -> int:
    """Seed, render, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args(argv)
    instance = ROOT / "bench" / "out" / "grid"
    shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True)
    t = time.perf_counter()
    seed(instance, a.rows)
    print(f"seeded {a.rows:,} rows in {time.perf_counter() - t:.1f} s")

    from flask import render_template

    from gallery.store import Filters, ImageRow
    from gallery.web import create_app
    from gallery.web.browse import Listing
    from gallery.web.context import get_store, services
    from gallery.web.params import GridQuery
    from search.stacks import stack_page

    app = create_app({"INSTANCE": str(instance)})

    @app.route("/offset-baseline")
    def offset_baseline():  # the same deep page, fetched the way keyset pagination avoids, shown the same way
        store = get_store()
        rows = [ImageRow.from_row(r) for r in store.conn.execute(
            "SELECT * FROM images WHERE rejected IS NULL AND upscaler IS NULL ORDER BY id DESC LIMIT 60 OFFSET ?",
            (a.rows - 1000,))]
        page = Listing(stack_page(store, rows, services().search_model(store)), next={"before": rows[-1].id})
        return render_template("browse/grid.html", view="gallery", title="Gallery", listing=page, q="",
                               args=GridQuery(), filters=Filters(), empty="")

    client = app.test_client()
    figures = [
        ("first page", "/"),
        ("deep page (keyset, ~1000 newest-from-oldest)", "/?before=1000"),
        ("starred only, first page", "/?starred=1"),
        ("prompt keyword 'owl', first page", "/?keyword=owl"),
        ("baseline: deep page by LIMIT/OFFSET", "/offset-baseline"),
    ]
    print(f"\n| grid page, {a.rows:,} images | p50 ms | p99 ms |\n|---|---|---|")
    results = {}
    for name, url in figures:
        p50, p99 = timed(client, url, a.repeats)
        results[name] = p50
        print(f"| {name} | {p50:.1f} | {p99:.1f} |")
    deep = results["deep page (keyset, ~1000 newest-from-oldest)"]
    print(f"\nkeyset deep page vs OFFSET baseline: {results['baseline: deep page by LIMIT/OFFSET'] / deep:.1f}x faster")
    ok = results["first page"] < 50 and deep < 50
    print("PASS: first and deep pages under 50 ms" if ok else "FAIL: a page took 50 ms or more")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
