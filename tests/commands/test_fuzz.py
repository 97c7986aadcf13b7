"""Property-based fuzzing through the CLI entry point: random corruptions of images, masks, meta.json,
config.json and safetensors headers. Every run ends with exit 0 or exit 2 and one error line, never a
traceback, and a failed run leaves an earlier output folder exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsad.cli import main
from zsad.data.synthetic import write_synthetic

KNN = ["--method", "knn", "--backbone", "clip-tiny", "--image-size", "32", "--shots", "1", "--seeds", "1"]
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "data"
    write_synthetic(root, categories=1, seed=5, size=32, train_per_category=2, test_good=2, test_defect=2)
    return root


@pytest.fixture(scope="module")
def checkpoint(pristine, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--method", "aprilgan", "--backbone", "clip-tiny", "--image-size", "32", "--data",
                 f"mvtec:{pristine}", "--epochs", "1", "--batch-size", "2", "--calibration-fraction", "0",
                 "--train-set",
                 "feature_cache=off", "--out", str(out)]) == 0
    return out


def mutate(data: bytes, how: str, position: float, value: int) -> bytes:
    cut = int(position * len(data))
    if how == "truncate":
        return data[:cut]
    if how == "flip":
        return data[:cut] + bytes([(data[cut] ^ value) if cut < len(data) else value]) + data[cut + 1 :]
    if how == "insert":
        return data[:cut] + bytes([value]) * 7 + data[cut:]
    return b""  # empty


MUTATIONS = st.tuples(st.sampled_from(["truncate", "flip", "insert", "empty"]), st.floats(0, 0.999),
                      st.integers(1, 255))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_and_check(argv: list[str], out: Path, capsys) -> int:
    before = snapshot(out)
    capsys.readouterr()
    code = main([*argv, "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code in (0, 2), code
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("zsad "), errors
        assert snapshot(out) == before  # nothing already written is lost
    return code


@pytest.fixture
def workspace(pristine, tmp_path, capsys) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    out = tmp_path / "out"
    assert main(["eval", *KNN, "--data", f"mvtec:{data}", "--out", str(out)]) == 0  # an earlier good result
    return data, out


def _files(data: Path, pattern: str) -> list[Path]:
    return sorted(data.rglob(pattern))


@pytest.mark.slow
@FUZZ
@given(choice=st.integers(0, 100), mutation=MUTATIONS)
def test_corrupted_images_and_masks(workspace, capsys, choice, mutation):
    data, out = workspace
    files = _files(data, "*.png")
    target = files[choice % len(files)]
    original = target.read_bytes()
    target.write_bytes(mutate(original, *mutation))
    try:
        run_and_check(["eval", *KNN, "--data", f"mvtec:{data}"], out, capsys)
    finally:
        target.write_bytes(original)


@pytest.mark.slow
@FUZZ
@given(entries=st.recursive(st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=12),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8),
       keep_valid_entry=st.booleans())
def test_random_meta_json(workspace, capsys, entries, keep_valid_entry):
    data, out = workspace
    category = next(p.name for p in data.iterdir() if p.is_dir())
    good = sorted((data / category / "train" / "good").iterdir())[0].relative_to(data).as_posix()
    meta = {"train": {category: [{"img_path": good, "anomaly": 0}] if keep_valid_entry else entries},
            "test": {category: entries} if not isinstance(entries, dict) else entries}
    (data / "meta.json").write_text(json.dumps(meta))
    run_and_check(["eval", *KNN, "--data", f"meta:{data}"], out, capsys)


@pytest.mark.slow
@FUZZ
@given(field=st.sampled_from(["format", "method", "config", "format_version", "method_version", "image_size",
                              "layers", "backbone", "logit_scale"]),
       value=st.none() | st.integers(-5, 9999) | st.text(max_size=6) | st.lists(st.integers(-3, 30), max_size=5))
def test_edited_checkpoint_config(checkpoint, workspace, tmp_path, capsys, field, value):
    data, out = workspace
    edited = tmp_path / "edited"
    shutil.rmtree(edited, ignore_errors=True)
    shutil.copytree(checkpoint, edited)
    config = json.loads((edited / "config.json").read_text())
    if field in config:
        config[field] = value
    else:
        config["config"][field] = value
    (edited / "config.json").write_text(json.dumps(config))
    run_and_check(["eval", "--checkpoint", str(edited), "--data", f"mvtec:{data}", "--shots", "0"], out, capsys)


@pytest.mark.slow
@FUZZ
@given(mutation=MUTATIONS)
def test_corrupted_safetensors(checkpoint, workspace, tmp_path, capsys, mutation):
    data, out = workspace
    edited = tmp_path / "edited"
    shutil.rmtree(edited, ignore_errors=True)
    shutil.copytree(checkpoint, edited)
    weights = edited / "model.safetensors"
    how, position, value = mutation
    raw = weights.read_bytes()
    weights.write_bytes(mutate(raw, how, position * min(1.0, 200 / len(raw)), value))  # the header's region
    run_and_check(["eval", "--checkpoint", str(edited), "--data", f"mvtec:{data}", "--shots", "0"], out, capsys)
