"""Measured next to published: the side-by-side table of ``zsad reproduce``.

One row per (dataset, shots, metric) that the paper publishes or this run measured: the published value
with its source table, the measured mean ± std over reference draws, and Δ = measured − published in
points. Published PRO numbers come from the reference codes' 200-threshold AUPRO, so PRO rows also carry
the compatibility AUPRO and its Δ: a gap that closes there is a metric gap, not a model gap. Below the
table: the protocol differences that apply to the flavour run (marked when they read test-set
statistics) and every deviation of this run from the protocol.
"""

from __future__ import annotations

import json
import math
from typing import Any

from zsad.core import io
from zsad.engine.reproduction import Reproduction
from zsad.metrics import METRIC_KEYS
from zsad.metrics.compat import COMPAT_AUPRO


def side_by_side(reproduction: Reproduction) -> dict[str, Any]:
    """The report as a JSON-ready document (percent points throughout)."""
    protocol = reproduction.protocol
    published: dict[tuple[str, int, str], tuple[float, str]] = {}
    for cell in protocol.published:
        for metric, value in cell["metrics"].items():
            published[(cell["dataset"], cell["shots"], metric)] = (value, cell["source"])
    rows = []
    keys = set(published)
    for target, document in reproduction.results.items():
        for k, summary in document["summary"].items():
            keys |= {(target, int(k), m) for m in METRIC_KEYS if _finite(summary["mean"].get(m))}
    order = {name: i for i, name in enumerate(protocol.targets)}
    for dataset, shots, metric in sorted(keys, key=lambda c: (order.get(c[0], 99), c[1], METRIC_KEYS.index(c[2]))):
        value, source = published.get((dataset, shots, metric), (None, None))
        summary = reproduction.results.get(dataset, {}).get("summary", {}).get(str(shots))
        row: dict[str, Any] = {"dataset": dataset, "shots": shots, "metric": metric, "published": value,
                               "source": source, "measured": None, "std": None, "delta": None}
        if summary is None:
            row["status"] = "not run" if dataset not in reproduction.results else "shot count not run"
        else:
            row["status"] = "measured"
            row["measured"], row["std"] = _points(summary["mean"][metric]), _points(summary["std"][metric])
            row["delta"] = _delta(row["measured"], value)
            if metric == "pixel_aupro":
                row["measured_compat"] = _points(summary["mean"].get(COMPAT_AUPRO))
                row["delta_compat"] = _delta(row["measured_compat"], value)
        rows.append(row)
    return {
        "paper": protocol.paper, "title": protocol.title, "citation": protocol.citation,
        "protocol": reproduction.flavour, "method": protocol.method,
        "auxiliary": reproduction.auxiliary_used, "rows": rows,
        "differences": protocol.differences_for(reproduction.flavour),
        "notes": protocol.flavours[reproduction.flavour].get("notes", []),
        "deviations": reproduction.deviations, "not_run": reproduction.not_run,
        "published_available": bool(protocol.published),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Reproducing {report['title']}", "",
             f"{report['citation']} · method `{report['method']}` · protocol **{report['protocol']}**", ""]
    if not report["published_available"]:
        lines += ["No published numbers are shipped for this paper (see the differences below); the measured "
                  "numbers stand alone.", ""]
    lines += ["Percent points; measured = mean ± std over reference draws; Δ = measured − published. "
              "PRO rows also show the reference codes' AUPRO (compat).", "",
              "| dataset | k | metric | published | measured | Δ | measured (compat) | Δ (compat) | source |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        measured = "–" if row["measured"] is None else f"{row['measured']:.1f} ± {row['std']:.1f}"
        if row["status"] != "measured":
            measured = row["status"]
        lines.append(f"| {row['dataset']} | {row['shots']} | {row['metric']} | {_fmt(row['published'])} | {measured} | "
                     f"{_fmt(row['delta'], sign=True)} | {_fmt(row.get('measured_compat'))} | "
                     f"{_fmt(row.get('delta_compat'), sign=True)} | {row['source'] or '–'} |")
    lines += ["", "## Protocol differences that apply", ""]
    for difference in report["differences"]:
        marker = " **(reads test-set statistics)**" if difference["test_statistics"] else ""
        lines.append(f"- `{difference['option']}` ({difference['flavour']}){marker}: {difference['what']}")
    for note in report["notes"]:
        lines.append(f"- {note}")
    lines += ["", "## Deviations of this run from the protocol", ""]
    lines += [f"- {d}" for d in report["deviations"]] or ["- none"]
    if report["not_run"]:
        lines += ["", f"Not run (no --data given): {', '.join(report['not_run'])}."]
    auxiliary = {t: a for t, a in report["auxiliary"].items() if a}
    if auxiliary:
        lines += ["", "Auxiliary training sets: " + ", ".join(f"{t} ← {a}" for t, a in auxiliary.items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(out, reproduction: Reproduction) -> dict[str, Any]:
    """``reproduce.json`` and ``reproduce.md`` in ``out``; returns the report document."""
    report = side_by_side(reproduction)
    io.write_text(out / "reproduce.json", json.dumps(report, indent=2, allow_nan=False))
    io.write_text(out / "reproduce.md", markdown(report))
    return report


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _points(value: Any) -> float | None:
    return round(100 * value, 2) if _finite(value) else None


def _delta(measured: float | None, published: float | None) -> float | None:
    return None if measured is None or published is None else round(measured - published, 2)


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.1f}" if sign else f"{value:.1f}"
