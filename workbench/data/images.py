"""Decoding image files into float tensors, and small helpers around them.

Every image, whatever its format and bit depth, becomes a float32 tensor of shape
(3, H, W) with values in [0, 1], so backbones never see format-specific inputs.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Any
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError

from workbench.data.boxes import Box, BoxValueError, check_margin
from workbench.errors import WorkbenchError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageDecodeError",
    "ImageChangedError",
    "decode_image",
    "decode_image_bytes",
    "read_image_bytes",
    "as_image_tensor",
    "image_size",
    "crop_to_box",
    "file_sha256",
]

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Signatures of formats we know; a file that starts with one but that PIL cannot
# identify is damaged rather than "not an image".
_IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF8", *_TIFF_MAGICS)
# Modes whose samples are not 8-bit: rescaled per image by min-max.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

PathLike = str | os.PathLike[str]


class ImageDecodeError(WorkbenchError, ValueError):
    """An image file could not be read or decoded.

    Attributes
    ----------
    path : Path
        The offending file.
    reason : str
        Short human-readable cause, e.g. ``"truncated or corrupt image data"``.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable across process pools
        return (type(self), (self.path, self.reason))


class ImageChangedError(ImageDecodeError):
    """An image file's bytes no longer hash to the digest it was validated (and keyed) with."""

    def __init__(self, path: PathLike, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            path,
            f"changed since it was validated (SHA-256 {expected[:12]}... then, {actual[:12]}... now); "
            f"its features were not stored: run again to use the new content",
        )

    def __reduce__(self):
        return (type(self), (self.path, self.expected, self.actual))


class _Refused(Exception):
    """A file that decodes but holds more than one image: the reason says which."""


def read_image_bytes(path: PathLike) -> bytes:
    """Read a whole image file, mapping OS failures (and an empty file) to ImageDecodeError."""
    return _read_bytes(Path(path))


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, mapping OS failures to ImageDecodeError."""
    try:
        if not path.exists():
            raise ImageDecodeError(path, "file not found")
        if path.is_dir():
            raise ImageDecodeError(path, "not a file (a directory)")
        data = path.read_bytes()
    except ImageDecodeError:
        raise
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return data


def _unidentified_reason(data: bytes) -> str:
    if data.startswith(_IMAGE_MAGICS):
        return "truncated or corrupt image data"
    return "not an image file"


def _is_tiff(path: Path, data: bytes) -> bool:
    return path.suffix.lower() in _TIFF_SUFFIXES or data.startswith(_TIFF_MAGICS)


def _pil_to_array(img: Image.Image) -> np.ndarray | None:
    """Loaded PIL image -> HxWxC array (C in {1, 3}); None if the mode is unsupported.

    uint8 arrays mean 0..255; any other dtype is rescaled later by min-max.
    """
    mode = img.mode
    if mode in ("1", "L", "LA", "La"):
        arr = np.asarray(img.convert("L"))
    elif mode == "RGB":
        arr = np.asarray(img)
    elif mode in ("RGBA", "RGBX", "RGBa"):
        arr = np.asarray(img.convert("RGB"))
    elif mode in ("P", "PA"):
        # Going through RGBA honours the palette's transparency entries (PIL warns
        # when converting such palettes straight to RGB); the alpha is then dropped.
        if mode == "PA" or "transparency" in img.info:
            arr = np.asarray(img.convert("RGBA"))[..., :3]
        else:
            arr = np.asarray(img.convert("RGB"))
    elif mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img)
    else:  # CMYK, YCbCr, HSV, LAB, ...: whatever PIL can turn into RGB
        try:
            arr = np.asarray(img.convert("RGB"))
        except ValueError:
            return None
    return arr[..., None] if arr.ndim == 2 else arr


def _tiff_bits_exceed_8(img: Image.Image) -> bool:
    """True when PIL opened a TIFF whose samples are wider than its mode holds.

    PIL reads e.g. 16-bit RGB TIFFs as 8-bit ``RGB`` by keeping one byte per sample
    (and garbles planar ones), so those must go to tifffile instead.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        return False
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if bits is None:
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(int(b) > 8 for b in bits)


def _tiff_refusal(data: bytes) -> str | None:
    """Why a TIFF holding more than one image is refused, or None for a single image.

    Reduced-resolution pages (NewSubfileType bit 0: thumbnails, pyramid levels) are
    previews of the same image and do not count. A file tifffile cannot parse is left
    to the decoders, whose diagnosis is clearer.
    """
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            full = [page for page in tif.pages if not int(getattr(page, "subfiletype", 0) or 0) & 1]
            depth = max((int(getattr(page, "imagedepth", 1) or 1) for page in full), default=1)
    except Exception:
        return None
    if len(full) > 1:
        return (f"multi-page TIFF ({len(full)} images); the workbench reads one image per file "
                f"and will not pick a page silently: save each page as its own file")
    if depth > 1:
        return (f"TIFF page holds {depth} planes (a volume, not one image); the workbench will not pick "
                f"a plane silently: save each plane as its own file")
    return None


def _tifffile_to_array(data: bytes) -> np.ndarray:
    """Decode the single page of a TIFF with tifffile -> HxWxC array (C in {1, 3})."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        axes = page.axes
        photometric = int(page.photometric) if page.photometric is not None else None
    # Anything but Y, X, S (a depth or plane axis) is more than one image: never pick one silently.
    for i in reversed(range(arr.ndim)):
        if axes[i] not in "YXS":
            if arr.shape[i] > 1:
                raise _Refused(f"TIFF page holds {arr.shape[i]} planes along axis {axes[i]!r} "
                               f"(a stack, not one image); save the plane to use as its own file")
            arr = arr.take(0, axis=i)
    axes = "".join(a for a in axes if a in "YXS")
    if "S" not in axes:
        arr = arr[..., None]
        axes += "S"
    arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X"), axes.index("S")], [0, 1, 2])
    n = arr.shape[2]
    if n in (1, 2):  # gray, gray + alpha
        arr = arr[..., :1]
        if photometric == 0:  # MINISWHITE: PIL inverts these, tifffile does not
            if arr.dtype.kind == "u":
                arr = np.iinfo(arr.dtype).max - arr
            elif arr.dtype.kind == "b":
                arr = ~arr
            else:
                arr = -arr.astype(np.float64)
    elif n >= 3:  # RGB, RGB + alpha / extra samples
        arr = arr[..., :3]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return arr


def _decode_array(path: Path, data: bytes) -> np.ndarray:
    """Bytes of an image file -> HxWxC array (C in {1, 3}); raises ImageDecodeError."""
    tiff = _is_tiff(path, data)
    refusal = _tiff_refusal(data) if tiff else None
    if refusal:
        # Reading page 1 of a stack (slices, frames, views) would key a whole study by
        # one slice without a word; refuse and say so.
        raise ImageDecodeError(path, refusal)
    arr: np.ndarray | None = None
    reason: str | None = None
    cause: BaseException | None = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode: truncated data raises here, not later
            if not (tiff and _tiff_bits_exceed_8(img)):
                arr = _pil_to_array(img)
            if arr is None:
                reason = f"unsupported image mode {img.mode!r}"
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, f"image too large ({e})") from e
    except UnidentifiedImageError as e:
        reason, cause = _unidentified_reason(data), e
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, zlib.error, ...
        reason, cause = "truncated or corrupt image data", e
    if arr is not None:
        return arr
    if tiff:
        try:
            return _tifffile_to_array(data)
        except _Refused as e:
            raise ImageDecodeError(path, str(e)) from None
        except Exception as e:
            # PIL's diagnosis is usually the clearer one; keep tifffile's as a detail.
            if reason is None or reason.startswith("unsupported image mode"):
                reason = f"unreadable TIFF ({e})"
            raise ImageDecodeError(path, reason) from (cause or e)
    assert reason is not None
    raise ImageDecodeError(path, reason) from cause


def _to_tensor(arr: np.ndarray, keep_gray: bool = False) -> torch.Tensor:
    """HxWxC array -> (3, H, W) float32 in [0, 1] ((1, H, W) for gray with ``keep_gray``)."""
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / np.float32(255.0)
    else:
        # High bit depth (16-bit, 32-bit int, float): min-max per image, over all
        # channels jointly so colour ratios survive. Medical 16-bit images rarely
        # span 0..65535 (12-bit detectors, windowed CT), so a fixed /65535 would
        # feed near-black images to the network. Non-finite floats count as the minimum.
        x = arr.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, np.nan)
        lo = np.nanmin(x) if finite.any() else 0.0
        hi = np.nanmax(x) if finite.any() else 0.0
        x = np.nan_to_num(x, nan=lo)
        out = ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
    if t.shape[0] == 1 and not keep_gray:
        t = t.repeat(3, 1, 1)
    return t.clamp_(0.0, 1.0)


def decode_image(path: PathLike, *, keep_gray: bool = False, expect_sha256: str | None = None) -> torch.Tensor:
    """Fully decode an image file into a float tensor.

    Parameters
    ----------
    path : str or PathLike
        PNG, JPEG, BMP or TIFF file (other formats PIL reads also work).
    keep_gray : bool
        Return grayscale images as (1, H, W), so a resize works on one channel
        instead of three identical ones (the extraction pipeline replicates after).
    expect_sha256 : str, optional
        Hex SHA-256 the file was validated with. The bytes decoded are the bytes
        hashed (one read), so a file rewritten since validation is an error, never
        new pixels under the old digest.

    Returns
    -------
    torch.Tensor
        float32, shape (3, H, W), values in [0, 1]. Grayscale is replicated to three
        channels (unless ``keep_gray``) and alpha is dropped. 8-bit data is divided by
        255; 16-bit, 32-bit and float data are min-max rescaled per image (a constant image gives zeros),
        since medical images rarely use the full 16-bit range. TIFFs PIL cannot read
        faithfully (e.g. 16-bit RGB) are read with tifffile. EXIF orientation is not
        applied, so the size matches :func:`image_size`.

    Raises
    ------
    ImageDecodeError
        If the file is missing, empty, not an image, truncated or corrupt, or a
        multi-page TIFF (refused: which page is meant is not for us to guess).
    ImageChangedError
        If ``expect_sha256`` is given and the bytes read hash to something else.
    """
    p = Path(path)
    data = _read_bytes(p)
    if expect_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expect_sha256:
            raise ImageChangedError(p, expect_sha256, actual)
    return _to_tensor(_decode_array(p, data), keep_gray=keep_gray)


def decode_image_bytes(data: bytes, name: str = "<upload>", *, keep_gray: bool = False) -> torch.Tensor:
    """Decode an image held in memory (an upload) exactly as :func:`decode_image` decodes a file.

    ``name`` stands for the path in errors and decides TIFF handling by its suffix; the
    bytes are never written to disk.

    Raises
    ------
    ImageDecodeError
        Empty data, not an image, truncated or corrupt data, a decompression bomb, a
        multi-page TIFF; the reason says which.
    """
    p = Path(name)
    if not data:
        raise ImageDecodeError(p, "empty file (0 bytes)")
    return _to_tensor(_decode_array(p, bytes(data)), keep_gray=keep_gray)


def as_image_tensor(image: Any, *, keep_gray: bool = False) -> torch.Tensor:
    """A path, PIL image, ``(H, W[, C])`` array or decoded tensor as :func:`decode_image` gives it.

    Arrays follow the file rules: uint8 means 0..255, other dtypes are min-max rescaled;
    a float tensor ``(C, H, W)`` in [0, 1] is taken as decoded already.
    """
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (1|3, H, W), got {tuple(t.shape)}")
        return t if keep_gray or t.shape[0] == 3 else t.expand(3, -1, -1)
    if isinstance(image, (str, os.PathLike)):
        return decode_image(image, keep_gray=keep_gray)
    if isinstance(image, Image.Image):
        arr = _pil_to_array(image)
        if arr is None:
            raise ValueError(f"unsupported PIL image mode {image.mode!r}")
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"an image array must be (H, W), (H, W, 1|3|4), got {arr.shape}")
        arr = arr[:, :, :3]
    return _to_tensor(arr, keep_gray=keep_gray)


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without a full decode.

    Raises
    ------
    ImageDecodeError
        If the file is missing, empty or its header cannot be parsed.
    """
    p = Path(path)
    try:
        if not p.is_file():
            reason = "not a file (a directory)" if p.is_dir() else "file not found"
            raise ImageDecodeError(p, reason)
        if p.stat().st_size == 0:
            raise ImageDecodeError(p, "empty file (0 bytes)")
        with Image.open(p) as img:
            return img.size
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        with open(p, "rb") as f:
            head = f.read(16)
        if head.startswith(_TIFF_MAGICS) or p.suffix.lower() in _TIFF_SUFFIXES:
            try:
                with tifffile.TiffFile(p) as tif:
                    page = tif.pages[0]
                    return int(page.imagewidth), int(page.imagelength)
            except Exception:
                pass
        raise ImageDecodeError(p, _unidentified_reason(head)) from e
    except Exception as e:
        raise ImageDecodeError(p, "truncated or corrupt image data") from e


def crop_to_box(img: torch.Tensor, box: Sequence[float], margin: float = 0.0) -> torch.Tensor:
    """Crop a (C, H, W) tensor to a box widened by a relative margin.

    Parameters
    ----------
    img : torch.Tensor
        Image of shape (C, H, W).
    box : Box or sequence of 4 int
        (x0, y0, x1, y1) in pixels; x1 and y1 exclusive.
    margin : float
        Fraction of the box width (resp. height) added on each side; the widened
        box is rounded outwards and clipped to the image (:meth:`Box.widen`).

    Returns
    -------
    torch.Tensor
        The (C, h, w) crop, a view of ``img``.

    Raises
    ------
    BoxValueError
        For an empty box, or one that lies outside the image.
    ConfigError
        For a negative or non-finite ``margin``.
    """
    if img.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
    check_margin(margin)
    _, h, w = img.shape
    crop = Box.of(box).widen(margin, w, h)
    if crop.is_empty:
        raise BoxValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    return img[:, crop.y0:crop.y1, crop.x0:crop.x1]


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
