"""Curve figures as PNG bytes, drawn with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure


@dataclass
class Panel:
    """One set of axes: a curve per label over a shared x grid."""

    title: str
    xlabel: str
    ylabel: str
    x: np.ndarray
    series: list[tuple[str, np.ndarray]] = field(default_factory=list)
    chance: bool = False  # draw the diagonal of a random ranking (ROC)


def panels_png(panels: list[Panel], width: float = 3.6, height: float = 3.4, dpi: int = 100) -> bytes:
    """The panels side by side in one PNG; a panel without series says "not available"."""
    figure = Figure(figsize=(width * len(panels), height), dpi=dpi, layout="constrained")
    for axes, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        axes.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel,
                 xlim=(float(panel.x[0]), float(panel.x[-1])), ylim=(0, 1.02))
        axes.grid(alpha=0.3)
        if panel.chance:
            axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        for label, y in panel.series:
            axes.plot(panel.x, y, linewidth=1.8, label=label)
        if panel.series:
            axes.legend(loc="best", fontsize="small")
        else:
            axes.text(0.5, 0.5, "not available", transform=axes.transAxes, ha="center", color="0.4")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
