"""How features are extracted: one typed, validated object instead of loose keywords."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from workbench.data.modes import INPUT_MODES, RESIZE_MODES
from workbench.errors import ConfigError

__all__ = ["BoxSource", "ExtractOptions", "PRECISIONS", "DTYPES", "PREPROCESS_SITES", "PREDICTED_BOX_SUFFIX",
           "parse_boxes"]

#: ``auto``: bf16 autocast on a GPU, fp32 on the CPU. Part of every cache key.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Storage dtypes of the feature cache.
DTYPES = ("float32", "float16")
#: Where images are resized: ``loader`` workers (on the CPU) or the ``device`` the model
#: runs on; ``auto``: the device when it is a GPU. Not part of the cache key (see
#: :class:`ExtractOptions`).
PREPROCESS_SITES = ("auto", "loader", "device")
#: Added to the name of a block computed on predicted boxes
#: (``tf_efficientnet_lite0:avgpool#pbox``), so records and tables tell it from the block
#: of the same backbone and tap on manual boxes; other blocks keep their names.
PREDICTED_BOX_SUFFIX = "#pbox"

_PREDICTED_RE = re.compile(r"^predicted:(?:(?P<backbone>[^@\s]+)@)?(?P<id>[^@\s]+)$")


@dataclass(frozen=True)
class BoxSource:
    """Boxes predicted by a fine-tuned Y-Net (``predicted:[backbone@]ft-...``).

    ``backbone`` None: the Y-Net is looked up by id among the fine-tuned store's backbones.
    """

    weights_id: str
    backbone: str | None = None

    @property
    def label(self) -> str:
        """``backbone@ft-...``, or the id alone when the backbone is to be found."""
        return f"{self.backbone}@{self.weights_id}" if self.backbone else self.weights_id

    def __str__(self) -> str:
        return f"predicted:{self.label}"


def parse_boxes(text: str) -> BoxSource | None:
    """``"manual"`` -> None (the manifest's boxes); ``"predicted:[backbone@]ft-..."`` -> a
    :class:`BoxSource`.

    Raises
    ------
    ConfigError
        Naming the value: another form, or an id that is not one fine-tuned network.
    """
    if not isinstance(text, str):
        raise ConfigError(f"extraction option boxes = {text!r}: expected 'manual' or 'predicted:<Y-Net id>'")
    if text == "manual":
        return None
    m = _PREDICTED_RE.match(text.strip())
    if not m:
        raise ConfigError(f"extraction option boxes = {text!r}: expected 'manual', 'predicted:ft-...' or "
                          f"'predicted:<backbone>@ft-...' (a Y-Net of the fine-tuned store)")
    wid = m["id"]
    if wid.startswith("ftn-"):
        raise ConfigError(f"extraction option boxes = {text!r}: {wid} is a nested set (one network per outer "
                          f"fold); predicted boxes come from one Y-Net: give its ft- id")
    if not wid.startswith("ft-"):
        raise ConfigError(f"extraction option boxes = {text!r}: {wid!r} is not a fine-tuned weights id "
                          f"(ft-...); predicted boxes come from a Y-Net fine-tuned with model = 'ynet'")
    return BoxSource(wid, m["backbone"])


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of one extraction pass (the same for every backbone of the pass).

    Parameters
    ----------
    input, box_margin
        ``"whole"`` image or ``"box"`` crop widened by ``box_margin`` on each side.
    boxes
        With ``input="box"``: ``"manual"`` (the manifest's ``bbox_*`` columns) or
        ``"predicted:[backbone@]ft-..."``, the box of the lesion a fine-tuned Y-Net segments
        (images whose predicted mask is empty give the whole frame). Part of the cache key.
    resize
        ``"squash"`` (default), ``"crop"`` or ``"letterbox"``; see :class:`Geometry`.
    image_size
        Override every backbone's input size (e.g. 160 for quick CPU runs).
    batch_size, num_workers
        Loader settings; ``num_workers=None`` picks one for the device.
    device, precision
        ``None`` / ``"auto"`` use the GPU when there is one, with bf16 autocast and
        channels_last; fp32 on the CPU. Precision is part of the cache key.
    dtype
        Storage dtype in the cache: ``"float32"`` or ``"float16"``.
    skip_bad
        Skip bad rows (listed in the record) instead of failing before any work.
    pixel_store
        Read decoded pixels from the pixel store beside the cache (``<cache>/pixels``,
        :class:`~workbench.data.pixels.PixelStore`), decoding only images it lacks. The
        pixels are identical either way, so it is not part of the cache key.
    preprocess_on
        Where the box crop's pixels become each backbone's input (uint8 -> [0, 1], resize,
        grey -> 3 channels): ``"loader"`` workers, or the ``"device"`` (the workers only
        read pixels; one upload per batch feeds every backbone); ``"auto"``: the device
        when it is a GPU, else the loader. The same operations run either way, so it is
        not part of the cache key, as fp32 kernels of another device type are not: on
        the CPU the two give bit-identical features, on a GPU they differ by the resize
        kernels' rounding (benchmarks/RESULTS.md states the measured difference).
    """

    input: str = "whole"
    box_margin: float = 0.1
    resize: str = "squash"
    image_size: int | None = None
    batch_size: int = 32
    num_workers: int | None = None
    device: str | None = None
    precision: str = "auto"
    dtype: str = "float32"
    skip_bad: bool = False
    boxes: str = "manual"
    pixel_store: bool = True
    preprocess_on: str = "auto"

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"extraction option {name} = {getattr(self, name)!r}: expected {expected}")

        if self.input not in INPUT_MODES:
            raise bad("input", " or ".join(INPUT_MODES))
        if self.resize not in RESIZE_MODES:
            raise bad("resize", ", ".join(RESIZE_MODES))
        if self.precision not in PRECISIONS:
            raise bad("precision", ", ".join(PRECISIONS))
        if self.dtype not in DTYPES:
            raise bad("dtype", " or ".join(DTYPES))
        if isinstance(self.box_margin, bool) or not isinstance(self.box_margin, (int, float)) \
                or not 0 <= self.box_margin < 10:
            raise bad("box_margin", "a number in [0, 10)")
        for name, allow_none in (("image_size", True), ("batch_size", False), ("num_workers", True)):
            v = getattr(self, name)
            if v is None and allow_none:
                continue
            low = 0 if name == "num_workers" else (16 if name == "image_size" else 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(name, f"an integer >= {low}" + (" or none" if allow_none else ""))
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))  # a torch.device names itself
        if not isinstance(self.skip_bad, bool):
            raise bad("skip_bad", "true or false")
        if not isinstance(self.pixel_store, bool):
            raise bad("pixel_store", "true or false")
        if self.preprocess_on not in PREPROCESS_SITES:
            raise bad("preprocess_on", ", ".join(PREPROCESS_SITES))
        if parse_boxes(self.boxes) is not None and self.input != "box":
            raise ConfigError(f"extraction option boxes = {self.boxes!r} only applies with input = 'box' "
                              f"(input is {self.input!r}: whole images are not cropped)")

    @property
    def box_source(self) -> BoxSource | None:
        """The Y-Net boxes come from, or None for the manifest's boxes (or whole images)."""
        return parse_boxes(self.boxes)

    def preprocess_site(self, device_type: str) -> str:
        """``"loader"`` or ``"device"``: :attr:`preprocess_on` resolved for a device type."""
        if self.preprocess_on == "auto":
            return "device" if device_type == "cuda" else "loader"
        return self.preprocess_on

    @property
    def block_suffix(self) -> str:
        """:data:`PREDICTED_BOX_SUFFIX` for blocks on predicted boxes, else empty."""
        return PREDICTED_BOX_SUFFIX if self.box_source is not None else ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExtractOptions":
        """From a mapping of field names (an experiment's ``[features]``); unknown keys refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown extraction options {unknown}; valid: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "ExtractOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
