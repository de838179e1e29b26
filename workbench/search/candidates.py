"""What a sweep evaluates: feature subsets crossed with heads, and vote ensembles.

Blocks get short codes for tables, the way the study wrote ``[AVR]`` for
AlexNet + VGG + ResNet (each backbone's ``code`` in its spec); a legend maps every
code back to ``backbone:tap``.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from workbench.backbones.registry import backbone_code
from workbench.errors import ConfigError
from workbench.features.options import PREDICTED_BOX_SUFFIX

__all__ = ["Candidate", "baseline_label", "block_codes", "enumerate_subsets", "grid_suffix", "subset_code"]


def _base_code(name: str) -> str:
    """The table code of a block's backbone (``resnet50@ft-1a2b:avgpool`` -> ``R``): its
    spec's code, or the family rule for a backbone that is not registered; ``p`` added
    for a block on a Y-Net's predicted boxes (``...:avgpool#pbox`` -> ``Lp``)."""
    code = backbone_code(name.split(":")[0].split("@")[0])
    return code + "p" if name.endswith(PREDICTED_BOX_SUFFIX) else code


def block_codes(names: Sequence[str], given: dict[str, str] | None = None) -> dict[str, str]:
    """Short, unique codes for block names.

    The backbone's table code (A, V, R, I, L for EfficientNet-Lite ...: the spec's
    ``code``, :func:`workbench.backbones.registry.backbone_code`); where two
    blocks share a letter they get the backbone's trailing digits, then the tap's
    (``L0``, ``L1``; ``A6``, ``A7`` for AlexNet fc6/fc7), then a running number. Codes in
    ``given`` win.

    Raises
    ------
    ConfigError
        If ``given`` names a block that is not in ``names`` or repeats a code.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"codes given for unknown blocks {unknown}; blocks: {list(names)}")
    if len(set(given.values())) != len(given):
        raise ConfigError(f"repeated codes in {given}")
    codes = {n: _base_code(n) for n in names if n not in given}
    for _ in range(3):
        by_code: dict[str, list[str]] = {}
        for n, c in codes.items():
            by_code.setdefault(c, []).append(n)
        clashes = [ns for c, ns in by_code.items() if len(ns) > 1 or c in given.values()]
        if not clashes:
            break
        for ns in clashes:
            for n in ns:
                backbone, _, tap = n.partition(":")
                digits = re.findall(r"\d+", backbone.split("@")[0])
                tap_digits = re.findall(r"\d+", tap)
                suffix = digits[-1] if digits and not codes[n].endswith(digits[-1]) else ""
                if not suffix and tap_digits and not codes[n].endswith(tap_digits[-1]):
                    suffix = tap_digits[-1]
                codes[n] += suffix
        if all(len(ns) == 1 for ns in by_code.values()):
            break
    # Whatever still clashes (same backbone, taps without digits) gets a letter each,
    # skipping any code already taken (given codes included).
    taken = set(given.values()) | set(codes.values())
    groups: dict[str, list[str]] = {}
    for n, c in codes.items():
        groups.setdefault(c, []).append(n)
    for c, ns in groups.items():
        if len(ns) == 1 and c not in given.values():
            continue
        taken.discard(c)
        letters = (f"{c}{chr(ord('a') + i)}" for i in range(26 * 26))
        for n in ns:
            code = next(x for x in letters if x not in taken)
            codes[n] = code
            taken.add(code)
    codes.update(given)
    if len(set(codes.values())) != len(codes):  # cannot happen; a legend must be one to one
        raise AssertionError(f"block codes are not unique: {codes}")
    return {n: codes[n] for n in names}


def subset_code(blocks: Sequence[str], codes: dict[str, str]) -> str:
    """``[AVR]`` when every code is one letter, ``[L0+L1]`` otherwise."""
    cs = [codes[b] for b in blocks]
    return "[" + ("".join(cs) if all(len(c) == 1 for c in cs) else "+".join(cs)) + "]"


def enumerate_subsets(
    names: Sequence[str],
    subsets: str | Iterable[Sequence[str]] | tuple[int, int] = "all",
) -> list[tuple[str, ...]]:
    """Block subsets to evaluate, each in the order of ``names``.

    ``subsets`` is ``"all"`` (every non-empty subset: 63 for six blocks), ``"single"``,
    a ``(k1, k2)`` pair of sizes, or an explicit list of subsets of block names.

    Raises
    ------
    ConfigError
        For an unknown block, an empty or duplicate subset, or sizes out of range.
    """
    names = list(names)
    if not names:
        raise ConfigError("no feature blocks to combine")
    if isinstance(subsets, str):
        if subsets == "all":
            k1, k2 = 1, len(names)
        elif subsets == "single":
            k1 = k2 = 1
        else:
            raise ConfigError(f"subsets must be 'all', 'single', (k1, k2) or a list, not {subsets!r}")
        subsets = (k1, k2)
    if isinstance(subsets, tuple) and len(subsets) == 2 and all(isinstance(k, int) for k in subsets):
        k1, k2 = subsets
        if not 1 <= k1 <= k2 <= len(names):
            raise ConfigError(f"subset sizes {k1}..{k2} out of range 1..{len(names)}")
        return [c for k in range(k1, k2 + 1) for c in itertools.combinations(names, k)]
    out: list[tuple[str, ...]] = []
    order = {n: i for i, n in enumerate(names)}
    for s in subsets:
        if isinstance(s, str):
            s = [s]
        s = list(s)
        unknown = [b for b in s if b not in order]
        if unknown:
            raise ConfigError(f"subset {s} names unknown blocks {unknown}; blocks: {names}")
        if not s or len(set(s)) != len(s):
            raise ConfigError(f"subset {s} is empty or repeats a block")
        t = tuple(sorted(s, key=order.__getitem__))
        if t in out:
            raise ConfigError(f"subset {list(t)} is listed twice")
        out.append(t)
    return out


def grid_suffix(grid: dict[str, Sequence[Any]]) -> str:
    """A short, readable form of a grid for labels: ``{C=1,10;gamma_factor=0.5}``.

    Keys sorted, values as JSON writes them (``1`` and ``1.0`` stay apart, as they do in
    a candidate's identity), strings unquoted; ``{}`` is the empty grid (no search).
    """
    def value(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, default=str)

    parts = [f"{k}=" + ",".join(value(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals]))
             for k, vals in sorted(grid.items())]
    return "{" + ";".join(parts) + "}"


def baseline_label(name: str) -> str:
    """The label of end-to-end baseline ``name``'s records (``CNN lite0``), as
    :func:`workbench.baselines.run.run_baselines` writes it."""
    return f"CNN {name}"


@dataclass(frozen=True)
class Candidate:
    """One row of the study's tables: a head on a subset, or an ensemble.

    ``kind`` is ``"head"`` (``head`` on the concatenation of ``blocks``), ``"vote-hard"``,
    ``"vote-soft"`` or ``"stack"`` (members: every ``(block, head)`` pair of ``blocks``
    and ``heads``, then the end-to-end networks of ``baselines``: a hybrid ensemble).
    """

    kind: str
    blocks: tuple[str, ...]
    head: str | None = None
    heads: tuple[str, ...] = ()
    baselines: tuple[str, ...] = ()

    def label(self, codes: dict[str, str], head_names: dict[str, str] | None = None) -> str:
        """Table label, e.g. ``[AVR] svm-rbf``, ``[AVR] vote-soft(svm-rbf+rf)`` or, for a
        hybrid, ``[A] vote-soft(svm-rbf+rf+CNN lite0)``.

        ``head_names`` shows a head under another name, e.g. with its grid
        (``svm-rbf{C=1,10}``, see :func:`grid_suffix`), members of ensembles included.
        """
        named = head_names or {}
        code = subset_code(self.blocks, codes)
        if self.kind == "head":
            return f"{code} {named.get(self.head, self.head)}"
        members = [named.get(h, h) for h in self.heads] + [baseline_label(b) for b in self.baselines]
        return f"{code} {self.kind}({'+'.join(members)})"

    def members(self) -> list[Candidate]:
        """The single-block head candidates an ensemble votes over (its ``baselines``
        vote too, after them)."""
        return [Candidate("head", (b,), h) for b in self.blocks for h in self.heads]
