"""Paper output: tables (Markdown, LaTeX booktabs, CSV) and figures (PNG, PDF) from run records."""
