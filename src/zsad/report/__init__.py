"""Reports a person wants to look at: heatmap overlays, curve figures and a self-contained HTML page.

``zsad eval --report`` passes a :class:`ReportCollector` to the evaluator and writes the page beside
``results.json``; ``zsad report`` rebuilds it later, for one or several result folders.
"""

from zsad.report.collector import ReportCollector
from zsad.report.data import ReportData
from zsad.report.page import Results, write_report

__all__ = ["ReportCollector", "ReportData", "Results", "write_report"]
