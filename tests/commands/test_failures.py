"""Every failure a user can cause ends in one line on stderr and exit status 2, and loses nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.cli import main
from zsad.config import to_dict
from zsad.data import open_dataset
from zsad.engine.build import build_method
from zsad.engine.checkpoint import COMMIT, CONFIG, PENDING, WEIGHTS, CheckpointWriter, read_config, save_checkpoint
from zsad.engine.feature_cache import FeatureCache
from zsad.engine.train import TrainConfig, training_records
from zsad.errors import ConfigError

KNN = ["--method", "knn", "--backbone", "clip-tiny", "--image-size", "32"]


def fails(capsys, argv: list[str], message: str) -> str:
    """Runs the CLI; asserts exit 2 and exactly one stderr line containing ``message``."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, lines
    assert message in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory) -> Path:
    """A trained aprilgan checkpoint (one epoch) to resume and to load with the wrong config."""
    out = tmp_path_factory.mktemp("failures") / "run"
    assert main(["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", "32", "--data",
                 f"mvtec:{synthetic_root}", "--epochs", "1", "--train-set", "feature_cache=off",
                 "--out", str(out)]) == 0
    return out


def test_out_that_is_a_file_is_refused_before_any_work(synthetic_root, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    data = f"mvtec:{synthetic_root}"
    fails(capsys, ["eval", *KNN, "--data", data, "--shots", "1", "--out", str(a_file)], "is an existing file")
    fails(capsys, ["predict", *KNN, "--images", str(synthetic_root), "--refs", str(synthetic_root),
                   "--out", str(a_file)], "is an existing file")
    fails(capsys, ["train", "--method", "aprilgan", "--data", data, "--out", str(a_file / "run")],
          "is a file, so the output folder cannot be created there")
    fails(capsys, ["report", str(tmp_path), "--out", str(a_file)], "is an existing file")
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("argv, message", [
    (["eval", *KNN, "--shots", "1", "--batch-size", "0"], "batch_size must be in [1, inf], got 0"),
    (["eval", *KNN, "--shots", "1", "--seeds", "0"], "seeds must be in [1, inf], got 0"),
    (["predict", *KNN, "--batch-size", "-3"], "batch_size must be in [1, inf], got -3"),
    (["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", "32", "--lr", "-1"],
     "lr must be in (0, inf], got -1.0"),
    (["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", "32", "--epochs", "0"],
     "epochs must be at least 1, got 0: with no epoch there is nothing to train"),
    (["eval", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "50", "--shots", "1"],
     "image size 50 is not a multiple of clip-tiny's patch size 16; the nearest valid size is 48"),
], ids=["eval-batch", "seeds", "predict-batch", "lr", "epochs", "image-size"])
def test_numbers_out_of_range_name_the_valid_range(argv, message, synthetic_root, tmp_path, capsys):
    data = ["--data", f"mvtec:{synthetic_root}"] if argv[0] != "predict" else \
        ["--images", str(synthetic_root), "--refs", str(synthetic_root)]
    fails(capsys, [*argv, *data, "--out", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


def test_a_default_size_the_backbone_cannot_take_becomes_the_nearest_valid_one(synthetic_root, tmp_path, caplog):
    """aprilgan's default 518 px on clip-tiny (patch 16): trained at 512, said in one line."""
    caplog.set_level("WARNING", logger="zsad")
    assert main(["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--data", f"mvtec:{synthetic_root}",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--train-set", "feature_cache=off",
                 "--out", str(tmp_path / "run")]) == 0
    notes = [r.getMessage() for r in caplog.records if "instead of the method's default" in r.getMessage()]
    assert len(notes) <= 1 and all("using image size 512 instead of the method's default 518" in n for n in notes)
    assert read_config(tmp_path / "run")["config"]["image_size"] == 512


def test_an_edited_checkpoint_config_is_one_line(run, synthetic_root, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    config = json.loads((edited / CONFIG).read_text())
    config["config"]["layers"] = [1, 2]  # two heads instead of four
    (edited / CONFIG).write_text(json.dumps(config))
    fails(capsys, ["eval", "--checkpoint", str(edited), "--data", f"mvtec:{synthetic_root}", "--shots", "0",
                   "--out", str(tmp_path / "b")], "checkpoint does not fit method 'aprilgan': missing none; "
                                                   "unexpected heads.2.bias")


def test_shape_mismatch_is_one_line_naming_tensor_shapes_and_field(tmp_path):
    torch.manual_seed(0)
    method = build_method("moeclip", backbone="clip-tiny", image_size=32)
    save_checkpoint(tmp_path, "moeclip", to_dict(method.config), method.method_state_dict())
    with pytest.raises(ConfigError, match=r"checkpoint tensor '.*' has shape \[.*\] but method 'moeclip' with this "
                                          r"config builds \[.*\]; likely changed: lora_rank=3"):
        build_method(checkpoint=tmp_path, overrides=["lora_rank=3"])


def test_resume_refuses_other_data_or_settings_unless_forced(run, synthetic_root, unseen_synthetic_root, capsys):
    base = ["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", "32", "--train-set",
            "feature_cache=off", "--out", str(run), "--resume"]
    before = (run / WEIGHTS).read_bytes()
    fails(capsys, [*base, "--data", f"mvtec:{synthetic_root}", "--lr", "0.5"], "lr 0.5 (the run had 0.001)")
    fails(capsys, [*base, "--data", f"mvtec:{unseen_synthetic_root}"], "the run had ['mvtec:")
    assert (run / WEIGHTS).read_bytes() == before  # the refused resume changed nothing


def _meta(root: Path, entries: dict) -> Path:
    (root / "meta.json").write_text(json.dumps({"train": entries, "test": entries}))
    return root


def test_index_files_may_not_leave_the_dataset_root(tmp_path, capsys):
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside)
    root = tmp_path / "data"
    root.mkdir()
    _meta(root, {"bottle": [{"img_path": "../secret.png", "anomaly": 0}]})
    fails(capsys, ["eval", *KNN, "--data", f"meta:{root}", "--shots", "1", "--seeds", "1", "--out",
                   str(tmp_path / "o")], "names '../secret.png', outside the dataset root")
    _meta(root, {"bottle": [{"img_path": str(outside), "anomaly": 0}]})
    fails(capsys, ["eval", *KNN, "--data", f"meta:{root}", "--shots", "1", "--out", str(tmp_path / "o")],
          "outside the dataset root")
    assert len(open_dataset(f"meta:{root}", allow_outside_root=True).records("bottle", "test")) == 1
    _meta(root, {"../../..": [{"img_path": "../secret.png", "anomaly": 0}]})
    fails(capsys, ["eval", *KNN, "--data", f"meta:{root}", "--shots", "1", "--out", str(tmp_path / "o")],
          "category name '../../..' is not allowed")


def test_report_embeds_only_files_inside_its_results_folder(tmp_path, capsys):
    results = tmp_path / "results"
    data = results / "report_data"
    (data / "gallery").mkdir(parents=True)
    (results / "results.json").write_text(json.dumps({"method": "x", "summary": {}, "runs": []}))
    (data / "curves.json").write_text(json.dumps({"runs": []}))
    (data / "gallery.json").write_text(json.dumps([{"file": "../../../../etc/passwd"}]))
    fails(capsys, ["report", str(results), "--out", str(tmp_path / "page")], "points outside")


def test_predict_with_no_readable_image_fails_and_keeps_earlier_results(tmp_path, capsys, synthetic_root):
    category = sorted(p for p in synthetic_root.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    args = ["predict", *KNN, "--refs", str(category / "train" / "good"), "--out", str(out)]
    assert main([*args, "--images", str(category / "test" / "good")]) == 0
    earlier = sorted(p.relative_to(out) for p in out.rglob("*"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_text("not an image")
    fails(capsys, [*args, "--images", str(junk)], "none of the 1 file(s)")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == earlier


def test_a_rerun_replaces_the_previous_overlays(tmp_path, synthetic_root):
    categories = sorted(p for p in synthetic_root.iterdir() if p.is_dir())
    out = tmp_path / "out"
    args = ["predict", *KNN, "--refs", str(categories[0] / "train" / "good"), "--out", str(out)]
    assert main([*args, "--images", str(categories[0] / "test")]) == 0
    assert main([*args, "--images", str(categories[1] / "test" / "good")]) == 0
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == sorted(p.name for p in (categories[1] / "test" / "good").iterdir())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_feature_cache_follows_file_content(synthetic_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    method = build_method("aprilgan", backbone="clip-tiny", image_size=32)
    records = training_records([open_dataset(f"mvtec:{data}")], TrainConfig())
    first = FeatureCache(method, records, tmp_path / "cache")
    first.build()
    edited = records[0].image_path
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(edited)  # same name, new content
    second = FeatureCache(method, records, tmp_path / "cache")
    assert second.path != first.path and not second.complete
    second.build()
    assert not np.allclose(second.arrays["patch_tokens"][0], first.arrays["patch_tokens"][0])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_is_committed_as_one_unit(tmp_path):
    save_checkpoint(tmp_path, "knn", {"a": 1}, {"w": torch.zeros(2)}, epoch=1)
    writer = CheckpointWriter(tmp_path)  # epoch 2, killed before its commit marker: epoch 1 stands
    writer.tensors(WEIGHTS, {"w": torch.ones(2)})
    writer.text(CONFIG, json.dumps({"format": "zsad-checkpoint", "method": "knn", "config": {}, "epoch": 2}))
    assert read_config(tmp_path)["epoch"] == 1 and not list(tmp_path.glob(f"*{PENDING}"))
    writer = CheckpointWriter(tmp_path)  # epoch 2 again, killed after the marker, during the renames
    writer.tensors(WEIGHTS, {"w": torch.ones(2)})
    writer.text(CONFIG, json.dumps({"format": "zsad-checkpoint", "method": "knn", "config": {}, "epoch": 2}))
    (tmp_path / COMMIT).write_text(json.dumps(writer.names))
    (tmp_path / f"{WEIGHTS}{PENDING}").replace(tmp_path / WEIGHTS)  # one file renamed, the config not yet
    assert read_config(tmp_path)["epoch"] == 2  # rolled forward: weights and config of the same epoch
    assert not (tmp_path / COMMIT).exists()
