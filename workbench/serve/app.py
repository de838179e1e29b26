"""The web app of a model bundle: one page and a small JSON API (FastAPI).

``create_app(model)`` serves any object with the model-bundle interface (duck-typed:
``name``, ``kind``, ``classes``, ``positive``, ``threshold``, ``input_mode``, ``card``,
``recommendation``, ``predict_proba_tensors``, ``explain_tensor``, ``describe``; a model
whose ``is_ynet`` is true also ``segment_tensors``, one whose ``predicts_boxes`` is true
also ``predicted_boxes_tensors``):

- ``GET /``: the page (upload an image, see the probability, the class at the
  threshold, the recommendation, the explanation overlay and the model card);
- ``POST /api/predict``: multipart ``file`` (+ ``box``, ``explain``) -> prediction JSON;
  for a Y-Net bundle it also holds the predicted lesion contour and box, and the contour
  drawn over the image (``segmentation``; null for every other model); for a model on a
  Y-Net's predicted boxes no box is sent (one is refused) and the response holds the box
  its Y-Net predicted (``predicted_box``; null for every other model);
- ``GET /api/model``: ``model.describe()``; ``GET /healthz``: liveness.

Uploads are decoded by :func:`workbench.data.images.decode_image_bytes`, exactly as
``workbench predict`` decodes files. They stay in memory: the multipart body is parsed
here, into byte buffers, rather than by Starlette's parser, which spools parts over
1 MB to temporary files. Every bad input is a 4xx ``{"detail": reason}`` naming what was
wrong, and the server keeps serving.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, Literal, NoReturn

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from workbench.core.io import atomic_write
from workbench.data.boxes import Box, BoxValueError
from workbench.data.images import SUPPORTED_SUFFIXES, ImageDecodeError, decode_image_bytes

try:  # the import name since python-multipart 0.0.13; the old one before
    import python_multipart as _multipart
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # pragma: no cover
    import multipart as _multipart  # type: ignore[no-redef]
    from multipart.multipart import parse_options_header  # type: ignore[no-redef]

__all__ = ["create_app", "contour_png", "overlay_png", "PredictResponse", "ModelInfo", "Health", "ErrorDetail",
           "PredictedBoxOut", "SegmentationOut"]

log = logging.getLogger(__name__)

#: Room in a request body for the multipart framing and the small form fields, on top
#: of the file itself.
FORM_OVERHEAD = 64 * 1024
#: Largest non-file form field (``box``, ``explain``): they are a few bytes.
MAX_FIELD_BYTES = 1024
#: Most parts in one form: a request with more is not from our page or a sane client.
MAX_PARTS = 16
#: Longest side of the overlay PNG: enough to read it, small enough to send as base64.
OVERLAY_MAX_SIDE = 1024

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# PIL format -> file suffix, for uploads kept under their content hash.
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}


# ---- response models (they make /openapi.json say what each endpoint returns) ----------

class ErrorDetail(BaseModel):
    """Every error: one sentence naming what was wrong."""

    detail: str


class ExplanationOut(BaseModel):
    """Where the model looked: the method and the heat map blended over the grey image."""

    method: str = Field(description='e.g. "Grad-CAM (layer blocks.6)" or "occlusion sensitivity"')
    overlay_png: str = Field(description="base64 PNG: the heat map (jet) over the grey image")


class SegmentationOut(BaseModel):
    """A Y-Net's lesion segmentation of the image, in its pixel frame (pixel (x, y)
    covers [x, x+1) x [y, y+1), as boxes do)."""

    threshold: float = Field(description="a pixel is lesion where P(lesion) > threshold")
    box: list[int] | None = Field(description="predicted box x0,y0,x1,y1 (x1, y1 exclusive): the largest "
                                              "lesion region's bounds; null when no pixel is lesion")
    area_fraction: float = Field(description="share of the image's pixels predicted lesion")
    contours: list[list[list[float]]] = Field(description="closed outlines of the predicted mask, each a list "
                                                          "of [x, y] points, the largest first; empty when none")
    overlay_png: str = Field(description="base64 PNG: the contour (and box) drawn over the grey image")


class PredictedBoxOut(BaseModel):
    """The lesion box a model on predicted boxes read: its Y-Net's, not the user's."""

    box: list[int] = Field(description="x0,y0,x1,y1 (x1, y1 exclusive) of the crop the model read: the largest "
                                       "region of the Y-Net's P(lesion) > threshold, the whole image when none")
    empty_mask: bool = Field(description="true when no pixel was lesion, so the model read the whole image")
    ynet: str = Field(description="the Y-Net that predicted it (backbone@ft-id), bundled with the model")


class PredictResponse(BaseModel):
    """One image's prediction."""

    filename: str
    classes: list[str]
    proba: dict[str, float] = Field(description="probability of each class")
    positive: str | None = Field(description="the positive class; null for more than two classes")
    p_positive: float | None = Field(description="P(positive); null for more than two classes")
    threshold: float | None = Field(description="operating threshold on P(positive); null for more than two classes")
    predicted: str = Field(description="two classes: positive iff p_positive >= threshold; more: the argmax")
    recommendation: str | None = Field(description="the model's text for p_positive; null for more than two classes")
    explanation: ExplanationOut | None = Field(description="null when explain=false")
    segmentation: SegmentationOut | None = Field(default=None, description="the predicted lesion (Y-Net models "
                                                                         "only); null for other models")
    predicted_box: PredictedBoxOut | None = Field(default=None, description="the lesion box the model's Y-Net "
                                                                          "predicted and the model read (models on "
                                                                          "predicted boxes); null for other models")


class ModelInfo(BaseModel):
    """``model.describe()``: what the model is, its operating point and its card (a bundle
    also says ``predicts_boxes``: true when it crops to the box its own Y-Net predicts,
    and then takes no box)."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    classes: list[str]
    positive: str | None = None
    threshold: float | None = None
    input_mode: str
    card: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok"]
    model: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "Empty, truncated or corrupt upload; malformed multipart body"},
    413: {"model": ErrorDetail, "description": "Upload over the size limit, or an image over the pixel limit"},
    415: {"model": ErrorDetail, "description": "Not multipart/form-data, or the file is not an image"},
    422: {"model": ErrorDetail, "description": "Missing file; missing or bad box, or a box sent to a model that "
                                               "reads none or predicts its own; bad explain flag; multi-page TIFF"},
    500: {"model": ErrorDetail, "description": "The model failed on this image"},
}

# Documented by hand, since the body is parsed by hand (see the module docstring).
_PREDICT_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "PNG, JPEG, BMP or TIFF image"},
            "box": {"type": "string", "example": "40,30,200,180",
                    "description": "lesion box x0,y0,x1,y1 in pixels (x1, y1 exclusive); "
                                   "required when the model's input_mode is 'box', unless it predicts its "
                                   "boxes (predicts_boxes: then refused)"},
            "explain": {"type": "boolean", "default": True, "description": "compute the explanation overlay"},
        },
    }}},
}


def _fail(status: int, detail: str) -> NoReturn:
    raise HTTPException(status_code=status, detail=detail)


# ---- the request body, parsed in memory ----------------------------------------------------

@dataclass
class _Part:
    name: str = ""
    filename: str | None = None  # None: a plain field, not a file
    data: bytearray = field(default_factory=bytearray)


async def _read_form(request: Request, *, max_file_bytes: int) -> dict[str, list[_Part]]:
    """The multipart form of ``request``, every part in memory, limits enforced while reading.

    Raises HTTPException: 415 (not multipart), 413 (too large, by Content-Length or while
    reading), 400 (malformed body).
    """
    ctype = request.headers.get("content-type")
    if not ctype:
        _fail(415, "no Content-Type: send the image as multipart/form-data with the field 'file'")
    mime, params = parse_options_header(ctype)
    if mime != b"multipart/form-data":
        _fail(415, f"unsupported Content-Type {mime.decode('latin-1')!r}: send the image as "
                   "multipart/form-data with the field 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        _fail(400, "malformed multipart body: the Content-Type has no boundary")

    max_body = max_file_bytes + FORM_OVERHEAD
    limit = _limit_text(max_file_bytes)
    length = request.headers.get("content-length")
    if length is not None:
        # Refuse before reading a byte of it.
        try:
            n = int(length)
        except ValueError:
            _fail(400, f"malformed Content-Length {length!r}")
        if n > max_body:
            _fail(413, f"upload too large ({n} bytes); the limit is {limit}")

    parts: list[_Part] = []
    state: dict[str, Any] = {"part": None, "hname": b"", "hval": b"", "headers": {}}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            _fail(400, f"malformed multipart body: more than {MAX_PARTS} parts")
        state["part"], state["headers"] = _Part(), {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"] = state["hval"] = b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if b"name" not in opts:
            _fail(400, "malformed multipart body: a part has no Content-Disposition name")
        part: _Part = state["part"]
        part.name = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            part.filename = opts[b"filename"].decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part: _Part = state["part"]
        part.data += data[start:end]
        if part.filename is not None and len(part.data) > max_file_bytes:
            _fail(413, f"file {part.filename!r} too large (over {len(part.data)} bytes so far); the limit is {limit}")
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            _fail(400, f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        parts.append(state["part"])

    callbacks = {"on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
                 "on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end, "on_headers_finished": on_headers_finished}
    parser = _multipart.MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:  # a body without Content-Length (chunked), or one that lies
                _fail(413, f"upload too large (over {received} bytes so far); the limit is {limit}")
            parser.write(chunk)
        parser.finalize()
    except _multipart.exceptions.FormParserError as e:
        _fail(400, f"malformed multipart body: {e}")
    form: dict[str, list[_Part]] = {}
    for part in parts:
        form.setdefault(part.name, []).append(part)
    return form


def _limit_text(n: int) -> str:
    mb = n / 2**20
    return f"{mb:g} MB" if mb >= 1 else f"{n} bytes"


def _one_field(form: dict[str, list[_Part]], name: str) -> str | None:
    """A plain form field's text, or None when absent; 422 when repeated or sent as a file."""
    parts = form.get(name, [])
    if not parts:
        return None
    if len(parts) > 1:
        _fail(422, f"form field {name!r} given {len(parts)} times; send it once")
    if parts[0].filename is not None:
        _fail(422, f"form field {name!r} must be text, not a file")
    return parts[0].data.decode("utf-8", "replace").strip()


def _parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` -> four ints (checked against the image later); 422 otherwise."""
    cells = [c.strip() for c in text.split(",")]
    if len(cells) != 4:
        _fail(422, f"box must be four integers 'x0,y0,x1,y1' in pixels, got {text!r} ({len(cells)} values)")
    try:
        values = [float(c) for c in cells]
    except ValueError:
        _fail(422, f"box must be four integers 'x0,y0,x1,y1' in pixels, got {text!r} (not numbers)")
    if not all(math.isfinite(v) and v == int(v) for v in values):
        _fail(422, f"box must be four integers 'x0,y0,x1,y1' in pixels, got {text!r} (not integers)")
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def _parse_explain(text: str | None) -> bool:
    if text is None or text == "":
        return True
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    _fail(422, f"explain must be true or false, got {text!r}")


# ---- decoding and the model ----------------------------------------------------------------

def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding the pixels; None if unknown.

    A file that no header reader understands is left to the decoder, whose reason
    (not an image, truncated...) is the clearer one.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError as e:
        _fail(413, f"image too large: {e}")
    except UnidentifiedImageError:
        if not data.startswith(_TIFF_MAGICS):
            return None
    except Exception:
        return None
    try:  # TIFFs that PIL cannot open (e.g. 16-bit RGB) are decoded by tifffile
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    except Exception:
        return None


def _decode_status(reason: str) -> int:
    """HTTP status of an :class:`ImageDecodeError` reason."""
    if reason.startswith("image too large"):
        return 413
    if reason.startswith(("not an image", "unsupported image mode")):
        return 415
    if reason.startswith(("multi-page TIFF", "TIFF page holds")):
        return 422
    return 400  # empty, truncated or corrupt, unreadable TIFF


def _safe_name(filename: str | None) -> str:
    """The upload's base name (never a path) for messages and TIFF detection."""
    name = PurePath((filename or "").replace("\\", "/")).name
    return name or "upload"


def overlay_png(image: Any, heatmap: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                alpha: float = 0.45, cmap: str = "jet", max_side: int = OVERLAY_MAX_SIDE) -> bytes:
    """A heat map blended over the grey image, as PNG bytes.

    Parameters
    ----------
    image : torch.Tensor
        (C, H, W) float in [0, 1].
    heatmap : np.ndarray
        (h, w) float in [0, 1]; resized to (H, W) when it differs.
    box : tuple of 4 int, optional
        Drawn as an outline, so the reader sees what the model was given.
    alpha : float
        Weight of the colour map in the blend.
    max_side : int
        The result is scaled down to this longest side (a 4000 px scan need not travel as one).
    """
    from PIL import Image, ImageDraw

    from workbench.report.gradcam import overlay

    grey = np.asarray(image.float().mean(0).cpu().numpy(), dtype=np.float32)
    h, w = grey.shape
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    # The report's blend (resampled to the image when the map is smaller), in jet here.
    out = Image.fromarray(overlay(grey, np.clip(heat, 0.0, 1.0), alpha=alpha, cmap=cmap), "RGB")
    if box is not None:
        ImageDraw.Draw(out).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(255, 255, 255),
                                      width=max(1, round(max(h, w) / 300)))
    if max(h, w) > max_side:
        out.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


#: Colours of the predicted lesion contour and box on the segmentation overlay.
CONTOUR_RGB = (255, 48, 48)
BOX_RGB = (255, 212, 0)


def contour_png(image: Any, contours: list[np.ndarray], *, box: tuple[int, int, int, int] | None = None,
                max_side: int = OVERLAY_MAX_SIDE) -> bytes:
    """Outlines drawn over the grey image, as PNG bytes.

    Parameters
    ----------
    image : torch.Tensor
        (C, H, W) float in [0, 1].
    contours : list of ndarray (k, 2)
        Closed ``(x, y)`` outlines in the image's pixel frame (:func:`workbench.bundle.segment.mask_contours`).
    box : tuple of 4 int, optional
        The predicted box, drawn thinner in another colour.
    max_side : int
        The result is scaled down to this longest side.
    """
    from PIL import Image, ImageDraw

    grey = np.asarray(image.float().mean(0).cpu().numpy(), dtype=np.float32)
    h, w = grey.shape
    rgb = np.repeat((np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    out = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(h, w) / 250))
    if box is not None:
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=BOX_RGB, width=max(1, width // 2))
    for c in contours:
        pts = [(float(x), float(y)) for x, y in np.asarray(c, dtype=np.float64)]
        if len(pts) >= 2:
            draw.line(pts, fill=CONTOUR_RGB, width=width, joint="curve")
    if max(h, w) > max_side:
        out.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class _Predictor:
    """The model behind a lock, and the synchronous work of one request (run in a thread)."""

    def __init__(self, model: Any, *, max_pixels: int, keep_uploads: Path | None) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.keep_uploads = keep_uploads
        # torch models (hooks of Grad-CAM, module state) are not safe to enter from two
        # threads at once; one prediction at a time, the event loop stays free.
        self.lock = threading.Lock()
        self.classes = [str(c) for c in model.classes]
        # Duck-typed: only a model that says it is a Y-Net is asked for masks, only one
        # that says it predicts its boxes for them.
        self.segments = bool(getattr(model, "is_ynet", False))
        self.predicts_boxes = bool(getattr(model, "predicts_boxes", False))
        src = getattr(model, "box_source", None) or {}
        self.ynet = f"{src.get('backbone')}@{src.get('weights_id')}" if src else ""

    def __call__(self, data: bytes, filename: str, box: tuple[int, int, int, int] | None,
                 explain: bool) -> PredictResponse:
        size = _header_size(data)
        if size is not None and size[0] * size[1] > self.max_pixels:
            _fail(413, f"{filename}: image too large ({size[0]}x{size[1]} = {size[0] * size[1]} pixels); "
                       f"the limit is {self.max_pixels} pixels")
        try:
            image = decode_image_bytes(data, filename)
        except ImageDecodeError as e:
            _fail(_decode_status(e.reason), f"{filename}: {e.reason}")
        _, h, w = image.shape
        if box is not None:
            try:
                box = tuple(Box.inside(box, w, h))  # type: ignore[assignment]
            except BoxValueError as e:
                _fail(422, str(e))
        if self.keep_uploads is not None:
            self._keep(data, filename)
        pbox = None
        try:
            with self.lock:
                if self.predicts_boxes:
                    (found,) = self.model.predicted_boxes_tensors([image])
                    pbox = PredictedBoxOut(box=[0, 0, w, h] if found is None else [int(v) for v in found],
                                           empty_mask=found is None, ynet=self.ynet)
                proba = np.asarray(self.model.predict_proba_tensors([image], None if box is None else [box]),
                                   dtype=np.float64)
                expl = self.model.explain_tensor(image, box=box) if explain else None
                seg = self.model.segment_tensors([image])[0] if self.segments else None
        except HTTPException:
            raise
        except Exception as e:
            log.exception("prediction failed on %s", filename)
            _fail(500, f"{filename}: prediction failed ({type(e).__name__}: {e})")
        return self._response(filename, image, box, proba, expl, seg, pbox)

    def _keep(self, data: bytes, filename: str) -> None:
        """Save an upload (a decodable image) under its content hash, once."""
        from PIL import Image

        suffix = PurePath(filename).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    suffix = _FORMAT_SUFFIX.get(img.format or "", ".img")
            except Exception:
                suffix = ".img"
        path = self.keep_uploads / f"{hashlib.sha256(data).hexdigest()}{suffix}"  # type: ignore[operator]
        if not path.exists():
            atomic_write(path, data)

    def _response(self, filename: str, image: Any, box: tuple[int, int, int, int] | None,
                  proba: np.ndarray, expl: Any, seg: Any = None,
                  pbox: PredictedBoxOut | None = None) -> PredictResponse:
        model, classes = self.model, self.classes
        if proba.shape != (1, len(classes)) or not np.all(np.isfinite(proba)):
            _fail(500, f"{filename}: the model returned probabilities of shape {proba.shape} "
                       f"(finite: {bool(np.all(np.isfinite(proba)))}) for {len(classes)} classes")
        p = proba[0]
        positive = model.positive if len(classes) == 2 else None
        threshold = model.threshold if positive is not None else None
        p_positive: float | None = None
        recommendation: str | None = None
        if positive is not None:
            i_pos = classes.index(str(positive))
            p_positive = float(p[i_pos])
            if threshold is not None:
                predicted = classes[i_pos] if p_positive >= threshold else classes[1 - i_pos]
            else:
                predicted = classes[int(np.argmax(p))]
            recommendation = str(model.recommendation(p_positive))
        else:
            predicted = classes[int(np.argmax(p))]
        explanation = None
        if expl is not None:
            drawn = box if pbox is None else tuple(pbox.box)  # the box the model read
            png = overlay_png(image, np.asarray(expl.heatmap), box=drawn)
            explanation = ExplanationOut(method=str(expl.method), overlay_png=base64.b64encode(png).decode("ascii"))
        segmentation = None
        if seg is not None:
            d = seg.to_dict()
            png = contour_png(image, seg.contours, box=None if seg.box is None else tuple(seg.box))
            segmentation = SegmentationOut(**d, overlay_png=base64.b64encode(png).decode("ascii"))
        return PredictResponse(
            filename=filename, classes=classes, proba={c: float(v) for c, v in zip(classes, p)},
            positive=None if positive is None else str(positive), p_positive=p_positive,
            threshold=None if threshold is None else float(threshold), predicted=predicted,
            recommendation=recommendation, explanation=explanation, segmentation=segmentation,
            predicted_box=pbox)


# ---- the app -----------------------------------------------------------------------------------

def _page() -> str:
    return resources.files("workbench.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(model: Any, *, max_upload_bytes: int = 20 * 2**20, max_pixels: int = 40_000_000,
               keep_uploads: Path | None = None) -> FastAPI:
    """The web app (page + JSON API) of one model.

    Parameters
    ----------
    model
        A loaded model bundle (:func:`workbench.bundle.load_model`) or anything with its
        interface.
    max_upload_bytes : int
        Largest image file accepted (413 above it): checked from Content-Length before
        reading and enforced while reading.
    max_pixels : int
        Largest image (width x height) decoded, read from the header first (413 above it).
    keep_uploads : Path, optional
        Folder where every decodable upload is saved under its SHA-256; by default
        nothing is written to disk.

    Returns
    -------
    FastAPI
    """
    if max_upload_bytes <= 0 or max_pixels <= 0:
        raise ValueError(f"max_upload_bytes and max_pixels must be > 0, got {max_upload_bytes}, {max_pixels}")
    if keep_uploads is not None:
        keep_uploads = Path(keep_uploads)
        keep_uploads.mkdir(parents=True, exist_ok=True)
    predictor = _Predictor(model, max_pixels=max_pixels, keep_uploads=keep_uploads)
    predicts_boxes = bool(getattr(model, "predicts_boxes", False))
    box_mode = str(model.input_mode) == "box" and not predicts_boxes  # a box is asked of the user
    page = _page()

    app = FastAPI(title=f"workbench serve: {model.name}",
                  description="Research use only; not a medical device. Upload an image, get the model's "
                              "probability, the class at its threshold and an explanation (and, from a Y-Net, "
                              "the predicted lesion contour).",
                  version="1")
    app.state.model = model
    app.state.predictor = predictor

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok", model=str(model.name))

    @app.get("/api/model", response_model=ModelInfo, summary="The model: classes, threshold, input mode, card")
    async def model_info() -> Any:
        return model.describe()

    @app.post("/api/predict", response_model=PredictResponse, responses=_ERRORS,
              summary="Predict one image", openapi_extra={"requestBody": _PREDICT_BODY})
    async def predict(request: Request) -> PredictResponse:
        form = await _read_form(request, max_file_bytes=max_upload_bytes)
        files = form.get("file", [])
        if not files:
            _fail(422, "missing form field 'file': attach the image as 'file'")
        if len(files) > 1:
            _fail(422, f"form field 'file' given {len(files)} times; send one image per request")
        part = files[0]
        if part.filename is None:
            _fail(422, "form field 'file' must be a file upload (with a filename), not a text field")
        name = _safe_name(part.filename)
        if not part.data:
            _fail(400, f"{name}: empty file (0 bytes)")
        box_text = _one_field(form, "box")
        box = None
        if box_mode:
            if not box_text:
                _fail(422, "this model reads a lesion box: send the form field 'box' as 'x0,y0,x1,y1' (pixels)")
            box = _parse_box(box_text)
        elif box_text and predicts_boxes:
            _fail(422, f"this model crops to the lesion box its Y-Net ({predictor.ynet}) predicts, and was selected "
                       f"on those boxes: do not send a box")
        elif box_text:
            _fail(422, "this model reads the whole image (input_mode 'whole'): do not send a box")
        explain = _parse_explain(_one_field(form, "explain"))
        return await run_in_threadpool(predictor, bytes(part.data), name, box, explain)

    return app
