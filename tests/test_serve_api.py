"""`workbench serve`'s JSON API, in process (FastAPI's TestClient) against a fake model:
good images of every format, every kind of bad input (a clear 4xx, and the server keeps
serving), box mode, the schema, and that uploads never touch the disk unless asked."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import struct
import tempfile
import zlib

import numpy as np
import pytest
from PIL import Image

# fastapi is a dependency of the workbench: a missing one is a broken install, not a skip.
from fastapi.testclient import TestClient

from _serve_fakes import BUSI_IMAGE, METHOD, FakeModel, image_bytes
from workbench.serve import create_app, overlay_png

SMALL_LIMIT = 50_000


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header) and
    whose pixel data is a few bytes: it is only ever opened, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def multipage_tiff() -> bytes:
    pages = [Image.fromarray(np.full((20, 30), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


@pytest.fixture(scope="module")
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture(scope="module")
def client(model) -> TestClient:
    return TestClient(create_app(model))


@pytest.fixture(scope="module")
def small_client() -> TestClient:
    return TestClient(create_app(FakeModel(), max_upload_bytes=SMALL_LIMIT, max_pixels=100_000))


def post_image(client: TestClient, data: bytes, name: str = "image.png", **form: str):
    return client.post("/api/predict", files={"file": (name, data)}, data=form or None)


def assert_good(client: TestClient, model: FakeModel) -> None:
    """The BUSI image still gets its right answer (the server kept serving)."""
    r = post_image(client, BUSI_IMAGE.read_bytes(), BUSI_IMAGE.name, explain="false")
    assert r.status_code == 200, r.text
    assert r.json()["p_positive"] == model.expected(BUSI_IMAGE)[1]


# ---- good images ------------------------------------------------------------------------------

def test_busi_png_gives_the_models_answer(client, model):
    r = post_image(client, BUSI_IMAGE.read_bytes(), BUSI_IMAGE.name)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.expected(BUSI_IMAGE)
    assert body["filename"] == BUSI_IMAGE.name
    assert body["classes"] == ["benign", "malignant"]
    assert body["proba"] == {"benign": expected[0], "malignant": expected[1]}
    assert body["positive"] == "malignant"
    assert body["p_positive"] == expected[1]
    assert body["threshold"] == model.threshold
    assert body["predicted"] == ("malignant" if expected[1] >= model.threshold else "benign")
    assert body["recommendation"] == model.recommendation(expected[1])
    assert body["explanation"]["method"] == METHOD
    overlay = Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"])))
    assert overlay.format == "PNG" and overlay.mode == "RGB"
    assert overlay.size == Image.open(BUSI_IMAGE).size


@pytest.mark.parametrize("fmt, name", [("JPEG", "x.jpg"), ("BMP", "x.bmp"), ("TIFF", "x.tif"), ("PNG", "x.png")])
def test_every_supported_format(client, model, fmt, name):
    data = image_bytes(fmt, seed=3)
    r = post_image(client, data, name)
    assert r.status_code == 200, r.text
    assert r.json()["p_positive"] == model.expected(data, name)[1]


def test_threshold_decides_the_class():
    # A white image is p=1, a black one p=0: one each side of the threshold.
    m = FakeModel(threshold=0.5)
    c = TestClient(create_app(m))
    white = io.BytesIO(); Image.new("L", (8, 8), 255).save(white, format="PNG")
    black = io.BytesIO(); Image.new("L", (8, 8), 0).save(black, format="PNG")
    assert post_image(c, white.getvalue()).json()["predicted"] == "malignant"
    assert post_image(c, black.getvalue()).json()["predicted"] == "benign"


def test_explain_false_skips_the_explanation(client):
    r = post_image(client, image_bytes("PNG"), explain="false")
    assert r.status_code == 200 and r.json()["explanation"] is None


def test_more_than_two_classes_use_the_argmax():
    m = FakeModel(classes=("a", "b", "c"))
    c = TestClient(create_app(m))
    data = image_bytes("PNG", seed=5)
    body = post_image(c, data).json()
    expected = m.expected(data)
    assert body["positive"] is None and body["p_positive"] is None and body["threshold"] is None
    assert body["recommendation"] is None
    assert body["predicted"] == ["a", "b", "c"][int(np.argmax(expected))]
    assert list(body["proba"].values()) == list(expected)


def test_the_filename_is_never_a_path(client):
    r = post_image(client, image_bytes("PNG"), "../../etc/scan.png")
    assert r.status_code == 200 and r.json()["filename"] == "scan.png"


# ---- the other endpoints and the schema ---------------------------------------------------------

def test_model_health_page_and_schema(client, model):
    assert client.get("/healthz").json() == {"status": "ok", "model": model.name}
    info = client.get("/api/model").json()
    assert info == model.describe()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for marker in ('id="probability"', 'id="predicted"', 'id="recommendation"', 'id="overlay"', 'id="method"',
                   'id="error"', "Research use only — not a medical device"):
        assert marker in page.text
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(schema["paths"])
    predict = schema["paths"]["/api/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and {"file", "box", "explain"} <= set(body["properties"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    for code in ("400", "413", "415", "422"):
        assert code in predict["responses"]
    assert {"PredictResponse", "ModelInfo", "Health"} <= set(schema["components"]["schemas"])


# ---- bad input: a clear 4xx naming the problem, then the server still answers ------------------

BAD = {
    "empty file": (dict(files={"file": ("e.png", b"")}), 400, "empty file"),
    "not an image": (dict(files={"file": ("notes.png", b"just some text, no pixels")}), 415, "not an image"),
    "truncated png": (dict(files={"file": ("t.png", BUSI_IMAGE.read_bytes()[:6000])}), 400, "truncated"),
    "bomb header over max_pixels": (dict(files={"file": ("bomb.png", png_header(8000, 8000))}), 413,
                                     "8000x8000"),
    "multi-page tiff": (dict(files={"file": ("stack.tif", multipage_tiff())}), 422, "multi-page TIFF"),
    "json body": (dict(json={"file": "abc"}), 415, "application/json"),
    "text/plain body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "text/plain"),
    "urlencoded body": (dict(data={"file": "abc"}), 415, "application/x-www-form-urlencoded"),
    "no content type": (dict(content=b"hello"), 415, "Content-Type"),
    "no boundary": (dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400, "boundary"),
    "garbage multipart": (dict(content=b"this is not multipart at all",
                               headers={"content-type": "multipart/form-data; boundary=XyZ"}), 400, "multipart"),
    "missing file": (dict(files={"other": ("o.png", b"x")}, data={"explain": "true"}), 422, "'file'"),
    "file as a text field": (dict(files={"other": ("o.png", b"x")}, data={"file": "abc"}), 422, "file upload"),
    "two files": (dict(files=[("file", ("a.png", b"x")), ("file", ("b.png", b"y"))]), 422, "2 times"),
    "box for a whole-image model": (dict(files={"file": ("a.png", image_bytes("PNG"))}, data={"box": "1,1,5,5"}),
                                    422, "whole image"),
    "bad explain flag": (dict(files={"file": ("a.png", image_bytes("PNG"))}, data={"explain": "maybe"}),
                         422, "explain"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(client, model, case):
    kwargs, status, words = BAD[case]
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower(), detail
    assert_good(client, model)


def test_pils_own_decompression_bomb_check_is_a_413(model):
    # max_pixels out of the way: PIL's DecompressionBombError (over 2x its pixel limit) answers.
    c = TestClient(create_app(model, max_pixels=10**12))
    r = post_image(c, png_header(20000, 20000), "bomb.png")
    assert r.status_code == 413 and "too large" in r.json()["detail"], r.text
    assert_good(c, model)


def test_a_bomb_the_header_check_misses_is_still_a_413(model, monkeypatch):
    import workbench.serve.app as app_module

    monkeypatch.setattr(app_module, "_header_size", lambda data: None)
    c = TestClient(create_app(model, max_pixels=10**12))
    r = post_image(c, png_header(20000, 20000), "bomb.png")
    assert r.status_code == 413 and "image too large" in r.json()["detail"], r.text


def test_max_pixels_is_read_from_the_header(small_client, model):
    flat = io.BytesIO()
    Image.new("L", (400, 300), 90).save(flat, format="PNG")  # 120 000 > 100 000 pixels, in 1 KB
    r = post_image(small_client, flat.getvalue(), "big.png")
    assert r.status_code == 413 and "400x300" in r.json()["detail"] and "100000 pixels" in r.json()["detail"]
    assert_good(small_client, model)


# ---- the size limit: by Content-Length before reading, and while reading -----------------------

def test_content_length_over_the_limit_is_refused_before_the_body_is_read():
    app = create_app(FakeModel(), max_upload_bytes=SMALL_LIMIT)
    reads: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        reads.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "root_path": "",
             "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=b"),
                         (b"content-length", str(10**9).encode())]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"too large" in sent[1]["body"] and b"1000000000 bytes" in sent[1]["body"]
    assert not reads, "the body was read before the Content-Length was checked"


def test_a_file_over_the_limit_is_a_413(small_client, model):
    # Within the form's overhead allowance, so the Content-Length passes: caught while reading.
    r = post_image(small_client, b"\x89PNG\r\n\x1a\n" + b"\0" * SMALL_LIMIT, "big.png")
    assert r.status_code == 413 and "too large" in r.json()["detail"] and "50000 bytes" in r.json()["detail"]
    # Far over it.
    r = post_image(small_client, b"\0" * (SMALL_LIMIT * 4), "huge.png")
    assert r.status_code == 413
    assert_good(small_client, model)


def test_a_chunked_body_over_the_limit_is_a_413(small_client, model):
    boundary = "wbtest"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()

    def body():  # a generator: sent chunked, with no Content-Length
        yield head
        for _ in range(40):
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_client.post("/api/predict", content=body(),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert "too large" in r.json()["detail"]
    assert_good(small_client, model)


# ---- box mode ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def box_model() -> FakeModel:
    return FakeModel(input_mode="box")


@pytest.fixture(scope="module")
def box_client(box_model) -> TestClient:
    return TestClient(create_app(box_model))


@pytest.mark.parametrize("form, words", [
    ({}, "lesion box"),
    ({"box": ""}, "lesion box"),
    ({"box": "10,20,30"}, "3 values"),
    ({"box": "a,b,c,d"}, "not numbers"),
    ({"box": "10.5,20,30,40"}, "not integers"),
    ({"box": "50,50,40,60"}, "empty"),
    ({"box": "200,100,300,200"}, "partly outside"),
    ({"box": "400,300,500,400"}, "wholly outside"),
])
def test_a_missing_or_bad_box_is_a_422(box_client, box_model, form, words):
    r = post_image(box_client, BUSI_IMAGE.read_bytes(), BUSI_IMAGE.name, **form)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"], r.json()["detail"]
    good = post_image(box_client, BUSI_IMAGE.read_bytes(), BUSI_IMAGE.name, box="10,20,110,120")
    assert good.status_code == 200


def test_a_good_box_is_what_the_model_reads(box_client, box_model):
    box = (30, 40, 200, 180)
    r = post_image(box_client, BUSI_IMAGE.read_bytes(), BUSI_IMAGE.name, box=" 30, 40 ,200,180")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["p_positive"] == box_model.expected(BUSI_IMAGE, box=box)[1]
    assert body["p_positive"] != box_model.expected(BUSI_IMAGE)[1]
    assert body["explanation"]["method"] == METHOD
    assert box_client.get("/api/model").json()["input_mode"] == "box"


# ---- failures of the model ------------------------------------------------------------------------

def test_a_model_failure_is_a_500_naming_it_and_the_next_request_works():
    m = FakeModel(fail=True)
    c = TestClient(create_app(m), raise_server_exceptions=False)
    r = post_image(c, image_bytes("PNG"), "a.png")
    assert r.status_code == 500 and "prediction failed" in r.json()["detail"] and "fake model failure" in r.text
    m.fail = False
    assert_good(c, m)


# ---- nothing on disk unless asked ------------------------------------------------------------------

def _no_temp_files(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_a_2mb_upload_stays_in_memory(monkeypatch, tmp_path, model):
    _no_temp_files(monkeypatch)
    # The guard bites: Starlette's own form parser would spool this upload to a file.
    spooled = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    with pytest.raises(AssertionError, match="temporary file"):
        spooled.write(b"\0" * (2 * 1024 * 1024))
    monkeypatch.chdir(tmp_path)
    data = image_bytes("BMP", (900, 800), seed=1)  # 2.1 MB
    assert len(data) > 2 * 1024 * 1024
    c = TestClient(create_app(model))
    r = post_image(c, data, "big.bmp", explain="false")
    assert r.status_code == 200, r.text
    assert r.json()["p_positive"] == model.expected(data, "big.bmp")[1]
    assert list(tmp_path.iterdir()) == []


def test_keep_uploads_saves_each_image_under_its_hash(tmp_path, model):
    keep = tmp_path / "kept"
    c = TestClient(create_app(model, keep_uploads=keep))
    data = BUSI_IMAGE.read_bytes()
    assert post_image(c, data, BUSI_IMAGE.name).status_code == 200
    assert post_image(c, data, "again.png").status_code == 200  # same bytes: one file
    assert post_image(c, b"not an image", "bad.png").status_code == 415  # not kept
    files = list(keep.iterdir())
    assert [f.name for f in files] == [hashlib.sha256(data).hexdigest() + ".png"]
    assert files[0].read_bytes() == data


# ---- the overlay ------------------------------------------------------------------------------------

def test_overlay_blends_resizes_and_caps_its_size():
    import torch

    img = torch.zeros(3, 60, 2400)
    heat = np.zeros((6, 240), np.float32)
    heat[:, 120:] = 1.0  # a map at a tenth of the size: resized to the image
    out = Image.open(io.BytesIO(overlay_png(img, heat, box=(0, 0, 100, 30))))
    assert out.size == (1024, 26)
    arr = np.asarray(out).astype(int)
    left, right = arr[13, 100], arr[13, 900]
    assert right[0] > right[2] and left[2] > left[0]  # jet: red where hot, blue where cold


def test_model_info_passes_extra_describe_keys_through():
    # A real bundle's describe() adds members, features, network...: the page may show them.
    m = FakeModel()
    base = m.describe()
    m.describe = lambda: {**base, "members": ["svm-rbf", "rf"], "network": None}  # type: ignore[method-assign]
    info = TestClient(create_app(m)).get("/api/model").json()
    assert info["members"] == ["svm-rbf", "rf"] and "network" in info
