"""Feature blocks aligned to a manifest's image ids."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from workbench.core.io import write_json_atomic
from workbench.errors import UnknownNameError

__all__ = ["BlockInfo", "FeatureSet"]


@dataclass(frozen=True)
class BlockInfo:
    """Provenance of one feature block: enough to find it again in the cache."""

    name: str  # as requested: "alexnet:fc6", "alexnet@random:fc6"
    backbone: str
    weights_id: str
    weights_digest: str
    weights_random: bool
    tap: str
    dim: int
    entry_key: str
    preprocess: dict[str, Any] = field(default_factory=dict)
    #: Features on boxes a Y-Net predicted: the box source (``source``, the Y-Net's
    #: ``backbone``, ``weights_id``, ``weights_digest`` ...); None for manual boxes or
    #: whole images. The sweep marks CV on images the Y-Net trained on optimistic.
    boxes: dict[str, Any] | None = None


class FeatureSet:
    """Feature blocks indexed by name (``backbone[@weights]:tap``) and image id.

    Every block has one row per id, in ``ids`` order.
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[str],
        blocks: dict[str, np.ndarray],
        info: dict[str, BlockInfo],
        record: dict[str, Any] | None = None,
        fold_blocks: dict[str, dict[str, np.ndarray]] | None = None,
        fold_info: dict[str, dict[str, BlockInfo]] | None = None,
    ):
        self.ids = list(ids)
        self.labels = list(labels)
        for name, arr in blocks.items():
            if arr.shape[0] != len(self.ids):
                raise ValueError(f"block {name} has {arr.shape[0]} rows for {len(self.ids)} ids")
        self.blocks = dict(blocks)
        self.info = dict(info)
        self.record = record or {}
        #: Nested fine-tuned blocks: per outer fold, the features of the network fine-tuned
        #: on that fold's training images (``blocks`` holds the test-split network's).
        self.fold_blocks = {n: dict(v) for n, v in (fold_blocks or {}).items()}
        self.fold_info = {n: dict(v) for n, v in (fold_info or {}).items()}
        for name, variants in self.fold_blocks.items():
            if name not in self.blocks:
                raise ValueError(f"fold variants given for unknown block {name}")
            for fold, arr in variants.items():
                if arr.shape != self.blocks[name].shape:
                    raise ValueError(f"block {name} fold {fold}: shape {arr.shape}, expected {self.blocks[name].shape}")

    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.blocks[name]
        except KeyError:
            raise UnknownNameError(f"no feature block {name!r}; blocks: {', '.join(self.blocks)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.blocks

    def __iter__(self) -> Iterator[str]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        dims = ", ".join(f"{n} ({a.shape[1]})" for n, a in self.blocks.items())
        return f"FeatureSet({len(self.ids)} images: {dims})"

    def frame(self, name: str) -> pd.DataFrame:
        """One block as a DataFrame indexed by image id."""
        return pd.DataFrame(self[name], index=pd.Index(self.ids, name="id"))

    def concat(self, names: Sequence[str]) -> np.ndarray:
        """Blocks side by side, in the order given."""
        return np.concatenate([np.asarray(self[n], dtype=np.float32) for n in names], axis=1)

    def save_record(self, path: str | Path) -> Path:
        """Write the run record (config, versions, cache keys, skipped rows) as JSON."""
        rec = dict(self.record)
        rec["blocks"] = {n: asdict(i) for n, i in self.info.items()}
        return write_json_atomic(path, rec)  # a full disk leaves no half-written record
