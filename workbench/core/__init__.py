"""Plumbing every layer shares: atomic files, the stable hash, provenance, the registry pattern.

Nothing here imports another workbench package (``workbench.errors`` aside), so any layer
may use it.
"""
