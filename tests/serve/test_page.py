"""The web page, driven by headless Chromium through Selenium, against a real server and SQLite store:
create a product, inspect a planted defect and a normal image, see decisions and overlays, restart the
server and find the history still there; review a false alarm from the keyboard so that the product
learns it; look at the page at 1280 and 390 pixels wide.

``ZSAD_SCREENSHOTS=DIR`` keeps the screenshots in DIR (the README's come from there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import png, server
from test_review import other_texture

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                                     reason="Debian's chromium and chromium-driver are not installed")]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(condition)


def _overlay_loaded(driver, card) -> bool:
    image = card.find_element(By.TAG_NAME, "img")
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)


def _create_bracket(driver, url: str, images, class_name: str) -> None:
    """Open the page and create the product "bracket" from the four references through its form."""
    driver.get(url)
    _wait(driver, ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
    driver.find_element(By.ID, "name").send_keys("bracket")
    driver.find_element(By.ID, "class_name").send_keys(class_name)
    driver.find_element(By.ID, "references").send_keys("\n".join(str(images[f"ref{i}"]) for i in range(4)))
    driver.find_element(By.ID, "create-button").click()
    _wait(driver, ec.text_to_be_present_in_element((By.ID, "create-msg"), "Created bracket"))


def test_create_inspect_and_find_the_history_after_a_restart(browser, images, tmp_path):
    store = tmp_path / "store"
    with server(store) as url:
        _create_bracket(browser, url, images, "metal bracket")
        assert "bracket" in browser.find_element(By.ID, "products").text

        browser.find_element(By.ID, "images").send_keys(f"{images['defect']}\n{images['normal']}")
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "inspect-msg"), "2 inspected, 1 anomalous"))
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
        decisions = {c.find_element(By.CLASS_NAME, "name").text: c.find_element(By.CLASS_NAME, "badge").text
                     for c in cards}
        assert decisions == {"defect.png": "ANOMALOUS", "normal.png": "NORMAL"}
        for card in cards:
            _wait(browser, lambda d, c=card: _overlay_loaded(d, c))
        assert "score" in cards[0].text and "threshold" in cards[0].text
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tr.row")) == 2)
        browser.save_screenshot(str(tmp_path / "page.png"))

    with server(store) as url:
        browser.get(url)
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tr.row")) == 2)
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tr.row")
        assert {r.find_elements(By.TAG_NAME, "td")[3].text for r in rows} == {"defect.png", "normal.png"}
        rows[-1].click()  # the oldest: the defect; its detail view opens
        detail = _wait(browser, ec.visibility_of_element_located((By.ID, "detail")))
        _wait(browser, lambda d: _overlay_loaded(d, detail.find_element(By.ID, "picture")))
        assert "ANOMALOUS" in browser.find_element(By.ID, "detail-title").text
        assert browser.find_elements(By.CSS_SELECTOR, "#picture .box")  # the region, boxed on the image
        browser.find_element(By.ID, "close").click()
        _wait(browser, ec.invisibility_of_element_located((By.ID, "detail")))
    assert Path(tmp_path / "page.png").stat().st_size > 10_000


def _no_sideways_scroll(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_an_operator_teaches_a_false_alarm_from_the_keyboard(browser, images, tmp_path):
    """Inspect another material (a false alarm), open it, press L (learn) and N (normal): the product moves
    to revision 2 and the same material is then inspected as normal. Screenshots at 1280x800 and 390x844,
    with no sideways scrolling on the phone."""
    shots = Path(os.environ.get("ZSAD_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    other = tmp_path / "new-supplier.png"
    other.write_bytes(png(other_texture(1)))
    with server(tmp_path / "store") as url:
        browser.set_window_size(1280, 800)
        _create_bracket(browser, url, images, "metal bracket, left side, stamped steel with two holes")
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "product-revision"), "1"))
        browser.find_element(By.ID, "images").send_keys(f"{images['defect']}\n{images['normal']}\n{other}")
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "inspect-msg"), "3 inspected, 2 anomalous"))
        for card in browser.find_elements(By.CSS_SELECTOR, "#results .card"):
            _wait(browser, lambda d, c=card: _overlay_loaded(d, c))
        browser.save_screenshot(str(shots / "serve-page.png"))

        card = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#results .card") if "new-supplier" in c.text)
        card.click()
        _wait(browser, ec.visibility_of_element_located((By.ID, "detail")))
        _wait(browser, lambda d: _overlay_loaded(d, d.find_element(By.ID, "picture")))
        browser.save_screenshot(str(shots / "serve-detail.png"))
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("l")
        assert browser.find_element(By.ID, "review-learn").is_selected()
        body.send_keys("n")
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "review-msg"), "is now at revision 2"))
        assert "learnt into revision 2" in browser.find_element(By.ID, "detail-review").text
        body.send_keys(Keys.ESCAPE)
        _wait(browser, ec.invisibility_of_element_located((By.ID, "detail")))
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "product-revision"), "2"))

        browser.find_element(By.ID, "images").send_keys(str(other))
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "inspect-msg"), "1 inspected, 0 anomalous"))
        browser.find_element(By.ID, "filter-reviewed").send_keys("reviewed")
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tr.row")) == 1)
        assert "learnt" in browser.find_element(By.ID, "history").text

        browser.set_window_size(390, 844)
        browser.get(url)
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tr.row")) == 4)
        assert _no_sideways_scroll(browser)
        browser.save_screenshot(str(shots / "serve-page-390.png"))
        browser.find_elements(By.CSS_SELECTOR, "#history tr.row")[0].click()
        _wait(browser, ec.visibility_of_element_located((By.ID, "detail")))
        assert _no_sideways_scroll(browser)
        browser.save_screenshot(str(shots / "serve-detail-390.png"))
    for name in ("serve-page.png", "serve-detail.png", "serve-page-390.png", "serve-detail-390.png"):
        assert (shots / name).stat().st_size > 10_000
