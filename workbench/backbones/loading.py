"""Build a registry backbone with its weights and wrap it so one forward pass gives every tap."""
from __future__ import annotations

import pickle  # only for its exception class: nothing here unpickles with it
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from workbench.backbones.adapt import adapt_for_task
from workbench.backbones.registry import BackboneSpec, DataConfig, get_backbone
from workbench.backbones.weights import RANDOM_SEED, ResolvedWeights, resolve_weights
from workbench.errors import ConfigError, WorkbenchError

__all__ = [
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "LoadedBackbone",
    "TapModel",
    "load_backbone",
    "load_data_only",
    "read_state_dict",
]


class CheckpointMismatchError(WorkbenchError, ValueError):
    """A weights file that does not fit the architecture it was given to."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """A ``torch.save`` file that holds more than tensors and plain data (code to run on load)."""


def load_data_only(path: str | Path, *, what: str = "file") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    Every file the workbench reads back may come from a shared or copied folder, so no
    load may run code: a pickled object whose ``__reduce__`` calls a function is
    refused before anything of it runs.

    Raises
    ------
    UnsafeCheckpointError
        Naming the file and the object it would have had to import.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        # Either way nothing of the file ran; only the message differs. An import the
        # restricted unpickler blocked ("GLOBAL posix.system") means the file asks to run
        # code; anything else (junk bytes, another pickle opcode) is merely unreadable.
        wanted = re.search(r"GLOBAL\s+([\w.]+)", text)
        if wanted is None:
            detail = re.search(r"Unsupported[^\n]*", text)
            raise CheckpointMismatchError(
                f"cannot read {what} {path}: not a torch.save file of tensors and plain data"
                + (f" ({detail.group(0).strip()[:200]})" if detail else "")) from None
        # torch's own message advises weights_only=False; the workbench never does that.
        raise UnsafeCheckpointError(
            f"refused to load {what} {path}: it holds objects other than tensors and plain data "
            f"(it would import {wanted.group(1)}), so loading it could run code. The workbench "
            f"never writes such files: it was written by other software or tampered with. Move it "
            f"away; do not load it with weights_only=False.") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin`` or ``.safetensors``, unwrapping
    the usual ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = load_data_only(path, what="weights file")
    except CheckpointMismatchError:  # already names the file and the reason
        raise
    except Exception as e:  # truncated, not a checkpoint, ...
        raise CheckpointMismatchError(f"cannot read weights file {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"weights file {path} does not hold a state dict of tensors")
    # DataParallel / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_checkpoint_strict(model: nn.Module, path: str | Path, *, backbone: str) -> None:
    """Load ``path`` into ``model`` requiring every key and shape to match.

    Raises
    ------
    CheckpointMismatchError
        Naming the file, the backbone and the first mismatching keys, e.g. for a
        checkpoint of another architecture.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch at "
                + few([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong])
            )
        raise CheckpointMismatchError(
            f"weights file {path} does not fit backbone {backbone!r} (is it from another "
            f"architecture?): " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True)


class TapModel(nn.Module):
    """A backbone cut after its last requested tap, returning ``{tap: (N, D) tensor}``.

    The spec's ``tapper`` decides how (torchvision: FX graph nodes, so layers after the
    last tap, e.g. fc8 when only fc6 is asked, are never computed; timm:
    ``forward_head(pre_logits=True)``).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, taps: Sequence[str]):
        super().__init__()
        self.taps = list(taps)
        self.body = spec.tapper(model, [spec.tap(t) for t in self.taps])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.body(x)
        return {t: out[t].flatten(1) for t in self.taps}


@dataclass
class LoadedBackbone:
    """A backbone ready to run: its spec, resolved weights, input config and tap model."""

    spec: BackboneSpec
    weights: ResolvedWeights
    data_config: DataConfig
    model: TapModel


def build_finetuned(spec: BackboneSpec, path: str | Path, num_classes: int) -> nn.Module:
    """A fine-tuned network: the task's classifier, then the file strictly loaded.

    The file is in the timm/torchvision key names it was saved with, not the base
    weights' own format, so the backbone's ``load_state`` is not used.
    """
    model = adapt_for_task(spec.build(), num_classes)
    load_checkpoint_strict(model, path, backbone=f"{spec.name} ({num_classes} classes)")
    return model


def build_model(spec: BackboneSpec, weights: ResolvedWeights) -> nn.Module:
    """The full network with ``weights`` loaded (or seeded random init), in eval mode."""
    if weights.is_random:
        # Seeded so 'random' features are reproducible and cacheable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = spec.build()
    elif weights.is_ynet:
        from workbench.backbones.ynet import load_ynet  # it imports this module

        base = resolve_weights(spec, weights.finetuned.get("base_weights"))
        model = load_ynet(spec, weights.path, weights.num_classes, base=base)
    elif weights.num_classes is not None:
        model = build_finetuned(spec, weights.path, weights.num_classes)
    else:
        model = spec.build()
        spec.load_state(model, str(weights.path))
    return model.eval()


def load_backbone(
    name: str | BackboneSpec,
    weights: str | ResolvedWeights | None = None,
    taps: Sequence[str] | None = None,
) -> LoadedBackbone:
    """Build backbone ``name`` with ``weights`` and return it cut to ``taps``.

    Parameters
    ----------
    name
        Registry name (``"alexnet"``, ``"timm/convnext_tiny"``) or a spec.
    weights
        Weights id, path, ``"random"``, or ``None`` for the default.
    taps
        Taps to return; all of the backbone's by default.
    """
    spec = get_backbone(name) if isinstance(name, str) else name
    resolved = weights if isinstance(weights, ResolvedWeights) else resolve_weights(spec, weights)
    if resolved.is_ynet:
        raise ConfigError(f"{spec.name}@{resolved.id} is a Y-Net (segmentation + classification), not "
                          f"{spec.name} with a new head: its layers are not the backbone's taps. Use it as a "
                          f"baseline, or for predicted boxes (--boxes predicted:{resolved.id})")
    taps = list(taps or spec.taps)
    for t in taps:
        spec.tap(t)
    model = build_model(spec, resolved)
    return LoadedBackbone(spec, resolved, spec.data_config(resolved.id), TapModel(spec, model, taps).eval())
