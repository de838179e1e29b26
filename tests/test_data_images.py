"""Tests for workbench.data.images: decoding every supported mode, cropping, hashing."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from workbench.data.images import (
    SUPPORTED_SUFFIXES,
    ImageChangedError,
    ImageDecodeError,
    crop_to_box,
    decode_image,
    file_sha256,
    image_size,
)

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"

H, W = 3, 5
# A gray ramp with exactly representable values: 0, 51, 102, ... (multiples of 0.2).
GRAY = (np.arange(H * W, dtype=np.uint8).reshape(H, W) % 6) * 51
RGB = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 128)], axis=-1)


def check_tensor(t: torch.Tensor, h: int = H, w: int = W) -> None:
    assert isinstance(t, torch.Tensor)
    assert t.dtype == torch.float32
    assert t.shape == (3, h, w)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def check_gray(t: torch.Tensor) -> None:
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# ---- 8-bit modes ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_gray_l_exact(tmp_path, ext):
    t = decode_image(save(Image.fromarray(GRAY, "L"), tmp_path / f"g{ext}"))
    check_tensor(t)
    check_gray(t)
    assert torch.allclose(t[0], torch.from_numpy(GRAY / 255.0).float())


def test_gray_jpeg_lossy(tmp_path):
    t = decode_image(save(Image.fromarray(GRAY, "L"), tmp_path / "g.jpg", quality=100))
    check_tensor(t)
    check_gray(t)
    assert torch.allclose(t[0], torch.from_numpy(GRAY / 255.0).float(), atol=0.05)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_one_bit(tmp_path, ext):
    bits = (GRAY > 100).astype(np.uint8) * 255
    t = decode_image(save(Image.fromarray(bits, "L").convert("1"), tmp_path / f"b{ext}"))
    check_tensor(t)
    check_gray(t)
    assert torch.equal(t[0], torch.from_numpy(bits / 255.0).float())


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_la_drops_alpha(tmp_path, ext):
    la = Image.merge("LA", [Image.fromarray(GRAY, "L"), Image.new("L", (W, H), 7)])
    t = decode_image(save(la, tmp_path / f"la{ext}"))
    check_tensor(t)
    check_gray(t)
    assert torch.allclose(t[0], torch.from_numpy(GRAY / 255.0).float())


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_rgb_exact(tmp_path, ext):
    t = decode_image(save(Image.fromarray(RGB, "RGB"), tmp_path / f"c{ext}"))
    check_tensor(t)
    expected = torch.from_numpy(RGB.transpose(2, 0, 1) / 255.0).float()
    assert torch.allclose(t, expected)


def test_rgb_jpeg(tmp_path):
    img = Image.new("RGB", (16, 8), (255, 0, 128))
    t = decode_image(save(img, tmp_path / "c.jpeg", quality=100))
    check_tensor(t, 8, 16)
    assert torch.allclose(t[:, 4, 8], torch.tensor([1.0, 0.0, 128 / 255]), atol=0.03)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_rgba_drops_alpha(tmp_path, ext):
    rgba = np.concatenate([RGB, np.zeros((H, W, 1), np.uint8)], axis=-1)  # fully transparent
    t = decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / f"a{ext}"))
    check_tensor(t)
    assert torch.allclose(t, torch.from_numpy(RGB.transpose(2, 0, 1) / 255.0).float())


def palette_image() -> Image.Image:
    img = Image.new("P", (W, H), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    return img


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_palette(tmp_path, ext):
    t = decode_image(save(palette_image(), tmp_path / f"p{ext}"))
    check_tensor(t)
    assert t[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert t[:, 0, 1].tolist() == [0.0, 1.0, 0.0]
    assert t[:, 0, 2].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("transparency", [1, bytes([255, 0, 128])])
def test_palette_with_transparency_keeps_colours(tmp_path, transparency):
    path = save(palette_image(), tmp_path / "pt.png", transparency=transparency)
    with Image.open(path) as img:
        assert img.mode == "P" and "transparency" in img.info
    t = decode_image(path)
    check_tensor(t)
    assert t[:, 0, 1].tolist() == [0.0, 1.0, 0.0]  # transparent entry: its colour, alpha dropped


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_to_rgb(tmp_path, ext):
    t = decode_image(save(Image.new("CMYK", (W, H), (0, 255, 0, 0)), tmp_path / f"k{ext}"))
    check_tensor(t)
    assert torch.allclose(t[:, 1, 1], torch.tensor([1.0, 0.0, 1.0]), atol=0.05)  # magenta


def test_ycbcr_tiff_to_rgb(tmp_path):
    t = decode_image(save(Image.new("YCbCr", (W, H), (128, 128, 128)), tmp_path / "y.tif"))
    check_tensor(t)
    assert torch.allclose(t, torch.full_like(t, 128 / 255), atol=0.01)


# ---- high bit depth: min-max per image --------------------------------------------------

RAMP16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000 + 300)  # 300 .. 14300


def expected_minmax(a: np.ndarray) -> torch.Tensor:
    a = a.astype(np.float64)
    return torch.from_numpy((a - a.min()) / (a.max() - a.min())).float()


def check_ramp(t: torch.Tensor, source: np.ndarray) -> None:
    check_tensor(t)
    check_gray(t)
    assert float(t[0, 0, 0]) == 0.0 and float(t[0, -1, -1]) == 1.0
    assert torch.allclose(t[0], expected_minmax(source), atol=1e-6)


def test_png_i16(tmp_path):
    path = save(Image.fromarray(RAMP16), tmp_path / "r.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    check_ramp(decode_image(path), RAMP16)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_tiff_16bit_gray(tmp_path, byteorder):
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, RAMP16, byteorder=byteorder)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I;16B")
    check_ramp(decode_image(path), RAMP16)


def test_tiff_32bit_int_and_float(tmp_path):
    Image.fromarray(RAMP16.astype(np.int32)).save(tmp_path / "i.tif")
    check_ramp(decode_image(tmp_path / "i.tif"), RAMP16)
    f = RAMP16.astype(np.float32) / 7 - 100
    tifffile.imwrite(tmp_path / "f.tif", f)
    with Image.open(tmp_path / "f.tif") as img:
        assert img.mode == "F"
    check_ramp(decode_image(tmp_path / "f.tif"), f)


def test_float_tiff_non_finite_count_as_minimum(tmp_path):
    f = RAMP16.astype(np.float32)
    f[0, 1] = np.nan
    f[0, 2] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", f)
    t = decode_image(tmp_path / "f.tif")
    check_tensor(t)
    assert float(t[0, 0, 1]) == 0.0 and float(t[0, 0, 2]) == 0.0 and float(t[0, -1, -1]) == 1.0


def test_constant_16bit_gives_zeros(tmp_path):
    Image.fromarray(np.full((H, W), 4000, np.uint16)).save(tmp_path / "c.png")
    t = decode_image(tmp_path / "c.png")
    check_tensor(t)
    assert torch.count_nonzero(t) == 0


@pytest.mark.parametrize("planar", [False, True])
def test_tiff_16bit_rgb_via_tifffile(tmp_path, planar):
    rgb = np.stack([RAMP16, RAMP16 // 2, np.full_like(RAMP16, 300)], axis=-1)
    path = tmp_path / "rgb16.tif"
    if planar:
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(path, rgb, photometric="rgb")
    t = decode_image(path)
    check_tensor(t)
    # One min-max over all channels (150 -> 0, 14300 -> 1), so colour ratios survive.
    lo, hi = 150.0, 14300.0
    expected = torch.from_numpy((np.moveaxis(rgb, -1, 0) - lo) / (hi - lo)).float()
    assert torch.allclose(t, expected, atol=1e-6)
    assert image_size(path) == (W, H)


def test_tiff_16bit_rgba_via_tifffile_drops_alpha(tmp_path):
    rgba = np.stack([RAMP16, RAMP16, RAMP16, np.full_like(RAMP16, 65535)], axis=-1)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    check_ramp(decode_image(tmp_path / "rgba16.tif"), RAMP16)


# ---- failures ----------------------------------------------------------------------


def png_bytes(size: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.png", None, "file not found"),
        ("empty.png", b"", "empty file (0 bytes)"),
        ("text.png", b"this is not an image\n", "not an image file"),
        ("half.png", "half", "truncated or corrupt image data"),
        ("header.png", "header", "truncated or corrupt image data"),
        ("half.tif", "tiff", "truncated or corrupt image data"),
        ("half.jpg", "jpeg", "truncated or corrupt image data"),
    ],
)
def test_decode_errors(tmp_path, name, content, reason):
    path = tmp_path / name
    if content == "half":
        data = png_bytes()
        content = data[: len(data) // 2]
    elif content == "header":
        content = png_bytes()[:20]
    elif content in ("tiff", "jpeg"):
        rng = np.random.default_rng(1)
        full = tmp_path / f"full.{content}"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
            full, format="TIFF" if content == "tiff" else "JPEG"
        )
        data = full.read_bytes()
        content = data[: len(data) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == path and err.reason == reason
    assert str(path) in str(err) and reason in str(err)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageDecodeError, match="not a file"):
        decode_image(tmp_path)


def test_error_pickles(tmp_path):
    err = ImageDecodeError(tmp_path / "x.png", "not an image file")
    back = pickle.loads(pickle.dumps(err))
    assert back.path == err.path and back.reason == err.reason and str(back) == str(err)


# ---- multi-page TIFFs: refused, never read as their first page --------------------------


@pytest.mark.parametrize("writer", ["tifffile", "pil"])
def test_multi_page_tiff_is_refused_saying_so(tmp_path, writer):
    path = tmp_path / "stack.tif"
    pages = [GRAY, 255 - GRAY, GRAY // 2]
    if writer == "tifffile":
        with tifffile.TiffWriter(path) as tif:
            for page in pages:
                tif.write(page, contiguous=False)
    else:
        first, *rest = [Image.fromarray(p) for p in pages]
        first.save(path, save_all=True, append_images=rest)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.path == path
    assert info.value.reason.startswith("multi-page TIFF (3 images)") and "first page" not in info.value.reason
    assert "will not pick a page" in info.value.reason


def test_multi_plane_tiff_page_is_refused(tmp_path):
    path = tmp_path / "volume.tif"
    tifffile.imwrite(path, np.stack([GRAY, 255 - GRAY]).astype(np.uint16) * 100, volumetric=True)
    with pytest.raises(ImageDecodeError, match="planes"):
        decode_image(path)


def test_tiff_with_a_thumbnail_page_reads_the_image(tmp_path):
    # A reduced-resolution page (NewSubfileType bit 0) is a preview of the same image, not a second one.
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(GRAY)
        tif.write(GRAY[::2, ::2], subfiletype=1)
    t = decode_image(path)
    check_tensor(t)
    assert torch.allclose(t[0], torch.from_numpy(GRAY.astype(np.float32) / 255))


def test_multi_page_tiff_is_a_bad_row_at_validation(tmp_path):
    from workbench.data.manifest import Manifest, ManifestError

    (tmp_path / "ok.png").write_bytes(png_bytes())
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for page in (GRAY, 255 - GRAY):
            tif.write(page, contiguous=False)
    (tmp_path / "labels.csv").write_text("path,label\nok.png,benign\nstack.tif,malignant\n")
    with pytest.raises(ManifestError, match="stack.tif.*multi-page TIFF"):
        Manifest.load(tmp_path / "labels.csv").validate(progress=False)


# ---- the bytes decoded are the bytes hashed ------------------------------------------------


def test_decode_checks_the_digest_of_the_bytes_it_decodes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    check_tensor(decode_image(path, expect_sha256=digest), 48, 48)
    Image.fromarray(RGB).save(path)  # rewritten since it was hashed
    with pytest.raises(ImageChangedError) as info:
        decode_image(path, expect_sha256=digest)
    err = info.value
    assert isinstance(err, ImageDecodeError) and err.path == path and err.expected == digest
    assert err.actual == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "changed since it was validated" in str(err) and digest[:12] in str(err)
    back = pickle.loads(pickle.dumps(err))  # it crosses DataLoader worker processes
    assert type(back) is ImageChangedError and str(back) == str(err)


# ---- image_size, crop_to_box, file_sha256 --------------------------------------------


def test_image_size(tmp_path):
    Image.new("L", (7, 4)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (7, 4)
    assert image_size(str(tmp_path / "a.png")) == (7, 4)
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageDecodeError, match="not an image file"):
        image_size(tmp_path / "t.png")
    with pytest.raises(ImageDecodeError, match="file not found"):
        image_size(tmp_path / "nope.png")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty file \(0 bytes\)"):
        image_size(tmp_path / "e.png")


def grid(h: int = 20, w: int = 30) -> torch.Tensor:
    # Each pixel encodes its own coordinates, so a crop tells where it came from.
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs.float(), ys.float(), torch.zeros(h, w)])


def test_crop_no_margin_is_exact():
    c = crop_to_box(grid(), (5, 2, 15, 6), 0.0)
    assert c.shape == (3, 4, 10)
    assert c[0, 0, 0] == 5 and c[1, 0, 0] == 2 and c[0, -1, -1] == 14 and c[1, -1, -1] == 5


def test_crop_margin_is_fraction_of_each_side():
    c = crop_to_box(grid(), (10, 5, 20, 9), 0.5)  # +5 px in x, +2 px in y on each side
    assert c.shape == (3, 8, 20)
    assert (c[0, 0, 0], c[1, 0, 0]) == (5, 3)
    assert (c[0, -1, -1], c[1, -1, -1]) == (24, 10)


def test_crop_margin_float_noise_does_not_add_pixels():
    c = crop_to_box(grid(40, 40), (10, 10, 30, 30), 0.15)  # 0.15 * 20 = 3.0000000000000004
    assert c.shape == (3, 26, 26)


def test_crop_clips_to_image():
    c = crop_to_box(grid(), (0, 0, 10, 10), 0.5)
    assert c.shape == (3, 15, 15) and c[0, 0, 0] == 0 and c[1, 0, 0] == 0
    c = crop_to_box(grid(), (25, 15, 30, 20), 1.0)
    assert c.shape == (3, 10, 10)
    assert (c[0, -1, -1], c[1, -1, -1]) == (29, 19)


def test_crop_rejects_bad_input():
    with pytest.raises(ValueError, match="empty box"):
        crop_to_box(grid(), (5, 5, 5, 9), 0.1)
    with pytest.raises(ValueError, match="outside"):
        crop_to_box(grid(), (40, 40, 50, 50), 0.0)
    with pytest.raises(ValueError, match="margin"):
        crop_to_box(grid(), (1, 1, 5, 5), -0.1)


def test_file_sha256(tmp_path):
    data = png_bytes()
    (tmp_path / "a.png").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "a.png") == expected
    assert file_sha256(tmp_path / "a.png", chunk=7) == expected


def test_supported_suffixes():
    assert SUPPORTED_SUFFIXES == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---- real data -------------------------------------------------------------------------


def test_busi_image_decodes_as_gray():
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    path = BUSI / "images" / "busi_benign_001.png"
    w, h = image_size(path)
    assert max(w, h) <= 256
    t = decode_image(path)
    check_tensor(t, h, w)
    check_gray(t)
    assert float(t.max()) > 0.5  # a real frame, not black


# ---- Box: the one box type -------------------------------------------------------------


def test_box_behaves_like_the_plain_tuple_it_replaces():
    import json
    import pickle

    from workbench.data.boxes import Box

    b = Box(1, 2, 5, 9)
    assert b == (1, 2, 5, 9) and hash(b) == hash((1, 2, 5, 9)) and tuple(b) == (1, 2, 5, 9)
    assert str(b) == f"{b}" == "(1, 2, 5, 9)" and str(tuple(b)) == "(1, 2, 5, 9)"
    assert json.dumps(b) == "[1, 2, 5, 9]" and pickle.loads(pickle.dumps(b)) == b
    assert (b.width, b.height) == (4, 7) and b.contains(1, 2) and not b.contains(5, 2)


def test_box_parsing_checking_widening_clipping():
    from workbench.data.boxes import Box, BoxError, BoxValueError
    from workbench.errors import ConfigError, WorkbenchError

    cells = dict(zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), ("1.0", "2", "3", "4")))
    assert Box.from_cells(cells) == (1, 2, 3, 4)
    assert Box.from_cells({}) is None
    with pytest.raises(BoxValueError, match=r"empty bounding box \(3, 2, 3, 4\)"):
        Box.from_cells({**cells, "bbox_x0": "3"})
    assert Box.inside((0, 0, 10, 10), 10, 10) == (0, 0, 10, 10)
    with pytest.raises(BoxError, match="partly outside") as info:
        Box.inside((0, 0, 11, 10), 10, 10)
    assert isinstance(info.value, WorkbenchError) and isinstance(info.value, ValueError)
    # Widening rounds outwards (0.15 * 20 is 3.0000000000000004: still 3 px) and clips.
    assert Box(10, 10, 30, 30).widen(0.15, 40, 40) == (7, 7, 33, 33)
    assert Box(0, 0, 10, 10).widen(0.5, 12, 12) == (0, 0, 12, 12)
    assert Box(5, 7, 19, 30).squared(40, 40) == (1, 7, 24, 30)
    assert Box(-3, 2, 50, 9).clip(40, 30) == (0, 2, 40, 9)
    assert Box(50, 50, 60, 60).clip(40, 40).is_empty
    with pytest.raises(ConfigError, match="margin"):
        Box(1, 1, 5, 5).widen(float("nan"), 10, 10)
    with pytest.raises(BoxValueError, match=r"empty box \(5, 5, 5, 9\)"):
        Box.of((5, 5, 5, 9))
