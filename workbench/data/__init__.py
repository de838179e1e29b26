"""Data: manifests (which images, labels, splits, boxes) and image decoding."""
from workbench.data.images import (
    SUPPORTED_SUFFIXES,
    ImageDecodeError,
    crop_to_box,
    decode_image,
    file_sha256,
    image_size,
)
from workbench.data.manifest import BadRow, Item, Manifest, ManifestError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "BadRow",
    "ImageDecodeError",
    "Item",
    "Manifest",
    "ManifestError",
    "crop_to_box",
    "decode_image",
    "file_sha256",
    "image_size",
]
