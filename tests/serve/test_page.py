"""The web page, driven by headless Chromium through Selenium, against a real server and SQLite store:
create a product, inspect a planted defect and a normal image, see decisions and overlays, restart the
server and find the history still there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
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


def test_create_inspect_and_find_the_history_after_a_restart(browser, images, tmp_path):
    store = tmp_path / "store"
    with server(store) as url:
        browser.get(url)
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
        browser.find_element(By.ID, "name").send_keys("bracket")
        browser.find_element(By.ID, "class_name").send_keys("metal bracket")
        browser.find_element(By.ID, "references").send_keys("\n".join(str(images[f"ref{i}"]) for i in range(4)))
        browser.find_element(By.ID, "create-button").click()
        _wait(browser, ec.text_to_be_present_in_element((By.ID, "create-msg"), "Created bracket"))
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
        rows[-1].click()  # the oldest: the defect; its overlay opens below the table
        viewer = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#viewer .card"))
        _wait(browser, lambda d: _overlay_loaded(d, viewer))
        assert viewer.find_element(By.CLASS_NAME, "badge").text == "ANOMALOUS"
    assert Path(tmp_path / "page.png").stat().st_size > 10_000
