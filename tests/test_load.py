"""Concurrent requests against the production server while a worker writes images: none may fail."""
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import requests

from conftest import tiny_recipe


def _epoch(created: str) -> float:
    return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_concurrent_requests_while_a_worker_writes(instance, inst, models, caplog):
    from waitress.server import create_server

    from gallery.store import Store
    from gallery.web import create_app
    from generate.queue import Worker

    store = Store(inst.db_path)
    store.create_job("generate", tiny_recipe("a red circle on a white background", steps=4).to_json(), 6, 1)
    app = create_app({"INSTANCE": str(instance)}, models=models)
    server = create_server(app, host="127.0.0.1", port=0, threads=8, ident="clip-curator")
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    worker = Worker.standard(Store(inst.db_path), inst, models, "cpu")

    session = requests.Session()
    first = session.get(base + "/")
    assert first.headers["Server"] == "clip-curator"  # no server or Python versions
    token = re.search(r'name="csrf-token" content="([^"]+)"', first.text).group(1)
    failures, answered = [], []

    def client(n: int):
        s = requests.Session()
        s.cookies.update(session.cookies)
        deadline = time.time() + 120  # bounded in time; otherwise busy until the worker is done
        i = 0
        while time.time() < deadline and (i < 25 or wt.is_alive()):
            i += 1
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
            answered.append(time.time())
            if i >= 25:
                time.sleep(0.1)  # keep asking while the worker writes, without starving it of the CPU

    wt = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            wt.start()
            list(pool.map(client, range(6)))
        wt.join(timeout=300)
    finally:
        worker.stop()
        server.close()
    assert failures == []
    assert len(answered) >= 60
    assert store.get_job(1).status == "done" and store.get_job(1).done == 6
    # The requests really overlapped the worker's writes: many were answered between its first and
    # last recorded image.
    written = sorted(_epoch(r.created) for r in store.images_for_job(1))
    during = [t for t in answered if written[0] <= t <= written[-1]]
    assert len(during) >= 10, (len(during), written[-1] - written[0])
    assert "database is locked" not in caplog.text
    store.close()
