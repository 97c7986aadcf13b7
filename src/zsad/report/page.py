"""The HTML report of one or more evaluations: tables, curves and a gallery, in one self-contained file.

Every picture is embedded as a base64 PNG and the style sheet is inline, so ``report.html`` can be
mailed, archived or opened offline; the curve figures are also written as PNG files in ``figures/``.
Several result folders (e.g. one per method on the same data) share each table and curve, one row or
line per method. Results without saved predictions (a plain ``zsad eval``) still get their tables.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad import __version__
from zsad.core import io
from zsad.errors import DataError
from zsad.metrics import METRIC_KEYS
from zsad.report.curves import CURVES, GRIDS, mean_curve
from zsad.report.data import GalleryExample, ReportData
from zsad.report.plots import Panel, panels_png

REPORT = "report.html"
FIGURES = "figures"
# figure name -> its panels: (curve, title, x label, y label, metric summarising the curve)
FIGURE_PANELS = {
    "image": [("image_roc", "image ROC", "false positive rate", "true positive rate", "image_auroc"),
              ("image_pr", "image PR", "recall", "precision", "image_ap")],
    "pixel": [("pixel_roc", "pixel ROC", "false positive rate", "true positive rate", "pixel_auroc"),
              ("pixel_pr", "pixel PR", "recall", "precision", "pixel_ap"),
              ("pixel_pro", "PRO up to FPR 0.3", "false positive rate", "per-region overlap", "pixel_aupro")],
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr.mean td { font-weight: bold; border-top: 1px solid #999; }
.note { background: #fff6dc; border-left: 4px solid #e0b000; padding: 0.5em 0.8em; }
.muted { color: #666; } figure { display: inline-block; margin: 0.4em 0.8em 0.8em 0; vertical-align: top; }
figcaption { font-size: 0.8em; color: #444; max-width: 680px; overflow-wrap: anywhere; }
img { max-width: 100%; } .gallery figure { width: 560px; }
"""


@dataclass
class Results:
    """One evaluation: its folder, its ``results.json`` document and, if kept, its report data."""

    folder: Path
    document: dict[str, Any]
    data: ReportData | None

    @classmethod
    def load(cls, folder: str | Path) -> Results:
        folder = Path(folder)
        path = folder / "results.json"
        if not path.is_file():
            raise DataError(f"{folder}: no results.json here; run `zsad eval --out {folder}` first")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable results ({err})") from None
        return cls(folder, document, ReportData.load(folder))

    @property
    def method(self) -> str:
        return str(self.document.get("method", self.folder.name))


def write_report(results: list[Results], out: Path) -> Path:
    """Write ``report.html`` and ``figures/*.png`` into ``out`` and return the HTML path."""
    labels = _labels(results)
    figures = curve_figures(results, labels)
    for name, png in figures.items():
        io.write_bytes(out / FIGURES / f"{name}.png", png)
    page = render_page(results, labels, figures)
    io.write_text(out / REPORT, page)
    return out / REPORT


def _labels(results: list[Results]) -> list[str]:
    """Method names, with the folder added where two results share a method."""
    methods = [r.method for r in results]
    return [m if methods.count(m) == 1 else f"{m} ({r.folder.name})" for m, r in zip(methods, results)]


def _shots(results: Iterable[Results]) -> list[str]:
    return sorted({k for r in results for k in r.document.get("summary", {})}, key=int)


def curve_figures(results: list[Results], labels: list[str]) -> dict[str, bytes]:
    """``{"image_k4": png, "pixel_k4": png, ...}``: per k, the mean curves over categories and seeds."""
    figures = {}
    with_data = [(r, label) for r, label in zip(results, labels) if r.data is not None]
    for k in _shots(r for r, _ in with_data):
        for name, specs in FIGURE_PANELS.items():
            panels = []
            for curve, title, xlabel, ylabel, metric in specs:
                grid = GRIDS[CURVES[curve]]
                panel = Panel(f"{title} · {k}-shot", xlabel, ylabel, grid, chance=curve.endswith("roc"))
                for r, label in with_data:
                    mean = mean_curve([run[curve] for run in r.data.runs if str(run["shots"]) == k])
                    if mean is not None:
                        value = r.document["summary"].get(k, {}).get("mean", {}).get(metric)
                        panel.series.append((f"{label} ({_percent(value)})", mean))
                panels.append(panel)
            figures[f"{name}_k{k}"] = panels_png(panels)
    return figures


def render_page(results: list[Results], labels: list[str], figures: dict[str, bytes]) -> str:
    datasets = sorted({str(r.document.get("dataset", "?")) for r in results})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>zsad report: {_e(', '.join(labels))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Anomaly detection report</h1>",
        f'<p class="muted">{_e(", ".join(labels))} on {_e(", ".join(datasets))} · zsad {__version__} · metrics in %, '
        "mean ± std over reference draws (seeds)</p>",
    ]
    parts += _notes(results, labels)
    parts += _summary_section(results, labels)
    parts += _category_section(results, labels)
    parts += _curve_section(figures)
    parts += _gallery_section(results, labels)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _notes(results: list[Results], labels: list[str]) -> list[str]:
    return [f'<p class="note">No curves or gallery for {_e(label)}: {_e(str(r.folder))} holds results only. '
            f"Run <code>zsad eval … --out {_e(str(r.folder))} --report</code> to keep what they need.</p>"
            for r, label in zip(results, labels) if r.data is None]


def _summary_section(results: list[Results], labels: list[str]) -> list[str]:
    parts = ["<h2>Summary</h2>"]
    for k in _shots(results):
        rows = [(label, r.document["summary"][k]) for r, label in zip(results, labels) if k in r.document["summary"]]
        parts.append(f"<h3>{_shots_title(k)} · mean over categories</h3>")
        parts.append(_table("method", [(label, cell["mean"], cell["std"], False) for label, cell in rows], k))
    return parts


def _category_section(results: list[Results], labels: list[str]) -> list[str]:
    parts = ["<h2>Per category</h2>"]
    for r, label in zip(results, labels):
        for k, cell in r.document.get("summary", {}).items():
            rows = [(c, s["mean"], s["std"], False) for c, s in cell["per_category"].items()]
            rows.append(("mean", cell["mean"], cell["std"], True))
            parts.append(f"<h3>{_e(label)} · {_shots_title(k)}</h3>")
            parts.append(_table("category", rows, k))
    return parts


def _curve_section(figures: dict[str, bytes]) -> list[str]:
    if not figures:
        return []
    parts = ["<h2>Curves</h2>", '<p class="muted">Mean over categories and seeds; the legend gives the metric '
             "(AUROC, AP, AUPRO).</p>"]
    parts += [f'<figure>{_img(png, name)}<figcaption>{_e(name)}.png</figcaption></figure>'
              for name, png in figures.items()]
    return parts


def _gallery_section(results: list[Results], labels: list[str]) -> list[str]:
    parts = []
    for r, label in zip(results, labels):
        if r.data is None or not r.data.gallery:
            continue
        largest = max(e.shots for e in r.data.gallery)
        parts.append(f"<h3>{_e(label)} · {_shots_title(str(largest))}</h3>")
        parts += [_gallery_figure(e) for e in r.data.gallery if e.shots == largest]
    if not parts:
        return []
    return ["<h2>Gallery</h2>", '<p class="muted">Per category, the anomalous test images whose maps find the '
            "defect best and worst: image · ground truth · heatmap (one colour scale per category).</p>",
            '<div class="gallery">', *parts, "</div>"]


def _gallery_figure(example: GalleryExample) -> str:
    caption = (f"<b>{_e(example.category)}</b> · {example.rank} · {example.quality_name} "
               f"{example.quality:.3f} · score {example.score:.4g}<br>{_e(example.path)}")
    picture = _img(example.png, f"{example.category} {example.rank}")
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _table(first: str, rows: list[tuple[str, dict, dict, bool]], k: str) -> str:
    header = "".join(f"<th>{_e(m.replace('_', ' '))}</th>" for m in METRIC_KEYS)
    lines = [f"<table><thead><tr><th>{_e(first)}</th>{header}</tr></thead><tbody>"]
    for name, mean, std, is_mean in rows:
        cells = "".join(f"<td>{_cell(mean.get(m), std.get(m), k)}</td>" for m in METRIC_KEYS)
        row = '<tr class="mean">' if is_mean else "<tr>"
        lines.append(f"{row}<td>{_e(name)}</td>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _cell(mean: float | None, std: float | None, k: str) -> str:
    if mean is None or mean != mean:
        return "–"
    if k == "0" or std is None or std != std:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _percent(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def _shots_title(k: str) -> str:
    return "zero-shot" if k == "0" else f"{k}-shot"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _e(text: str) -> str:
    return html.escape(text, quote=True)
