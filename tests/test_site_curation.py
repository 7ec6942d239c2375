"""The triage views and actions through Flask's test client: what each view shows, fragments for
endless paging, the bulk API, the trash, empty views, the new-prompt form, lineage on the image page."""
import html
import re

import pytest
from PIL import Image

from conftest import new_image, tiny_recipe
from gallery.web import create_app


def _csrf(client, url="/jobs"):
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(url).get_data(as_text=True)).group(1)


@pytest.fixture
def client(instance):
    return create_app({"INSTANCE": str(instance), "TESTING": True, "PAGE_SIZE": 3}).test_client()


def _images(store, instance, n, **kw):
    ids = []
    for i in range(n):
        rel = f"images/imported/{i}.png"
        (instance / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10 * i, 0, 0)).save(instance / rel)
        ids.append(store.add_image(new_image(path=rel, prompt=f"image {i}", kind="imported",
                                             source_path=f"/old/pictures/file-{i}.png", **kw)))
    return ids


def _ids(body: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="cell[^"]*"\s+data-id="(\d+)"', body)]


def test_views_show_what_they_should_and_fragments_continue_them(client, store, instance):
    ids = _images(store, instance, 7)
    store.reject([ids[6]])
    store.star(ids[0])
    page = client.get("/").get_data(as_text=True)
    assert _ids(page) == [ids[5], ids[4], ids[3]]  # newest first, the rejected one left out
    nxt = re.search(r'data-next="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert nxt.startswith("/cells/gallery?") and f"before={ids[3]}" in nxt
    more = client.get(nxt).get_data(as_text=True)
    assert _ids(more) == [ids[2], ids[1], ids[0]] and "<html" not in more
    assert re.search(r'data-next="([^"]*)"', more).group(1) == ""  # that was the last page
    assert _ids(client.get("/favourites").get_data(as_text=True)) == [ids[0]]
    assert _ids(client.get("/trash").get_data(as_text=True)) == [ids[6]]
    older = client.get(f"/?before={ids[3]}").get_data(as_text=True)
    assert f'href="/?after={ids[2]}"' in older.replace("&amp;", "&")  # a way back to newer images
    assert _ids(client.get(f"/?after={ids[2]}").get_data(as_text=True)) == [ids[5], ids[4], ids[3]]


def test_html_pages_are_never_served_from_a_cache(client, store, instance):
    _images(store, instance, 1)
    for url in ("/", "/trash", "/image/1", "/jobs"):
        assert client.get(url).headers["Cache-Control"] == "no-store", url


def test_each_empty_view_says_why(client, store):
    assert "No images yet" in client.get("/").get_data(as_text=True)
    assert "No favourites yet" in client.get("/favourites").get_data(as_text=True)
    assert "The trash is empty" in client.get("/trash").get_data(as_text=True)
    assert "stars and rejects" in client.get("/likely-rejects").get_data(as_text=True)


def test_more_results_only_when_there_are_more(client, store, instance, models):
    import torch

    from search.embed import Embedder

    app = create_app({"INSTANCE": str(instance), "TESTING": True, "PAGE_SIZE": 3}, models=models)
    client = app.test_client()
    ids = _images(store, instance, 4)
    emb = Embedder(models.clip("tiny", torch.device("cpu")))
    store.put_embeddings(emb.id, [(i, emb.pixels([Image.open(instance / store.get_image(i).path)])[0]) for i in ids])
    first = client.get("/?q=red").get_data(as_text=True)
    assert len(_ids(first)) == 3 and "More results" in first
    second = client.get("/?q=red&page=2").get_data(as_text=True)
    assert len(_ids(second)) == 1 and "More results" not in second


def test_the_bulk_api_acts_on_a_selection_in_one_request(client, store, instance):
    ids = _images(store, instance, 4)
    token = _csrf(client)
    r = client.post("/api/images/bulk", json={"ids": ids[:3], "action": "reject"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and sorted(r.get_json()["ids"]) == ids[:3]
    assert store.rejected_ids() == set(ids[:3])
    bad = client.post("/api/images/bulk", json={"ids": [ids[3], 999], "action": "star"},
                      headers={"X-CSRF-Token": token})
    assert bad.status_code == 404 and not store.get_image(ids[3]).starred
    assert client.post("/api/images/bulk", json={"ids": [], "action": "star"},
                       headers={"X-CSRF-Token": token}).status_code == 400
    emptied = client.post("/api/trash/empty", headers={"X-CSRF-Token": token}).get_json()
    assert sorted(emptied["deleted"]) == ids[:3] and store.count_images() == 1


def test_the_image_page_shows_lineage_the_source_file_and_a_4x_badge(client, store, instance):
    (parent,) = _images(store, instance, 1)
    up_rel = "images/upscaled/0000/1-compact.png"
    (instance / up_rel).parent.mkdir(parents=True)
    Image.new("RGB", (128, 128)).save(instance / up_rel)
    up = store.add_image(new_image(path=up_rel, prompt="", kind="upscaled", parent_id=parent, upscaler="compact",
                                   width=128, height=128))
    job = store.create_job("generate", tiny_recipe().to_json(), 1, 0, {"parent": parent})
    rel = "images/job000001/00000-0.png"
    (instance / rel).parent.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(instance / rel)
    child = store.add_image(new_image(job, 0, path=rel, recipe_json=tiny_recipe().to_json()))
    imported = html.unescape(client.get(f"/image/{parent}").get_data(as_text=True))
    assert "file-0.png" in imported and 'name="model"' in imported  # regenerate from an import: pick a model
    assert "4×" in client.get(f"/image/{up}").get_data(as_text=True)
    assert "Regenerated from" in client.get(f"/image/{child}").get_data(as_text=True)
    grid = client.get("/").get_data(as_text=True)
    assert f'data-id="{up}"' in grid and 'class="badge">4×' in grid  # stacked with its parent, badged


def test_the_new_prompt_form_queues_a_job_and_refuses_bad_input_in_one_line(client, store):
    token = _csrf(client)
    r = client.post("/jobs/new", data={"prompt": "a red circle", "model": "tiny", "n": "3", "csrf_token": token})
    assert r.status_code == 302 and store.list_jobs()[0].n == 3
    bad = client.post("/jobs/new", data={"prompt": "a red circle", "model": "tiny", "n": "0", "csrf_token": token})
    assert bad.status_code == 400 and "n must be a whole number from 1 to 10000, not 0" in html.unescape(
        bad.get_data(as_text=True))
    assert len(store.list_jobs()) == 1


def test_the_jobs_api_and_page_give_duration_and_an_eta(client, store):
    job = store.create_job("generate", tiny_recipe().to_json(), 10, 0)
    store.claim_job(job, "me:1")
    store.conn.execute("UPDATE jobs SET started = '2026-01-01T00:00:00.000000Z', done = 4 WHERE id = ?", (job,))
    got = client.get("/api/jobs?active=1").get_json()["jobs"][0]
    assert got["duration"] > 0 and got["eta"] == pytest.approx(got["duration"] / 4 * 6, rel=0.01)
    store.finish_job(job, "done")
    assert client.get("/api/jobs?active=1").get_json()["jobs"] == []
