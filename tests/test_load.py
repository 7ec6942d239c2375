"""Concurrent requests against the served site while a worker writes images: none may fail."""
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import tiny_recipe


def test_concurrent_requests_while_a_worker_writes(instance, models, caplog):
    from werkzeug.serving import make_server

    from gallery import create_app
    from gallery.store import Store
    from generate.worker import Worker

    store = Store(instance / "gallery.db")
    store.create_job("generate", tiny_recipe("a red circle on a white background", steps=4).to_json(), 6, 1)
    app = create_app({"INSTANCE": str(instance)})
    app.extensions["clip_curator"]["models"] = models
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    worker = Worker(Store(instance / "gallery.db"), models, "cpu")
    wt = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    wt.start()

    session = requests.Session()
    token = re.search(r'name="csrf-token" content="([^"]+)"', session.get(base + "/").text).group(1)
    failures, done = [], []

    def client(n: int):
        s = requests.Session()
        s.cookies.update(session.cookies)
        deadline = time.time() + 60  # bounded in time as well as in count
        for i in range(25):
            if time.time() > deadline:
                break
            paths = ["/", "/jobs", "/api/jobs", "/api/images?limit=10", "/favourites", "/?q=red"]
            r = s.get(base + paths[(n + i) % len(paths)], timeout=30)
            if r.status_code != 200:
                failures.append((r.url, r.status_code, r.text[:200]))
            ids = [img["id"] for img in s.get(base + "/api/images?limit=5", timeout=30).json()["images"]]
            if ids:
                r = s.post(f"{base}/api/images/{ids[i % len(ids)]}/star", json={"starred": i % 2 == 0},
                           headers={"X-CSRF-Token": token}, timeout=30)
                if r.status_code != 200:
                    failures.append((r.url, r.status_code, r.text[:200]))
            done.append(1)

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(client, range(6)))
        wt.join(timeout=300)
    finally:
        worker.stopping = True
        server.shutdown()
    assert failures == []
    assert len(done) >= 60
    assert store.get_job(1).status == "done" and store.get_job(1).done == 6
    assert "database is locked" not in caplog.text
    store.close()
