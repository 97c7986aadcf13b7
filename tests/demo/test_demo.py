"""The demo end to end at a reduced size, and its output folder handling."""

from __future__ import annotations

import json

import pytest

from zsad.demo import MARKER, DemoPlan, prepare_folder, run_demo
from zsad.errors import ConfigError
from zsad.methods import available_methods
from zsad.report import Results


def test_quick_demo_writes_results_predictions_and_report(tmp_path):
    methods = tuple(m for m in DemoPlan().methods if m in available_methods())
    plan = DemoPlan.quick(methods)
    result = run_demo(tmp_path / "demo", plan)

    assert set(result.results) == set(methods)
    for name, folder in result.results.items():
        document = json.loads((folder / "results.json").read_text())
        assert document["method"] == name
        assert set(document["summary"]) == {str(k) for k in plan.shots}
        assert Results.load(folder).data is not None  # curves and gallery kept for the report
    for name in methods:
        if available_methods()[name].trainable:
            assert (tmp_path / "demo" / "checkpoints" / name / "config.json").is_file()
    html = result.report.read_text(encoding="utf-8")
    assert all(f"<td>{name}</td>" in html for name in methods)
    assert result.prediction.predicted == plan.target_good + plan.target_defect
    assert (result.prediction.out / "scores.csv").is_file()
    marker = json.loads((tmp_path / "demo" / MARKER).read_text())
    assert set(marker["stages"]) >= {"data", "report"} and marker["seconds"] > 0


def test_output_folder_is_reused_only_if_the_demo_wrote_it(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by `zsad demo`"):
        prepare_folder(foreign)
    assert (foreign / "thesis.tex").is_file()

    earlier = tmp_path / "earlier"
    (earlier / "results" / "knn").mkdir(parents=True)
    (earlier / MARKER).write_text("{}")
    (earlier / "notes.txt").write_text("the user's")
    prepare_folder(earlier)
    assert sorted(p.name for p in earlier.iterdir()) == ["notes.txt"]
