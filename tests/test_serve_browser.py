"""The page of `workbench serve` in a real browser: headless Chromium (Selenium) against a
real uvicorn on 127.0.0.1, with a fake model whose answer the test computes itself.

Skips, saying why, where Chromium, its driver or Selenium are missing (`.ci/run`
installs Debian's `chromium` and `chromium-driver` when it runs as root)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from _serve_fakes import BUSI_IMAGE, METHOD, FakeModel, chromium_paths
from workbench.data.images import decode_image


NOTICE = "Research use only — not a medical device"


def _driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    binary, driver = chromium_paths()
    if binary is None or driver is None:
        pytest.skip("chromium not found (or chromedriver not found): install Debian's chromium and "
                    "chromium-driver to run the browser test")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _wait_state(browser, states: tuple[str, ...], timeout: float = 30) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(lambda d: d.execute_script("return document.body.dataset.state") in states)
    return browser.execute_script("return document.body.dataset.state")


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _screenshot(browser, tmp_path: Path, name: str, *, publish: bool = False) -> Path:
    """Save a screenshot in ``tmp_path``; with ``publish``, also at $WORKBENCH_SCREENSHOT if set."""
    shot = tmp_path / name
    assert browser.save_screenshot(str(shot)), "no screenshot written"
    target = os.environ.get("WORKBENCH_SCREENSHOT")
    if publish and target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
    return shot


def _open_and_upload(browser, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    _wait_state(browser, ("ready",))
    browser.find_element(By.ID, "file").send_keys(str(path))


def test_page_shows_the_models_answer_for_a_busi_image(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    model = FakeModel()
    url = served(model)
    _open_and_upload(browser, url, BUSI_IMAGE)
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, ("done", "error")) == "done", _text(browser, "error")

    p = model.proba_of(decode_image(BUSI_IMAGE))[1]
    assert _text(browser, "probability") == f"{p:.4f}"
    assert _text(browser, "predicted") == ("malignant" if p >= model.threshold else "benign")
    assert _text(browser, "recommendation") == model.recommendation(p)
    assert _text(browser, "method") == METHOD
    assert NOTICE in _text(browser, "notice")
    assert _text(browser, "model-name") == model.name
    card = _text(browser, "card")
    assert "Test AUC" in card and "0.900 (95% CI 0.850–0.950), n = 130" in card
    assert "Sensitivity at threshold" in card and "Specificity at threshold" in card
    assert f"Threshold\n{model.threshold:.4f}" in card
    overlay = browser.find_element(By.ID, "overlay")
    assert overlay.is_displayed()
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 256
    assert _text(browser, "error") == ""
    # The page rounds exactly as Python does, ties included (toFixed alone would not).
    for x in (0.03125, 0.09375, 0.5, 0.123456, 0.99995, 1.0):
        assert browser.execute_script("return window.fmt4(arguments[0])", x) == f"{x:.4f}"
    assert _screenshot(browser, tmp_path, "serve_page.png").stat().st_size > 10_000


def test_page_in_box_mode_sends_the_box(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    model = FakeModel(input_mode="box")
    url = served(model)
    _open_and_upload(browser, url, BUSI_IMAGE)
    assert browser.find_element(By.ID, "box-fields").is_displayed()
    # Dragging on the preview fills in the box, in image pixels (the preview is at 1:1 here).
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element(By.ID, "preview")
    assert canvas.is_displayed()
    ActionChains(browser).move_to_element_with_offset(canvas, -50, -40).click_and_hold() \
        .move_by_offset(100, 80).release().perform()
    drawn = [int(browser.find_element(By.ID, k).get_attribute("value")) for k in ("x0", "y0", "x1", "y1")]
    assert abs(drawn[2] - drawn[0] - 100) <= 2 and abs(drawn[3] - drawn[1] - 80) <= 2, drawn
    assert abs(drawn[0] - (128 - 50)) <= 2 and abs(drawn[1] - (107 - 40)) <= 2, drawn
    box = (30, 40, 200, 180)
    for key, value in zip(("x0", "y0", "x1", "y1"), box):
        field = browser.find_element(By.ID, key)
        field.clear()
        field.send_keys(str(value))
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, ("done", "error")) == "done", _text(browser, "error")
    p = model.proba_of(decode_image(BUSI_IMAGE), box)[1]
    assert _text(browser, "probability") == f"{p:.4f}"
    _screenshot(browser, tmp_path, "serve_page_box.png")


def test_page_shows_the_apis_error(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not pixels")
    url = served(FakeModel())
    _open_and_upload(browser, url, bad)
    browser.find_element(By.ID, "submit").click()
    assert _wait_state(browser, ("done", "error")) == "error"
    assert "not an image file" in _text(browser, "error")
    assert NOTICE in _text(browser, "notice")
