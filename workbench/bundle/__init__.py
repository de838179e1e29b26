"""Model bundles: export a run's candidate, load it, predict and explain single images."""
from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "BundleError": "workbench.bundle.files",
    "BundleModel": "workbench.bundle.model",
    "Explanation": "workbench.bundle.model",
    "Recommendation": "workbench.bundle.export",
    "export_model": "workbench.bundle.export",
    "load_model": "workbench.bundle.model",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
