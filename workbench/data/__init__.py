"""Data: manifests (which images, labels, splits, boxes), bounding boxes and image decoding.

Names are imported lazily (:mod:`workbench.core.lazy`): the light modules of this
package (``modes``, ``boxes``) must not pull in pandas or torch.
"""
from __future__ import annotations

from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "Box": "boxes", "BoxError": "boxes",
    "SUPPORTED_SUFFIXES": "images", "ImageDecodeError": "images", "crop_to_box": "images",
    "decode_image": "images", "file_sha256": "images", "image_size": "images",
    "BadRow": "manifest", "Item": "manifest", "Manifest": "manifest", "ManifestError": "manifest",
    "INPUT_MODES": "modes", "RESIZE_MODES": "modes",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, {n: f"workbench.data.{m}" for n, m in _EXPORTS.items()}, globals())
