"""SPG explanations as tables (Markdown and CSV text) and one figure; writing files is the caller's job."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zsad.methods.spg.explain import Driver, GuideAtom
from zsad.methods.spg.guides import GUIDE_NAMES


def _rows(items: Sequence[GuideAtom] | Sequence[Driver]) -> tuple[list[str], list[list[object]]]:
    if not items:
        return [], []
    header = [f.name for f in dataclasses.fields(items[0])]
    return header, [[getattr(item, h) for h in header] for item in items]


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(items: Sequence[GuideAtom] | Sequence[Driver]) -> str:
    header, rows = _rows(items)
    if not header:
        return "(nothing to show)\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(items: Sequence[GuideAtom] | Sequence[Driver]) -> str:
    header, rows = _rows(items)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(header)
        writer.writerows(rows)
    return buffer.getvalue()


def explanation_figure(guide_atoms: Sequence[GuideAtom], drivers: Sequence[Driver]) -> Figure:
    """Heatmaps of the guides' top coefficients and, when given, of each category's driving atoms."""
    panels = 2 if drivers else 1
    figure = Figure(figsize=(11, 3.2 * panels), layout="constrained")
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    atoms = sorted({row.atom for row in guide_atoms})
    grid = np.zeros((len(GUIDE_NAMES), len(atoms)))
    for row in guide_atoms:
        grid[GUIDE_NAMES.index(row.guide), atoms.index(row.atom)] = row.coefficient
    _heatmap(figure, axes[0], grid, list(GUIDE_NAMES), [str(a) for a in atoms], "coefficient",
             "guide codes: top atoms", "Blues")
    if drivers:
        categories = list(dict.fromkeys(d.category for d in drivers))
        shared = sorted({d.atom for d in drivers if d.kind == "shared"})
        columns = shared + sorted({d.atom for d in drivers} - set(shared))
        grid = np.zeros((len(categories), len(columns)))
        for d in drivers:
            grid[categories.index(d.category), columns.index(d.atom)] = d.separation
        labels = [f"{a}*" if a in shared else str(a) for a in columns]
        _heatmap(figure, axes[1], grid, categories, labels, "separation (logit)",
                 "atoms driving the anomaly decision per category (* shared across categories)", "Reds")
    return figure


def _heatmap(figure: Figure, axis, grid: np.ndarray, rows: list[str], columns: list[str], unit: str, title: str,
             colours: str) -> None:
    image = axis.imshow(grid, aspect="auto", cmap=colours, vmin=0, interpolation="nearest")
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axis.set_xlabel("atom")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label=unit)
