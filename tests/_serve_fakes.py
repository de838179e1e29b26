"""A small, deterministic stand-in for a loaded model bundle, and helpers of the serve tests.

``FakeModel`` has the bundle interface that :func:`workbench.serve.create_app` relies on:
P(positive) is the mean intensity of the decoded image (of the box crop, in box mode),
so a test can compute the right answer from the file itself; the explanation is the
grey image, min-max normalised. It also counts how many threads are inside it at once,
so a test can check that the app serialises calls.
"""
from __future__ import annotations

import io
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from workbench.data.images import decode_image, decode_image_bytes

BUSI_IMAGES = Path("/work/shared/data/busi/images")
BUSI_IMAGE = BUSI_IMAGES / "busi_benign_001.png"

CARD = {
    "intended_use": "Research use only; not a medical device.",
    "figures": {
        "cv": {"auc": 0.91, "auc_sd": 0.02},
        "test": {"auc": 0.90, "auc_ci": [0.85, 0.95], "sensitivity": 0.8, "sensitivity_ci": [0.7, 0.88],
                 "specificity": 0.85, "specificity_ci": [0.78, 0.9], "n": 130},
    },
    "baseline": {"name": "CNN lite0", "test_auc": 0.87, "p_value": 0.2},
}
METHOD = "fake saliency (grey level)"


@dataclass
class Explanation:
    heatmap: np.ndarray
    method: str
    proba: np.ndarray


class FakeModel:
    """The model-bundle interface, with answers a test can compute.

    Parameters
    ----------
    input_mode : str
        ``"whole"`` or ``"box"``.
    classes : tuple of str
        Two classes (binary, positive = the second) or more (multiclass: no positive, no
        threshold; the probabilities are the mean of each colour channel, normalised).
    delay : float
        Seconds each prediction sleeps (to make concurrency observable).
    gate : threading.Event, optional
        When given, each prediction waits for it to be set.
    fail : bool
        Raise inside the prediction (a model bug), to test the 500 path.
    """

    def __init__(self, *, input_mode: str = "whole", classes: tuple[str, ...] = ("benign", "malignant"),
                 threshold: float = 0.35, delay: float = 0.0, gate: threading.Event | None = None,
                 fail: bool = False, card: dict | None = None) -> None:
        self.name = f"[fake] mean-intensity ({input_mode})"
        self.kind = "baseline"
        self.classes = list(classes)
        self.positive = self.classes[1] if len(classes) == 2 else None
        self.threshold = threshold if len(classes) == 2 else None
        self.input_mode = input_mode
        self.card = CARD if card is None else card
        self.delay, self.gate, self.fail = delay, gate, fail
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._count = threading.Lock()

    # ---- the interface ------------------------------------------------------------------------
    def recommendation(self, p: float) -> str:
        return "FNA recommended" if self.threshold is not None and p >= self.threshold else "follow-up imaging"

    def predict_proba_tensors(self, images: list[torch.Tensor], boxes: list[tuple] | None = None) -> np.ndarray:
        self._enter()
        try:
            if self.fail:
                raise RuntimeError("fake model failure")
            if self.gate is not None:
                self.gate.wait(30)
            if self.delay:
                time.sleep(self.delay)
            return np.stack([self.proba_of(img, None if boxes is None else boxes[i])
                             for i, img in enumerate(images)])
        finally:
            self._leave()

    def explain_tensor(self, image: torch.Tensor, box: tuple | None = None) -> Explanation:
        self._enter()
        try:
            grey = image.double().mean(0).numpy()
            lo, hi = grey.min(), grey.max()
            heat = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
            return Explanation(heatmap=heat.astype(np.float32), method=METHOD, proba=self.proba_of(image, box))
        finally:
            self._leave()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "positive": self.positive,
                "threshold": self.threshold, "input_mode": self.input_mode, "card": self.card}

    # ---- what a test computes -------------------------------------------------------------------
    def proba_of(self, image: torch.Tensor, box: tuple | None = None) -> np.ndarray:
        """The probabilities of one decoded image (float64, deterministic)."""
        arr = image.numpy().astype(np.float64)
        if box is not None:
            x0, y0, x1, y1 = box
            arr = arr[:, y0:y1, x0:x1]
        if len(self.classes) == 2:
            p = float(arr.mean())
            return np.array([1.0 - p, p])
        means = np.array([arr[i % 3].mean() + 0.1 * i for i in range(len(self.classes))])
        return means / means.sum()

    def expected(self, source: Path | bytes, name: str = "upload.png", box: tuple | None = None) -> np.ndarray:
        """The probabilities the server must return for a file (or its bytes)."""
        img = decode_image(source) if isinstance(source, Path) else decode_image_bytes(source, name)
        return self.proba_of(img, box)

    def _enter(self) -> None:
        with self._count:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _leave(self) -> None:
        with self._count:
            self.active -= 1


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30), *, seed: int = 0, mode: str = "RGB") -> bytes:
    """A small random image encoded as ``fmt`` (PNG, JPEG, BMP, TIFF)."""
    w, h = size
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


def chromium_paths() -> tuple[str | None, str | None]:
    """(chromium binary, chromedriver), from /usr/bin or PATH; None where missing."""
    def find(*names: str) -> str | None:
        for n in names:
            p = Path("/usr/bin") / n
            if p.exists():
                return str(p)
            found = shutil.which(n)
            if found:
                return found
        return None

    return find("chromium", "chromium-browser", "google-chrome"), find("chromedriver")
