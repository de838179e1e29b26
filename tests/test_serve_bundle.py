"""`workbench serve` with a real bundle: the API and the page agree with `workbench predict`.

Uses the session fixture ``bundle_run`` (a small real BUSI run and its bundles). The
browser test drives headless Chromium and skips, saying why, without it.
"""
from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from workbench.bundle.model import load_model
from workbench.cli import main
from workbench.serve import create_app, load_test, start_server

pytestmark = pytest.mark.slow


def _image(bundle_run):
    rows = pd.read_csv(bundle_run.csv)
    return rows[(rows.split == "test") & (rows.label == "malignant")]["path"].iloc[0]


def _predicted(bundle_run, kind, path, tmp_path, capsys) -> pd.Series:
    out = tmp_path / f"{kind}.csv"
    assert main(["predict", "--model", str(bundle_run.bundles[kind]), path, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return pd.read_csv(out).iloc[0]


@pytest.mark.parametrize("kind", ["head", "baseline"])
def test_the_api_answers_what_workbench_predict_says(bundle_run, kind, tmp_path, capsys):
    path = _image(bundle_run)
    want = _predicted(bundle_run, kind, path, tmp_path, capsys)
    model = load_model(bundle_run.bundles[kind])
    client = TestClient(create_app(model))
    with open(path, "rb") as f:
        r = client.post("/api/predict", files={"file": ("x.png", f.read(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert abs(body["p_positive"] - want[f"p_{model.positive}"]) < 1e-9
    assert body["predicted"] == want["predicted"] and body["recommendation"] == want["recommendation"]
    assert body["explanation"]["method"] and body["explanation"]["overlay_png"]
    info = client.get("/api/model").json()
    assert info["name"] == model.name and info["card"]["intended_use"].startswith("Research use only")
    assert client.get("/healthz").json()["status"] == "ok"


def test_a_real_bundle_under_load(bundle_run):
    model = load_model(bundle_run.bundles["head"])
    path = _image(bundle_run)
    p = float(model.predict_proba([path])[0, model.positive_index])
    url, stop = start_server(create_app(model))
    try:
        with open(path, "rb") as f:
            r = load_test(url, f.read(), clients=8, requests=25, explain=False)
    finally:
        stop()
    print(f"\nreal svm-rbf bundle, 8 clients x 25 requests: p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
          f"{r['throughput_rps']:.1f} requests/s")
    assert r["sent"] == r["answered"] == r["ok"] == 200, r["errors"]
    assert len(r["p_values"]) == 1 and abs(r["p_values"][0] - p) < 1e-9


def test_the_page_shows_what_workbench_predict_says(bundle_run, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    from test_serve_browser import NOTICE, _driver, _screenshot, _text, _wait_state

    path = _image(bundle_run)
    want = _predicted(bundle_run, "head", path, tmp_path, capsys)
    model = load_model(bundle_run.bundles["head"])
    browser = _driver()
    url, stop = start_server(create_app(model))
    try:
        browser.get(url)
        _wait_state(browser, ("ready",))
        browser.find_element(By.ID, "file").send_keys(path)
        browser.find_element(By.ID, "submit").click()
        assert _wait_state(browser, ("done", "error"), timeout=120) == "done", _text(browser, "error")
        assert _text(browser, "probability") == f"{want[f'p_{model.positive}']:.4f}"
        assert _text(browser, "predicted") == want["predicted"]
        assert _text(browser, "recommendation") == want["recommendation"]
        assert _text(browser, "method")  # the method is named under the map
        assert NOTICE in _text(browser, "notice")
        assert "Test AUC" in _text(browser, "card")
        shot = _screenshot(browser, tmp_path, "serve_bundle.png", publish=True)
        assert shot.stat().st_size > 10_000
    finally:
        stop()
        browser.quit()
