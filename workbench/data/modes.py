"""How an image becomes a network input, by name (a light module: the command line and
the option objects read these without importing torch)."""
from __future__ import annotations

__all__ = ["INPUT_MODES", "RESIZE_MODES"]

#: ``squash`` to the input size, ``crop`` the centre (eval crop ratio), ``letterbox`` pad.
RESIZE_MODES: tuple[str, ...] = ("squash", "crop", "letterbox")
#: The ``whole`` image, or the lesion ``box`` (widened by a margin).
INPUT_MODES: tuple[str, ...] = ("whole", "box")
