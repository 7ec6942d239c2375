"""The site through Flask's test client: pages, API, CSRF, login, files, escaping."""
import html
import json
import re

import pytest

from conftest import new_image, tiny_recipe
from gallery.instance import Instance
from gallery.web import create_app
from gallery.web.auth import set_password

XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


def _image(store, job_id, idx, prompt="a red circle", instance=None, recipe=None):
    from PIL import Image
    rel = f"images/job{job_id:06d}/{idx:05d}.png"
    if instance is not None:
        (instance / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 30, 30)).save(instance / rel)
    recipe = recipe or json.dumps({"prompt": prompt, "seed": idx})
    return store.add_image(new_image(job_id, idx, path=rel, prompt=prompt, recipe_json=recipe, model="tiny",
                                     clip_model="tiny-clip/tiny-clip.pt"))


@pytest.fixture
def app(instance):
    return create_app({"INSTANCE": str(instance), "TESTING": True, "PAGE_SIZE": 3})


@pytest.fixture
def client(app):
    return app.test_client()


def _csrf(client, url="/"):
    html = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def test_grid_pages_newest_first_with_keyset_pagination(client, store, instance):
    job = store.create_job("generate", "{}", 7, 0)
    ids = [_image(store, job, i, instance=instance) for i in range(7)]
    first = client.get("/api/images?limit=3").get_json()
    assert [i["id"] for i in first["images"]] == ids[::-1][:3]
    second = client.get(f"/api/images?limit=3&before={first['next_before']}").get_json()
    assert [i["id"] for i in second["images"]] == ids[::-1][3:6]
    html = client.get("/").get_data(as_text=True)
    assert f'href="/?before={ids[4]}"' in html.replace("&amp;", "&")
    assert client.get(f"/image/{ids[0]}/thumb").status_code == 200
    assert (instance / "thumbs").is_dir()


def test_star_needs_csrf_and_persists(client, store, instance):
    job = store.create_job("generate", "{}", 1, 0)
    image_id = _image(store, job, 0, instance=instance)
    assert client.post(f"/api/images/{image_id}/star", json={"starred": True}).status_code == 403
    assert client.post(f"/api/images/{image_id}/star", json={"starred": True},
                       headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert store.get_image(image_id).starred is False
    token = _csrf(client)
    r = client.post(f"/api/images/{image_id}/star", json={"starred": True}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.get_json() == {"id": image_id, "starred": True}
    assert store.get_image(image_id).starred is True
    flipped = client.post(f"/api/images/{image_id}/star", headers={"X-CSRF-Token": token})
    assert flipped.get_json() == {"id": image_id, "starred": False} and not store.get_image(image_id).starred
    assert client.post(f"/image/{image_id}/regenerate", data={"n": 1}).status_code == 403


def test_missing_ids_and_paths_outside_the_instance_are_404(client, store, instance):
    for url in ["/image/999", "/image/999/file", "/image/999/thumb", "/image/../../etc/passwd",
                "/image/%2e%2e/%2e%2e/etc/passwd", "/api/images/999/star", "/api/nope", "/static/../cli.py",
                "/image/99999999999999999999", "/image/9223372036854775808/file", "/image/0"]:
        assert client.get(url).status_code == 404, url
    job = store.create_job("generate", "{}", 1, 0)
    sneaky = store.add_image(new_image(job, 0, path="../../../etc/passwd", width=1, height=1, prompt=""))
    assert client.get(f"/image/{sneaky}/file").status_code == 404
    assert client.get(f"/image/{sneaky}/thumb").status_code == 404
    token = _csrf(client)
    r = client.post("/api/images/999/star", json={}, headers={"X-CSRF-Token": token})
    assert r.status_code == 404 and "999" in r.get_json()["error"]
    page = client.get("/image/999").get_data(as_text=True)
    assert "image 999 doesn't exist" in html.unescape(page)
    assert 'href="/favourites"' in page  # a styled page with the navigation


def test_prompts_are_escaped_on_every_page(client, store, instance):
    job = store.create_job("generate", json.dumps({"prompt": XSS}), 1, 0)
    image_id = _image(store, job, 0, prompt=XSS, instance=instance)
    for url in ["/", f"/image/{image_id}", "/jobs", "/?keyword=script", f"/?q={XSS}"]:
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert(1)" not in html and "<img src=x" not in html, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/image/{image_id}").get_data(as_text=True)


def test_security_headers(client):
    r = client.get("/")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_password_gates_every_page_but_login(instance):
    set_password(Instance(instance), "correct horse")
    client = create_app({"INSTANCE": str(instance), "TESTING": True}).test_client()
    assert client.get("/").status_code == 302 and "/login" in client.get("/").headers["Location"]
    assert client.get("/api/images").status_code == 401
    assert client.get("/jobs").status_code == 302
    assert client.get("/login").status_code == 200
    token = _csrf(client, "/login")
    bad = client.post("/login", data={"password": "nope", "csrf_token": token})
    assert "Wrong password" in bad.get_data(as_text=True)
    ok = client.post("/login?next=//evil.example", data={"password": "correct horse", "csrf_token": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    cookie = ok.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_serve_refuses_a_public_address_without_a_password(cli, instance):
    r = cli("serve", "--host", "0.0.0.0", "--no-worker")
    assert r.exit_code != 0 and "without a password" in r.output and len(r.output.strip().splitlines()) == 1


def test_cancel_a_queued_job_through_the_api(client, store):
    job = store.create_job("generate", '{"prompt": "x"}', 3, 0)
    token = _csrf(client)
    r = client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert client.get("/api/jobs").get_json()["jobs"][0]["status"] == "cancelled"


def test_the_cli_the_form_and_the_api_refuse_the_same_bad_input_the_same_way(cli, client, store, instance):
    job = store.create_job("generate", "{}", 1, 0)
    image_id = _image(store, job, 0, instance=instance, recipe=tiny_recipe().to_json())
    token = _csrf(client)
    for n in ("0", "20000", "many"):
        api = client.post(f"/api/images/{image_id}/regenerate", json={"n": n}, headers={"X-CSRF-Token": token})
        form = client.post(f"/image/{image_id}/regenerate", data={"n": n, "csrf_token": token}, follow_redirects=True)
        message = api.get_json()["error"]
        assert api.status_code == 400 and message in html.unescape(form.get_data(as_text=True))
        if n != "many":  # click parses the number itself first
            assert cli("generate", "--model", "tiny", "-p", "x", "--n", n).output.strip() == f"Error: {message}"
    assert len(store.list_jobs()) == 1  # nothing was queued
