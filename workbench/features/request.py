"""What to extract: ``backbone[@weights][:tap,tap]`` requests, and nested sets expanded
into their members (one fine-tuned network per outer fold)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from workbench.backbones.finetuned import find_nested, is_nested_id
from workbench.backbones.registry import get_backbone
from workbench.errors import ConfigError

__all__ = ["FeatureRequest", "expand_requests", "nested_members"]

_SPEC_RE = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<weights>.+?))?(?::(?P<taps>[A-Za-z0-9_.,\s]+))?$")


@dataclass(frozen=True)
class FeatureRequest:
    """``backbone[@weights][:tap,tap]`` as written on the command line.

    Examples: ``alexnet:fc6,fc7``, ``resnet50@random:avgpool``,
    ``tf_efficientnet_lite0`` (all taps, default weights),
    ``vgg16@/data/vgg16-397923af.pth:fc7``, ``timm/convnext_tiny.fb_in1k``.
    """

    backbone: str
    weights: str | None = None
    taps: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> "FeatureRequest":
        m = _SPEC_RE.match(text.strip())
        if not m:
            raise ConfigError(
                f"cannot parse feature spec {text!r}; expected backbone[@weights][:tap,tap], "
                f"e.g. alexnet:fc6,fc7 or resnet50@random:avgpool"
            )
        if m["weights"] is not None and not m["weights"].strip():
            raise ConfigError(f"feature spec {text!r}: empty weights after '@'")
        taps = None
        if m["taps"] is not None:
            taps = tuple(t.strip() for t in m["taps"].split(",") if t.strip())
            if not taps:  # "alexnet:," must not silently widen to every tap
                raise ConfigError(f"feature spec {text!r}: empty tap list after ':'")
        return cls(m["name"].strip(), m["weights"].strip() if m["weights"] else None, taps)

    @property
    def label(self) -> str:
        """``backbone[@weights]`` as requested."""
        return f"{self.backbone}@{self.weights}" if self.weights else self.backbone

    def block_name(self, tap: str) -> str:
        return f"{self.label}:{tap}"


def nested_members(backbone: str, nested_id: str, root=None) -> dict[str, str]:
    """Fold -> fine-tuned weights id of a nested set."""
    return dict(find_nested(backbone, nested_id, root)["members"])


def expand_requests(requests: Sequence) -> tuple[list, dict]:
    """Replace nested requests by their members' requests.

    Returns the flat request list and, per nested request, ``{fold: member request}``.
    """
    flat, plan = [], {}
    for r in requests:
        if not is_nested_id(r.weights):
            flat.append(r)
            continue
        spec = get_backbone(r.backbone)
        members = nested_members(spec.name, r.weights)
        plan[r] = {f: FeatureRequest(r.backbone, wid, r.taps) for f, wid in members.items()}
        for m in plan[r].values():
            if m not in flat:
                flat.append(m)
    return flat, plan
