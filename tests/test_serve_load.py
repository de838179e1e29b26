"""`workbench serve` under load, on a real uvicorn on 127.0.0.1: concurrent clients all get
the right answer, none is lost, the model is entered by one thread at a time, and the
event loop keeps answering /healthz while a prediction runs."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from _serve_fakes import BUSI_IMAGE, FakeModel
from workbench.serve import create_app, load_test, start_server


def test_8_clients_x_25_requests_all_answered_right(served, capsys):
    model = FakeModel()
    url = served(model)
    data = BUSI_IMAGE.read_bytes()
    expected = model.expected(BUSI_IMAGE)[1]
    stats = load_test(url, data, clients=8, requests=25, filename=BUSI_IMAGE.name, expect_p=expected)
    with capsys.disabled():
        print(f"\nserve load test (fake model, BUSI {BUSI_IMAGE.name}, explain on): "
              f"{stats['answered']}/{stats['sent']} answered, {stats['ok']} OK, "
              f"p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms, max {stats['max_ms']:.1f} ms, "
              f"{stats['throughput_rps']:.1f} req/s over {stats['wall_s']:.2f} s")
    assert stats["errors"] == []
    assert stats["sent"] == stats["answered"] == stats["ok"] == 200
    assert stats["statuses"] == {200: 200}
    assert stats["wrong"] == 0 and stats["p_values"] == [expected]
    assert model.calls == 2 * (200 + stats["warmup"])  # a probability and an explanation per request
    assert model.max_active == 1, "two threads were inside the model at once"
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["max_ms"]


def test_healthz_answers_while_a_prediction_runs(served):
    gate = threading.Event()
    model = FakeModel(gate=gate)
    url = served(model)
    result: dict = {}

    def predict() -> None:
        with httpx.Client(timeout=60) as http:
            result["r"] = http.post(url + "api/predict", files={"file": (BUSI_IMAGE.name, BUSI_IMAGE.read_bytes())})

    worker = threading.Thread(target=predict)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while model.active == 0:  # the prediction is inside the model, blocked on the gate
            assert time.monotonic() < deadline, "the prediction never reached the model"
            time.sleep(0.01)
        with httpx.Client(timeout=5) as http:
            t0 = time.perf_counter()
            for _ in range(5):
                r = http.get(url + "healthz")
                assert r.status_code == 200 and r.json()["status"] == "ok"
            assert time.perf_counter() - t0 < 2.0
            assert http.get(url + "api/model").status_code == 200
        assert "r" not in result  # still blocked: /healthz did not wait for it
    finally:
        gate.set()
        worker.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["p_positive"] == model.expected(BUSI_IMAGE)[1]


def test_start_server_binds_loopback_on_a_free_port_and_stops():
    url, stop = start_server(create_app(FakeModel()))
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert httpx.get(url + "healthz", timeout=5).status_code == 200
    stop()
    stop()  # twice is fine
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "healthz", timeout=2)


def test_serve_loads_the_bundle_binds_loopback_and_prints_the_url(monkeypatch, capsys, tmp_path):
    import sys
    import types

    import uvicorn

    from workbench.errors import ConfigError
    from workbench.serve import serve

    loaded: list = []
    bundle = types.ModuleType("workbench.bundle")
    bundle.load_model = lambda d: loaded.append(d) or FakeModel()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "workbench.bundle", bundle)
    ran: dict = {}

    def run(self, sockets=None):  # instead of serving until Ctrl+C
        ran["sockets"], ran["app"] = sockets, self.config.app

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve(tmp_path / "bundle", port=0, keep_uploads=tmp_path / "kept", max_upload_mb=1)
    host, port = ran["sockets"][0].getsockname()[:2]
    ran["sockets"][0].close()
    assert loaded == [tmp_path / "bundle"] and host == "127.0.0.1" and port > 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/" in out and "Research use only" in out and "warning" not in out
    assert (tmp_path / "kept").is_dir()
    with pytest.raises(ConfigError, match="max_upload_mb"):
        serve(tmp_path / "bundle", port=0, max_upload_mb=0)
