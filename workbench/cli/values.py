"""Parsers of the command line's value strings: one for scalars, one for grids, one for
``KEY=VALUE`` settings, one for block subsets.

Kept apart from the argument parser and free of heavy imports, so every command and
every test reads a value the same way.
"""
from __future__ import annotations

from typing import Any, Sequence

from workbench.errors import ConfigError

__all__ = ["parse_value", "parse_external", "parse_head_grids", "parse_settings", "parse_settings_grid", "parse_subsets",
           "split_features", "split_list"]

_TRUE = ("true", "yes", "on")
_FALSE = ("false", "no", "off")
_NONE = ("none", "null")


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"``/``"yes"``/``"on"`` -> True (and the
    opposites -> False), ``"none"``/``"null"`` -> None; anything else the stripped string."""
    stripped = text.strip()
    low = stripped.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if low in _NONE:
        return None
    for cast in (int, float):
        try:
            return cast(stripped)
        except ValueError:
            pass
    return stripped


def _value_list(text: str, option: str, raw: str, form: str) -> list[Any]:
    """``"1,10"`` -> ``[1, 10]``; an empty item is an error naming the option's form."""
    items = text.split(",")
    if not text.strip() or any(not x.strip() for x in items):
        raise ConfigError(f"{option} {raw!r}: empty value in the list; expected {form}")
    return [parse_value(x) for x in items]


def parse_head_grids(values: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """``["svm-rbf:C=1,10", "svm-rbf:gamma_factor=1", "rf:none"]`` -> per-head grids.

    The sweep's form ``HEAD:PARAM=V1,V2`` (``HEAD:none`` searches nothing). A string
    without the head, as ``workbench finetune --grid`` takes it, is refused by name.
    """
    form = "HEAD:PARAM=V1,V2 or HEAD:none"
    grids: dict[str, dict[str, list[Any]]] = {}
    for v in values:
        head, sep, rest = v.partition(":")
        if not sep or not head.strip():
            raise ConfigError(f"--grid {v!r}: expected {form}")
        grid = grids.setdefault(head.strip(), {})
        if rest.strip().lower() == "none":
            continue
        param, eq, vals = rest.partition("=")
        if not eq or not param.strip() or not vals.strip():
            raise ConfigError(f"--grid {v!r}: expected HEAD:PARAM=V1,V2")
        grid[param.strip()] = _value_list(vals, "--grid", v, "HEAD:PARAM=V1,V2")
    return grids


def parse_settings_grid(values: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=1e-4,1e-3"]`` -> ``{"lr": [0.0001, 0.001]}``: fine-tuning settings to choose by CV.

    One network is fine-tuned, so there is no ``HEAD:`` part; the sweep's form is
    refused with the expected one named.
    """
    out: dict[str, list[Any]] = {}
    for v in values:
        key, sep, vals = v.partition("=")
        if not sep or not key.strip() or ":" in key:
            raise ConfigError(f"--grid {v!r}: expected SETTING=V1,V2 (fine-tuning settings, no HEAD: part)")
        out[key.strip()] = _value_list(vals, "--grid", v, "SETTING=V1,V2")
    return out


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "augment=off"]`` -> ``{"epochs": 5, "augment": False}`` (``--set``)."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {p!r}")
        out[key.strip()] = parse_value(val)
    return out


def parse_external(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["site2=b.csv"]`` -> ``{"site2": "b.csv"}`` (``--external NAME=CSV``, repeatable)."""
    out: dict[str, str] = {}
    for p in pairs or ():
        name, sep, path = p.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--external expects NAME=CSV, got {p!r}")
        if name.strip() in out:
            raise ConfigError(f"--external names set {name.strip()!r} twice")
        out[name.strip()] = path.strip()
    return out


def parse_subsets(text: str) -> str | tuple[int, int] | list[list[str]]:
    """``all`` | ``single`` | ``K`` | ``K1-K2`` | ``"L0+L1;L2"`` (block codes or names)."""
    text = text.strip()
    if text in ("all", "single"):
        return text
    if text.replace("-", "").isdigit():
        lo, _, hi = text.partition("-")
        return (int(lo), int(hi or lo))
    return [[b.strip() for b in part.split("+") if b.strip()] for part in text.split(";") if part.strip()]


def split_features(values: Sequence[str] | None) -> list[str] | None:
    """``--features a:fc6,fc7 --features b`` and ``--features "a:fc6 b"`` both work."""
    if values is None:
        return None
    return [tok for v in values for tok in v.split()]


def split_list(text: str | None) -> list[str] | None:
    """``"benign, malignant"`` -> ``["benign", "malignant"]``; not given (``None``, ``""``) -> ``None``."""
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
