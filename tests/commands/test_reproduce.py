"""``zsad reproduce``: every paper's protocol end to end on synthetic data, and the shipped protocol data."""

from __future__ import annotations

import json

import pytest

from zsad.cli import main
from zsad.config import with_overrides
from zsad.engine.reproduction import Deviations, Reproduction, _scaled_layers
from zsad.methods import method_class
from zsad.metrics import METRIC_KEYS
from zsad.protocols import PAPERS, Protocol
from zsad.report.published import markdown, side_by_side

TINY = {"spg": "dino-tiny"}  # every other paper runs on clip-tiny


@pytest.mark.parametrize("paper", PAPERS)
def test_every_paper_has_help(paper, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", paper, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert Protocol.load(paper).title in text and "--protocol {paper,code}" in text


@pytest.mark.parametrize("paper", PAPERS)
def test_protocol_files_are_consistent(paper):
    protocol = Protocol.load(paper)
    config_class = method_class(protocol.method).Config
    for flavour, settings in protocol.flavours.items():
        options = {**settings["config"], **settings["evaluate"]}
        for per_target in settings["per_target"].values():
            options |= per_target
        for per_auxiliary in settings.get("per_auxiliary", {}).values():
            options |= per_auxiliary.get("config", {})
        # every option the protocol sets is a real field of the method's config, with a valid value
        with_overrides(config_class(), {k: v for k, v in options.items()})
        assert settings["seeds"] >= 1 and set(settings["per_target"]) <= set(protocol.targets)
    for cell in protocol.published:
        assert cell["dataset"] in protocol.targets and cell["shots"] in protocol.shots and cell["source"]
        assert set(cell["metrics"]) <= set(METRIC_KEYS)
        assert all(0 <= v <= 100 for v in cell["metrics"].values())
    for difference in protocol.differences:
        assert difference["flavour"] in ("paper", "code", "both") and difference["what"]
    if protocol.trains:
        assert all(protocol.auxiliary_for(t) not in (None, t) for t in protocol.targets)
    # the stages the protocol lists are the ones the method declares (the training assembly trains those)
    cls = method_class(protocol.method)
    assert protocol.trains == cls.trainable
    assert [s.get("stage") for s in protocol.stages if "stage" in s] == list(cls.stages)


@pytest.mark.slow
@pytest.mark.parametrize("paper", PAPERS)
def test_reproduce_runs_end_to_end_and_writes_the_side_by_side_table(paper, tmp_path, synthetic_root,
                                                                   unseen_synthetic_root):
    protocol = Protocol.load(paper)
    data = ["--data", f"mvtec=mvtec:{synthetic_root}"]
    if protocol.trains:
        data += ["--data", f"visa=mvtec:{unseen_synthetic_root}"]
    out = tmp_path / "out"
    code = main(["reproduce", paper, *data, "--protocol", "code", "--backbone", TINY.get(paper, "clip-tiny"),
                 "--image-size", "64", "--seeds", "1", "--steps", "2", "--train-set", "batch_size=4",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "reproduce.json").read_text())
    measured = [r for r in report["rows"] if r["status"] == "measured"]
    assert measured and all(r["measured"] is not None for r in measured)
    assert {r["dataset"] for r in measured} == ({"mvtec", "visa"} if protocol.trains else {"mvtec"})
    compared = [r for r in measured if r["published"] is not None]
    assert bool(compared) == any(c["dataset"] in {r["dataset"] for r in measured} for c in protocol.published)
    for row in compared:
        assert row["delta"] == pytest.approx(row["measured"] - row["published"], abs=0.011)
        if row["metric"] == "pixel_aupro":
            assert row["measured_compat"] is not None
    assert any("clip-tiny" in d or "dino-tiny" in d for d in report["deviations"])
    text = (out / "reproduce.md").read_text()
    assert "## Protocol differences that apply" in text
    uses_test_statistics = any(d["test_statistics"] for d in protocol.differences_for("code"))
    assert ("reads test-set statistics" in text) == uses_test_statistics
    assert (out / "eval" / "mvtec" / "results.json").is_file()


def test_unknown_or_missing_datasets_are_one_line_errors(tmp_path, synthetic_root, capsys):
    assert main(["reproduce", "dictas", "--data", f"cifar=mvtec:{synthetic_root}", "--out", str(tmp_path / "a")]) == 2
    assert "reads no dataset named cifar" in capsys.readouterr().err
    assert main(["reproduce", "dictas", "--data", f"mvtec=mvtec:{synthetic_root}", "--backbone", "clip-tiny",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "give --data visa=FORMAT:PATH" in err and len(err.splitlines()) == 1


def test_layers_are_rescaled_to_a_stand_in_backbones_depth():
    protocol = Protocol.load("dictas")
    assert _scaled_layers([6, 12], protocol, "clip-tiny") == [1, 2]
    assert _scaled_layers([6, 12, 18, 24], protocol, "clip-tiny") == [1, 2, 3, 4]
    assert _scaled_layers([6, 12], protocol, "clip-vit-l14") == [6, 12]


def test_the_report_puts_published_measured_and_delta_side_by_side():
    protocol = Protocol.load("dictas")
    summary = {"mean": dict.fromkeys(METRIC_KEYS, 0.5) | {"pixel_aupro": 0.9, "pixel_aupro_compat": 0.94},
               "std": dict.fromkeys([*METRIC_KEYS, "pixel_aupro_compat"], 0.01)}
    reproduction = Reproduction(protocol, "code", {"mvtec": {"summary": {"4": summary}}}, {"mvtec": "visa"},
                                Deviations(seeds=2).describe(protocol, "code"), ["visa"])
    report = side_by_side(reproduction)
    row = next(r for r in report["rows"] if (r["dataset"], r["shots"], r["metric"]) == ("mvtec", 4, "pixel_aupro"))
    assert (row["published"], row["measured"], row["delta"]) == (95.1, 90.0, -5.1)
    assert (row["measured_compat"], row["delta_compat"]) == (94.0, -1.1)
    assert "Table 1" in row["source"]
    assert next(r for r in report["rows"] if r["dataset"] == "visa")["status"] == "not run"
    assert next(r for r in report["rows"] if (r["dataset"], r["shots"]) == ("mvtec", 1))["status"] == \
        "shot count not run"
    text = markdown(report)
    assert "| mvtec | 4 | pixel_aupro | 95.1 | 90.0 ± 1.0 | -5.1 | 94.0 | -1.1 |" in text
    assert "2 reference draw(s) instead of 1" in text and "(reads test-set statistics)" in text


def test_eval_reports_the_compatibility_aupro_only_when_asked(tmp_path, synthetic_root):
    base = ["eval", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "64", "--data",
            f"mvtec:{synthetic_root}", "--shots", "1", "--seeds", "1"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--compat-metrics", "--out", str(tmp_path / "compat")]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    compat = json.loads((tmp_path / "compat" / "results.json").read_text())
    assert "pixel_aupro_compat" not in plain["summary"]["1"]["mean"]
    value = compat["summary"]["1"]["mean"]["pixel_aupro_compat"]
    exact = compat["summary"]["1"]["mean"]["pixel_aupro"]
    assert 0 < value < 1 and exact == plain["summary"]["1"]["mean"]["pixel_aupro"]
    assert "pixel_aupro_compat" in (tmp_path / "compat" / "results.md").read_text()


def test_a_given_checkpoint_is_evaluated_on_its_own_backbone(tmp_path, synthetic_root):
    from zsad.config import to_dict
    from zsad.engine.build import build_method
    from zsad.engine.checkpoint import save_checkpoint

    trained = build_method("dictas", backbone="clip-tiny", image_size=64)
    save_checkpoint(tmp_path / "checkpoint", "dictas", to_dict(trained.config), trained.method_state_dict())
    out = tmp_path / "out"
    assert main(["reproduce", "dictas", "--data", f"mvtec=mvtec:{synthetic_root}", "--checkpoint",
                 str(tmp_path / "checkpoint"), "--image-size", "64", "--seeds", "1", "--out", str(out)]) == 0
    report = json.loads((out / "reproduce.json").read_text())
    assert any(d.startswith("backbone clip-tiny instead of clip-vit-l14-336") for d in report["deviations"])
    assert any(d.startswith("no training") for d in report["deviations"]) and not (out / "train").exists()
    assert report["auxiliary"] == {"mvtec": None}
