"""Rendering a study: figures (matplotlib), report.md and index.html, results.json and .csv. It draws what
ganq.study measured and measures nothing itself. Torch-free."""

from ganq.report.figures import write_figures
from ganq.report.pages import write_pages
from ganq.report.tables import write_tables

FIGURES = ("fig-samples.png", "fig-inception.png", "fig-precision-recall.png", "fig-realism.png",
           "fig-quality-vs-size.png")

__all__ = ["FIGURES", "write_figures", "write_pages", "write_tables"]
