"""Turn a registry backbone into a classifier for a task: new head, optional freezing.

Fine-tuning and loading fine-tuned weights must build the very same architecture, so
both go through :func:`adapt_for_task`.
"""
from __future__ import annotations

from torch import nn

__all__ = ["adapt_for_task", "classifier_head", "freeze_early"]

FREEZE_MODES = ("none", "features")


def _parent_and_name(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_path, _, name = dotted.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def classifier_head(model: nn.Module) -> str:
    """Dotted name of the final classification layer.

    timm models say it themselves (``get_classifier``); for torchvision models it is
    the last ``nn.Linear`` in registration order (``fc``, ``classifier.6``,
    ``classifier.3``, ...), which is right for every classification network there.
    """
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):
        head = model.get_classifier()
        for name, mod in model.named_modules():
            if mod is head:
                return name
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer to replace")
    return last


def adapt_for_task(model: nn.Module, n_classes: int) -> nn.Module:
    """Replace ``model``'s classifier by a fresh ``n_classes`` layer (in place).

    Inception-v3's auxiliary classifier is removed: it only serves ImageNet training,
    and dropping it keeps train and eval outputs the same plain logits.
    """
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    if getattr(model, "AuxLogits", None) is not None:
        model.AuxLogits = None
        model.aux_logits = False
    if hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        model.reset_classifier(n_classes)  # timm
        return model
    name = classifier_head(model)
    parent, attr = _parent_and_name(model, name)
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, n_classes, bias=old.bias is not None))
    return model


def freeze_early(model: nn.Module, mode: str | float) -> list[str]:
    """Freeze early parameters; return the names of the frozen ones.

    Parameters
    ----------
    mode
        ``"none"``; ``"features"``: everything but the classifier head (transfer
        learning with a frozen convolutional part, as the bone-scan VGG-16 study did);
        or a fraction in (0, 1): that share of the parameter tensors, in network order.
    """
    params = list(model.named_parameters())
    if mode == "none" or mode == 0:
        return []
    if mode == "features":
        head = classifier_head(model) + "."
        frozen = [n for n, _ in params if not n.startswith(head)]
    elif isinstance(mode, (int, float)) and 0 < float(mode) < 1:
        frozen = [n for n, _ in params[: int(len(params) * float(mode))]]
    else:
        raise ValueError(f"freeze must be 'none', 'features' or a fraction in (0, 1), got {mode!r}")
    names = set(frozen)
    for n, p in params:
        if n in names:
            p.requires_grad_(False)
    return frozen
