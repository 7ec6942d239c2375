"""Triage in real headless Chromium: reject and undo, bulk selection, the lightbox across pages,
the trash, Back after a change, and a layout that survives a 5,000-character query."""
import random
import threading

import pytest
import torch

from conftest import cells, no_alert, wait_for

PAGE = 6


@pytest.fixture(scope="module")
def triage(tmp_path_factory, models):
    """16 imported drawings (8 red, 8 blue), pages of 6, served by waitress on 127.0.0.1."""
    from waitress.server import create_server

    from gallery.instance import Instance
    from gallery.store import Store
    from gallery.web import create_app
    from generate.tiny.shapes import SHAPES, Drawing, draw
    from search.embed import Embedder
    from search.importer import import_folder

    root = tmp_path_factory.mktemp("triage")
    instance = Instance(root / "instance")
    folder = root / "drawn"
    folder.mkdir()
    for i in range(16):
        colour = "red" if i % 2 else "blue"
        draw(Drawing(colour, SHAPES[i // 2 % 4], ["white", "black"][i // 8]), 32, random.Random(i)).save(
            folder / f"{i:02d}-{colour}.png")
    store = Store(instance.db_path)
    import_folder(store, Embedder(models.clip("tiny", torch.device("cpu"))), instance, folder)
    app = create_app({"INSTANCE": str(instance.root), "PAGE_SIZE": PAGE}, models=models)
    posts = []  # every POST the site receives, as the browser sent it

    @app.before_request
    def count_posts():
        from flask import request

        if request.method == "POST":
            posts.append(request.path)

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.effective_port}", "store": store, "instance": instance, "posts": posts}
    server.close()
    store.close()


@pytest.fixture
def page(triage, browser):
    """The gallery, freshly loaded, with every image restored, unstarred and unrated."""
    store = triage["store"]
    ids = [r.id for r in store.images_by_ids(range(1, 100))]
    store.restore(ids)
    store.set_starred(ids, False)
    store.set_rating(ids, 0)
    browser.get(triage["url"] + "/")
    wait_for(lambda: len(cells(browser)) >= PAGE, what="the first page")
    return browser


def keys(browser, *ks):
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(browser)
    for k in ks:
        chain.send_keys(k)
    chain.perform()


def test_reject_by_key_then_undo_by_key_and_by_the_toast(triage, page):
    from selenium.webdriver.common.by import By

    store = triage["store"]
    first = cells(page)[0]
    image_id = int(first.get_attribute("data-id"))
    shown = len(cells(page))
    keys(page, "x")
    wait_for(lambda: store.get_image(image_id).rejected is not None, what="the reject")
    # Gone from the view, no reload (the script hides it once the server has answered).
    wait_for(lambda: not first.is_displayed() and len(cells(page)) == shown - 1, what="the cell to leave")
    assert "current" in cells(page)[0].get_attribute("class")  # the next image has the focus
    keys(page, "z")
    wait_for(lambda: store.get_image(image_id).rejected is None, what="the undo")
    wait_for(first.is_displayed, what="the image to come back")
    keys(page, "x")
    wait_for(lambda: store.get_image(image_id).rejected is not None, what="the second reject")
    undo = page.find_element(By.CSS_SELECTOR, "#toast button.undo")
    wait_for(undo.is_displayed, what="the toast's Undo")
    undo.click()
    wait_for(lambda: store.get_image(image_id).rejected is None, what="the toast's undo")


def test_select_several_and_star_them_in_one_request(triage, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store = triage["store"]
    grid = cells(page)
    keys(page, "v", Keys.ARROW_RIGHT, "v")
    # Shift-click the fifth cell: a range from the last one picked.
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(page).key_down(Keys.SHIFT).click(grid[4].find_element(By.CSS_SELECTOR, "img")).key_up(
        Keys.SHIFT).perform()
    chosen = [int(c.get_attribute("data-id")) for c in cells(page) if "selected" in c.get_attribute("class")]
    assert len(chosen) == 5
    triage["posts"].clear()
    keys(page, "s")
    wait_for(lambda: all(store.get_image(i).starred for i in chosen), what="the bulk star")
    assert triage["posts"] == ["/api/images/bulk"]  # five images, one request
    assert not store.get_image(int(grid[5].get_attribute("data-id"))).starred
    keys(page, "3")
    wait_for(lambda: all(store.get_image(i).rating == 3 for i in chosen), what="the bulk rating")
    keys(page, Keys.ESCAPE)
    assert not [c for c in cells(page) if "selected" in c.get_attribute("class")]


def test_c_adds_the_selection_to_a_named_collection_and_z_takes_it_out_again(triage, page):
    from selenium.webdriver.common.keys import Keys

    from gallery.store import Filters

    store = triage["store"]
    assert [c.name for c in store.collections()] == ["drawn"]  # the imported folder
    keys(page, "v", Keys.ARROW_RIGHT, "v")
    chosen = {int(c.get_attribute("data-id")) for c in cells(page) if "selected" in c.get_attribute("class")}
    keys(page, "c")
    asked = wait_for(lambda: not no_alert(page) and page.switch_to.alert, what="the name prompt")
    asked.send_keys("keepers <i>")
    asked.accept()
    wait_for(lambda: set(store.ids_matching(Filters(collection="keepers <i>"))) == chosen, what="the collection")
    keys(page, Keys.ESCAPE, "z")
    wait_for(lambda: not store.ids_matching(Filters(collection="keepers <i>")), what="the undo")
    store.add_to_collection("keepers <i>", sorted(chosen))
    page.get(triage["url"] + "/?collection=keepers+<i>")
    wait_for(lambda: {int(c.get_attribute("data-id")) for c in cells(page)} == chosen, what="the filtered grid")


def test_the_lightbox_moves_past_the_page_and_acts_on_what_it_shows(triage, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store = triage["store"]
    box = page.find_element(By.ID, "lightbox")
    keys(page, Keys.ENTER)
    wait_for(box.is_displayed, what="the lightbox")
    first = cells(page)[0]
    assert box.find_element(By.TAG_NAME, "img").get_attribute("src").endswith(first.get_attribute("data-file"))
    keys(page, *[Keys.ARROW_RIGHT] * PAGE)  # one past the first page: the grid has loaded the next one
    wait_for(lambda: len(cells(page)) > PAGE, what="the next page")
    seventh = cells(page)[PAGE]
    wait_for(lambda: box.get_attribute("data-id") == seventh.get_attribute("data-id"), what="the 7th image")
    assert seventh.get_attribute("data-prompt") in box.text
    keys(page, "s", "4")
    seventh_id = int(seventh.get_attribute("data-id"))
    wait_for(lambda: store.get_image(seventh_id).starred and store.get_image(seventh_id).rating == 4,
             what="star and rating from the lightbox")
    keys(page, "x")
    wait_for(lambda: store.get_image(seventh_id).rejected is not None, what="reject from the lightbox")
    wait_for(lambda: box.get_attribute("data-id") != str(seventh_id), what="the lightbox to move on")
    shown = box.get_attribute("data-id")
    keys(page, Keys.ESCAPE)
    wait_for(lambda: not box.is_displayed(), what="the lightbox to close")
    current = page.find_element(By.CSS_SELECTOR, "#grid .cell.current")
    assert current.get_attribute("data-id") == shown  # closed where it was


def test_the_lightbox_steps_through_search_results_not_dates(triage, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page.get(triage["url"] + "/?q=red")
    results = [c.get_attribute("data-id") for c in cells(page)]
    assert len(results) >= PAGE
    box = page.find_element(By.ID, "lightbox")
    keys(page, Keys.ENTER, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    wait_for(lambda: box.get_attribute("data-id") == results[2], what="the third result")
    scores = [float(c.find_element(By.CSS_SELECTOR, ".score").text) for c in cells(page)]
    assert scores == sorted(scores, reverse=True)


def test_the_trash_shows_what_was_rejected_and_empties_for_good(triage, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store, instance = triage["store"], triage["instance"]
    ids = [int(c.get_attribute("data-id")) for c in cells(page)[:2]]
    files = [instance.root / store.get_image(i).path for i in ids]
    keys(page, "v", Keys.ARROW_RIGHT, "v", "x")  # select two, reject them
    wait_for(lambda: store.rejected_ids() == set(ids), what="two rejects")
    page.get(triage["url"] + "/trash")
    assert sorted(int(c.get_attribute("data-id")) for c in cells(page)) == sorted(ids)
    page.find_element(By.CSS_SELECTOR, "form.empty-trash button").click()
    page.switch_to.alert.accept()
    wait_for(lambda: "Deleted 2 image(s)" in page.page_source, what="the emptied trash")
    assert store.rejected_ids() == set() and all(not f.exists() for f in files)
    with pytest.raises(Exception):
        store.get_image(ids[0])
    assert not cells(page) and "trash is empty" in page.find_element(By.CSS_SELECTOR, "p.empty").text


def test_back_shows_what_changed_on_the_image_page(triage, page):
    from selenium.webdriver.common.by import By

    first = cells(page)[0]
    image_id = first.get_attribute("data-id")
    assert first.get_attribute("data-starred") == "0"
    keys(page, "o")
    wait_for(lambda: f"/image/{image_id}" in page.current_url, what="the image page")
    keys(page, "s")
    wait_for(lambda: triage["store"].get_image(int(image_id)).starred, what="the star")
    page.back()
    cell = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, f'#grid .cell[data-id="{image_id}"]'),
                    what="the grid again")[0]
    assert cell.get_attribute("data-starred") == "1" and cell.find_element(By.CSS_SELECTOR, "button.star").text == "★"


def test_a_5000_character_query_wraps_instead_of_widening_the_page(triage, browser):
    browser.get(triage["url"] + "/?q=" + "x" * 5000)
    width, inner = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, (width, inner)
    browser.set_window_size(390, 844)  # a phone
    try:
        browser.get(triage["url"] + "/")
        width, inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width <= inner, (width, inner)
    finally:
        browser.set_window_size(1280, 900)
