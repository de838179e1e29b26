"""``workbench serve``: the local web page and JSON API of a model bundle.

``create_app(model)`` builds the FastAPI app of any loaded model (see
:mod:`workbench.serve.app` for the interface it expects), ``serve(model_dir)`` loads a
bundle and runs it under uvicorn, ``start_server(app)`` runs an app in a background
thread (tests, benchmarks), and ``load_test(url, image_bytes)`` measures one.

Names are imported lazily: the command line imports this package without paying for
FastAPI, torch or matplotlib.
"""
from __future__ import annotations

from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "create_app": "app", "contour_png": "app", "overlay_png": "app",
    "serve": "run", "start_server": "run",
    "load_test": "loadtest",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, {n: f"workbench.serve.{m}" for n, m in _EXPORTS.items()}, globals())
