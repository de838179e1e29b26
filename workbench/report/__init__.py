"""Paper output: tables (Markdown, LaTeX booktabs, CSV) and figures (PNG, PDF) from run records.

:func:`write_report` rebuilds a run folder's report from its files alone (no network is
loaded, torch is never imported); :mod:`workbench.report.gradcam` lays out the Grad-CAM
maps ``workbench run`` saved.
"""
from workbench.report.build import ReportSettings, Selection, write_report

__all__ = ["ReportSettings", "Selection", "write_report"]
