"""The site in real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

Screenshots of the grid and the image page are saved under artifacts/ for a person to look at.
"""
import os
import random
import threading
from pathlib import Path

import pytest
import torch

from conftest import ARTIFACTS, cells, images_loaded, no_alert, tiny_recipe, wait_for

XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def site(tmp_path_factory, models):
    """A gallery with drawn imports and a generated job, served on 127.0.0.1 with a worker."""
    from waitress.server import create_server

    from gallery.instance import Instance
    from gallery.store import Store
    from gallery.web import create_app
    from generate.queue import GenerateRunner, Worker
    from generate.tiny.shapes import Drawing, draw
    from search.embed import Embedder
    from search.importer import import_folder

    os.environ["CLIP_CURATOR_OFFLINE"] = "1"
    instance = Instance(tmp_path_factory.mktemp("site") / "instance")
    instance.root.mkdir()
    store = Store(instance.db_path)
    folder = instance.root.parent / "drawn"
    folder.mkdir()
    rng = random.Random(7)
    for i in range(3):
        draw(Drawing("red", "circle", "white"), 32, rng).save(folder / f"red-{i}.png")
        draw(Drawing("blue", "square", "white"), 32, rng).save(folder / f"blue-{i}.png")
    import_folder(store, Embedder(models.clip("tiny", torch.device("cpu"))), instance, folder)
    job = store.create_job("generate", tiny_recipe(XSS, steps=5).to_json(), 2, 21)
    GenerateRunner(store, instance, models, "cpu").run(job)

    app = create_app({"INSTANCE": str(instance.root)}, models=models)
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    worker = Worker.standard(Store(instance.db_path), instance, models, "cpu")
    wt = threading.Thread(target=worker.run, kwargs={"poll_s": 0.2}, daemon=True)
    wt.start()
    yield {"url": f"http://127.0.0.1:{server.effective_port}", "store": store, "instance": instance}
    worker.stop()
    server.close()
    wt.join(timeout=60)
    store.close()


def test_star_by_key_and_by_click_persists_after_reload(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(site["url"] + "/")
    grid = cells(browser)
    assert len(grid) == 8
    wait_for(lambda: images_loaded(browser), what="thumbnails to load")
    browser.save_screenshot(str(ARTIFACTS / "grid.png"))
    first, second = grid[0].get_attribute("data-id"), grid[1].get_attribute("data-id")
    browser.find_element(By.TAG_NAME, "body").send_keys("s")
    wait_for(lambda: site["store"].get_image(int(first)).starred, what="star by key")
    grid[1].find_element(By.CSS_SELECTOR, "button.star").click()
    wait_for(lambda: site["store"].get_image(int(second)).starred, what="star by click")
    # Clicking made the second cell the current one; the arrow key moves on from there.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT, "s")
    third = cells(browser)[2].get_attribute("data-id")
    wait_for(lambda: site["store"].get_image(int(third)).starred, what="star after arrow keys")
    browser.refresh()
    starred = {c.get_attribute("data-id") for c in cells(browser) if c.get_attribute("data-starred") == "1"}
    assert {first, second, third} <= starred
    assert browser.find_element(By.CSS_SELECTOR, f'.cell[data-id="{first}"] button.star').text == "★"


def test_search_by_phrase_finds_the_red_drawings(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(site["url"] + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys("red circle", Keys.ENTER)
    wait_for(lambda: "q=red" in browser.current_url, what="search page")
    ids = [int(c.get_attribute("data-id")) for c in cells(browser)[:3]]
    sources = [site["store"].get_image(i).source_path or "" for i in ids]
    assert all(Path(s).name.startswith("red-") for s in sources), sources


def test_image_page_shows_recipe_and_escapes_the_prompt(site, browser):
    from selenium.webdriver.common.by import By

    row = site["store"].images_for_job(1)[0]
    browser.get(site["url"] + f"/image/{row.id}")
    assert no_alert(browser)
    recipe = browser.find_element(By.CSS_SELECTOR, "table.recipe").text
    assert f"seed {row.seed}" in recipe and "steps 5" in recipe and "model tiny" in recipe
    assert browser.find_element(By.CSS_SELECTOR, "h1.prompt").text == XSS
    assert browser.find_elements(By.CSS_SELECTOR, "video.animation, img.animation")
    wait_for(lambda: images_loaded(browser), what="the image to load")
    wait_for(lambda: browser.execute_script("return document.querySelector('video.animation').readyState >= 2"),
             what="the animation to load")
    browser.save_screenshot(str(ARTIFACTS / "image.png"))
    for url in ("/", "/jobs", "/?q=alert", "/?keyword=script"):
        browser.get(site["url"] + url)
        assert no_alert(browser), url
        assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']"), url
    browser.get(site["url"] + "/jobs")
    assert XSS in browser.find_element(By.ID, "jobs").text


def test_queue_an_upscale_and_a_regeneration_and_watch_them_finish(site, browser):
    from selenium.webdriver.common.by import By

    store = site["store"]
    row = store.images_for_job(1)[1]
    browser.get(site["url"] + f"/image/{row.id}")
    browser.find_element(By.CSS_SELECTOR, "button.upscale").click()
    wait_for(lambda: "queued as job" in browser.find_element(By.ID, "toast").text, what="upscale toast")
    form = browser.find_element(By.CSS_SELECTOR, "form.regenerate")
    n = form.find_element(By.NAME, "n")
    n.clear()
    n.send_keys("1")
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(lambda: browser.current_url.endswith("/jobs"), what="jobs page")

    def statuses():
        rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
        return {r.get_attribute("data-id"): r.find_element(By.CSS_SELECTOR, ".status").text.split("\n")[0]
                for r in rows}
    # The page updates itself from /api/jobs: no reload here.
    wait_for(lambda: list(statuses().values())[:2] == ["done", "done"], timeout=240, what="both jobs done")
    up = store.upscale_of(row.id, "x4plus")
    assert up is not None and store.get_image(up).width == 4 * row.width
    newest = store.list_jobs(limit=1)[0]
    assert newest.kind == "generate" and newest.done == 1 and newest.params["parent"] == row.id
    browser.get(site["url"] + f"/image/{row.id}")
    assert browser.find_element(By.CSS_SELECTOR, "a.child").get_attribute("href").endswith(f"/image/{up}")
