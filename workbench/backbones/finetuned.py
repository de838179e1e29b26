"""The store of fine-tuned weights: ``<root>/<backbone>/ft-<hash>/``.

A fine-tuned network is a new set of weights of its backbone. Its id ``ft-<hash>`` is
a hash of everything that determines it (base weights digest, training images and
labels, validation split, fine-tuning config, code version), so it is known before
training starts: the folder doubles as the place a killed run resumes from, and a
finished id is never trained twice. ``alexnet@ft-3f2a9c0d1e2b:fc6`` then extracts,
caches and sweeps like any other block.

Folder contents: ``checkpoint.pt`` while training, then ``weights.pth`` (the best
state dict, classifier for the task's classes included) and ``meta.json``. The store
may be shared or handed over, and ids are predictable, so every file in it is read as
data only: ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` (a file that would
import anything is refused, :class:`~workbench.backbones.loading.UnsafeCheckpointError`),
``.json`` with :mod:`json`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from workbench.errors import WorkbenchError

__all__ = [
    "FT_PREFIX",
    "FineTunedCorruptError",
    "NESTED_PREFIX",
    "find_nested",
    "is_nested_id",
    "FineTunedNotFoundError",
    "default_root",
    "resolved_root",
    "using_root",
    "is_finetuned_id",
    "finetuned_dir",
    "find_finetuned",
    "list_finetuned",
    "read_meta",
]

FT_PREFIX = "ft-"
#: A nested set: one fine-tuned network per outer fold of a protocol (``nested.json``).
NESTED_PREFIX = "ftn-"
ENV_ROOT = "WORKBENCH_FINETUNED"


class FineTunedNotFoundError(WorkbenchError, FileNotFoundError):
    """A fine-tuned weights id with no finished weights in the store."""


class FineTunedCorruptError(WorkbenchError, ValueError):
    """A stored fine-tune whose metadata cannot be read."""


def default_root() -> Path:
    """``$WORKBENCH_FINETUNED``, else ``./finetuned`` (beside ``./features_cache``)."""
    return Path(os.environ.get(ENV_ROOT) or "finetuned")


def resolved_root(root: str | os.PathLike | None = None) -> Path:
    """The fine-tuned store's absolute path (``root``, else :func:`default_root`): what a
    worker process is given, since it may start in another folder or keep the
    environment of an earlier unit."""
    return (default_root() if root is None else Path(root)).resolve()


@contextmanager
def using_root(root: str | os.PathLike | None) -> Iterator[None]:
    """Resolve fine-tuned ids from ``root`` inside the block (None: leave as it is)."""
    if root is None:
        yield
        return
    old = os.environ.get(ENV_ROOT)
    os.environ[ENV_ROOT] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_ROOT, None)
        else:
            os.environ[ENV_ROOT] = old


def is_finetuned_id(weights_id: str | None) -> bool:
    return bool(weights_id) and weights_id.startswith(FT_PREFIX) and "/" not in weights_id


def is_nested_id(weights_id: str | None) -> bool:
    return bool(weights_id) and weights_id.startswith(NESTED_PREFIX) and "/" not in weights_id


def find_nested(backbone: str, nested_id: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``nested.json`` of a nested set: ``members`` maps each outer fold to an ``ft-`` id."""
    folder = finetuned_dir(backbone, nested_id, root)
    path = folder / "nested.json"
    if not path.is_file():
        known = ", ".join(list_finetuned(backbone, root, nested=True)) or "none"
        raise FineTunedNotFoundError(
            f"no nested fine-tuned set {nested_id!r} for {backbone!r} in {folder}; finished ones: {known}. "
            f"Run `workbench finetune --nested` (same --cv/--seed as the sweep) to make one.")
    return json.loads(path.read_text())


def _safe(backbone: str) -> str:
    return backbone.replace("/", "__")  # timm/<name> backbones


def finetuned_dir(backbone: str, weights_id: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or default_root()) / _safe(backbone) / weights_id


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a stored fine-tune; a damaged one is an error naming it."""
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FineTunedCorruptError(f"{path} is damaged ({e}); delete {folder} to fine-tune it again") from e
    if not isinstance(meta, dict):
        raise FineTunedCorruptError(f"{path} is not a fine-tune's metadata; delete {folder} to fine-tune it again")
    return meta


def find_finetuned(backbone: str, weights_id: str, root: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """The finished weights file and metadata of ``backbone@weights_id``.

    Raises
    ------
    FineTunedNotFoundError
        Naming the folder looked in, and whether a run there is unfinished.
    """
    folder = finetuned_dir(backbone, weights_id, root)
    weights, meta = folder / "weights.pth", folder / "meta.json"
    if weights.is_file() and meta.is_file():
        info = read_meta(folder)
        if info.get("backbone") != backbone:
            raise FineTunedNotFoundError(
                f"{folder} holds weights of {info.get('backbone')!r}, not {backbone!r}")
        return weights, info
    state = ("an unfinished fine-tuning run (checkpoint.pt) is there: run it again to finish"
             if (folder / "checkpoint.pt").is_file() else "nothing is there")
    known = ", ".join(list_finetuned(backbone, root)) or "none"
    raise FineTunedNotFoundError(
        f"no fine-tuned weights {weights_id!r} for {backbone!r} in {folder} ({state}); "
        f"finished ones for this backbone: {known}. Set ${ENV_ROOT} or --finetuned to the store "
        f"that holds them."
    )


def list_finetuned(backbone: str, root: str | os.PathLike | None = None, *, nested: bool = False) -> list[str]:
    """Finished fine-tuned weights ids of ``backbone`` in the store (nested sets with ``nested``)."""
    base = Path(root or default_root()) / _safe(backbone)
    if not base.is_dir():
        return []
    if nested:
        return sorted(p.name for p in base.iterdir() if (p / "nested.json").is_file())
    return sorted(p.name for p in base.iterdir() if (p / "weights.pth").is_file() and (p / "meta.json").is_file())
