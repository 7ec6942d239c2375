"""What a hostile user tried against the site, each kept as its reproduction: redirects, rebinding,
brute force, stale sessions, shared caches, malformed values, oversized bodies."""
import re

import pytest
from PIL import Image

from conftest import new_image, tiny_recipe
from gallery.instance import Instance
from gallery.web import create_app
from gallery.web.auth import set_password


def _csrf(client, url="/"):
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(url).get_data(as_text=True)).group(1)


@pytest.fixture
def gated(instance):
    """A password-protected gallery's app."""
    set_password(Instance(instance), "correct horse")
    return create_app({"INSTANCE": str(instance), "TESTING": True})


def _login(client, password="correct horse", next_url=None):
    token = _csrf(client, "/login")
    url = "/login" + (f"?next={next_url}" if next_url is not None else "")
    return client.post(url, data={"password": password, "csrf_token": token})


@pytest.mark.parametrize("next_url, location", [
    ("/%09/evil.example/", "/"), ("%09//evil.example", "/"), ("/%5Cevil.example", "/"), ("//evil.example", "/"),
    ("https://evil.example/", "/"), (" //evil.example", "/"), ("/%0A/evil.example", "/"),
    ("javascript:alert(1)", "/"), ("/\\/evil.example", "/"),
    # Browsers drop these characters too, which leaves a harmless path on this site.
    ("/%0D%0ASet-Cookie:x=1", "/Set-Cookie:x=1"), ("%00/evil.example", "/evil.example"),
])
def test_login_never_redirects_off_site(gated, next_url, location):
    r = _login(gated.test_client(), next_url=next_url)
    assert r.status_code == 302 and r.headers["Location"] == location


def test_login_keeps_a_same_site_next_path(gated):
    r = _login(gated.test_client(), next_url="/image/3%3Fstarred%3D1")
    assert r.headers["Location"] == "/image/3?starred=1"


@pytest.fixture
def open_app(instance):
    return create_app({"INSTANCE": str(instance), "TESTING": True})


def test_dns_rebinding_gets_nothing_without_a_password(open_app, store, instance):
    job = store.create_job("generate", '{"prompt": "x"}', 3, 0)
    client = open_app.test_client()
    for host in ("evil.example", "evil.example:5000", "127.0.0.1.evil.example", "192.168.1.20:5000"):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 400 and "csrf-token" not in r.get_data(as_text=True), host
        assert client.post(f"/api/jobs/{job}/cancel", headers={"Host": host}).status_code == 400
    for host in ("localhost", "127.0.0.1:5000", "[::1]:5000", "LOCALHOST"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    Instance(instance).update_config(allowed_hosts=["gallery.lan"])
    assert client.get("/", headers={"Host": "gallery.lan:8080"}).status_code == 200
    assert store.get_job(job).status == "queued"


def test_a_foreign_origin_cannot_change_anything(open_app, store):
    job = store.create_job("generate", '{"prompt": "x"}', 3, 0)
    client = open_app.test_client()
    token = _csrf(client)
    r = client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert r.status_code == 403 and store.get_job(job).status == "queued"
    ok = client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": token, "Origin": "http://localhost"})
    assert ok.status_code == 200 and store.get_job(job).status == "cancelled"


def test_wrong_passwords_are_limited_per_address(gated):
    client = gated.test_client()
    codes = [_login(client, "wrong password").status_code for _ in range(50)]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    limited = _login(client, "wrong password")
    assert "Too many wrong passwords" in limited.get_data(as_text=True)
    other = gated.test_client()  # another address is not held up by this one
    r = other.post("/login", data={"password": "correct horse", "csrf_token": _csrf(other, "/login")},
                   environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert r.status_code == 302


def test_logout_and_a_new_password_end_sessions_on_the_server(gated, instance):
    client = gated.test_client()
    assert _login(client).status_code == 302
    stolen = client.get_cookie("session").value  # a copy of the cookie, kept by someone else
    thief = gated.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/").status_code == 200
    client.post("/logout", data={"csrf_token": _csrf(client)})
    assert thief.get("/").status_code == 302 and thief.get("/api/images").status_code == 401
    # Log in again on two browsers; a new password ends both.
    assert _login(client).status_code == 302
    second = gated.test_client()
    assert _login(second).status_code == 302
    set_password(Instance(instance), "a brand new secret")
    assert client.get("/").status_code == 302 and second.get("/").status_code == 302
    assert _login(second, "correct horse").status_code == 200  # the old password is gone too
    assert _login(second, "a brand new secret").status_code == 302


def test_images_behind_a_login_are_never_cached_publicly(gated, instance):
    from gallery.store import Store

    with Store(instance / "gallery.db") as store:
        rel = "images/imported/00000.png"
        (instance / rel).parent.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(instance / rel)
        image_id = store.add_image(new_image(path=rel))
    client = gated.test_client()
    _login(client)
    for url in (f"/image/{image_id}/file", f"/image/{image_id}/thumb"):
        r = client.get(url)
        assert r.status_code == 200 and "private" in r.headers["Cache-Control"]
        assert "public" not in r.headers["Cache-Control"]


def test_the_session_cookie_is_secure_over_https(gated):
    client = gated.test_client()
    token = _csrf(client, "/login")
    r = client.post("/login", data={"password": "correct horse", "csrf_token": token},
                    base_url="https://localhost", headers={"Referer": "https://localhost/login"})
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]


@pytest.mark.parametrize("url", ["/?before=99999999999999999999", "/?job=abc", "/?job=-1", "/?starred=perhaps",
                                 "/api/images?before=1e30", "/api/images?limit=0", "/api/search?like=" + str(2 ** 70),
                                 "/api/search?q=red&k=100000", "/image/1?job=" + str(2 ** 64),
                                 "/?page=0", "/api/images?job=9223372036854775808"])
def test_malformed_query_values_are_a_400_with_one_line(open_app, store, url):
    store.add_image(new_image(path="images/x.png"))
    r = open_app.test_client().get(url)
    assert r.status_code == 400, (url, r.status_code)
    message = r.get_json()["error"] if url.startswith("/api/") else r.get_data(as_text=True)
    assert "Traceback" not in message and "must be" in message


@pytest.mark.parametrize("path, body, words", [
    ("regenerate", {"prompt": 5}, "prompt must be"), ("regenerate", {"n": True}, "n must be"),
    ("regenerate", {"init_strength": "nan"}, "init_strength must be"), ("regenerate", {"bogus": 1}, "unknown setting"),
    ("regenerate", [1, 2], "must be a JSON object"), ("upscale", {"model": ["x"]}, "model must be"),
    ("upscale", {"model": "x8"}, "unknown upscaler"), ("star", {"starred": "yes"}, "starred must be"),
    ("star", "not json", "must be a JSON object"),
])
def test_malformed_bodies_are_a_400_and_change_nothing(open_app, store, instance, path, body, words):
    image_id = store.add_image(new_image(path="images/x.png", recipe_json=tiny_recipe().to_json()))
    client = open_app.test_client()
    kwargs = {"json": body} if not isinstance(body, str) else {"data": body, "content_type": "application/json"}
    r = client.post(f"/api/images/{image_id}/{path}", headers={"X-CSRF-Token": _csrf(client)}, **kwargs)
    assert r.status_code == 400 and words in r.get_json()["error"], r.get_json()
    assert store.list_jobs() == [] and store.get_image(image_id).starred is False


def test_bodies_over_the_limit_are_refused(open_app, store):
    image_id = store.add_image(new_image(path="images/x.png"))
    client = open_app.test_client()
    r = client.post(f"/api/images/{image_id}/star", data=b"x" * (2 << 20), content_type="application/json",
                    headers={"X-CSRF-Token": _csrf(client)})
    assert r.status_code == 413 and store.get_image(image_id).starred is False


def test_thumbnails_of_broken_or_vanished_files_are_404_not_500(open_app, store, instance):
    good = instance / "images" / "good.png"
    good.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(good)
    good_id = store.add_image(new_image(path="images/good.png"))
    (instance / "images" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 50)
    garbage_id = store.add_image(new_image(path="images/garbage.png"))
    truncated = instance / "images" / "truncated.png"
    Image.new("RGB", (64, 64), (200, 1, 1)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:120])
    truncated_id = store.add_image(new_image(path="images/truncated.png"))
    client = open_app.test_client()
    assert client.get(f"/image/{good_id}/thumb").status_code == 200
    for image_id in (garbage_id, truncated_id):
        assert client.get(f"/image/{image_id}/thumb").status_code == 404
    good.unlink()  # the file goes behind the gallery's back: its cached thumbnail must not be served
    assert client.get(f"/image/{good_id}/thumb").status_code == 404
