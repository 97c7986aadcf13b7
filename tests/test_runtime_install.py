"""The base install is the edge runtime: a fresh virtual environment with `pip install .` (from this clone, with
the constraints file) holds no PyTorch, fits in 300 MB, and predicts with an exported model exactly as the full
install does."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 300


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def _scores(folder: Path) -> list[tuple[str, str, str]]:
    with (folder / "scores.csv").open() as handle:
        return [(row["path"], row["score"], row["decision"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_runtime_install_has_no_torch_fits_the_budget_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.integers(80, 150, (48, 48, 3), dtype=np.uint8)
    for folder, count in (("refs", 4), ("images", 3)):
        (tmp_path / folder).mkdir()
        for k in range(count):
            picture = np.clip(base.astype(int) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
            if folder == "images" and k:
                picture[8:24, 8:24] = 250
            Image.fromarray(picture).save(tmp_path / folder / f"{k}.png")
    full = [sys.executable, "-m", "zsad"]
    exported = subprocess.run([*full, "export", "--method", "knn", "--backbone", "clip-tiny", "--image-size", "64",
                               "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "model")],
                              capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(ROOT)], capture_output=True, text=True,
                               env={**os.environ, "PIP_NO_INPUT": "1"})
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "freeze"], capture_output=True, text=True)
    packages = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert not packages & {"torch", "transformers", "safetensors", "scipy", "matplotlib", "onnx"}, packages
    assert _size_mb(venv) <= BUDGET_MB

    runtime = subprocess.run([str(venv / "bin" / "zsad"), "predict", "--model", str(tmp_path / "model"), "--images",
                              str(tmp_path / "images"), "--out", str(tmp_path / "runtime")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert runtime.returncode == 0, runtime.stderr
    reference = subprocess.run([*full, "predict", "--model", str(tmp_path / "model"), "--images",
                                str(tmp_path / "images"), "--out", str(tmp_path / "full")],
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    assert _scores(tmp_path / "runtime") == _scores(tmp_path / "full")
    assert [d for _, _, d in _scores(tmp_path / "full")] == ["normal", "anomalous", "anomalous"]

    needs_torch = subprocess.run([str(venv / "bin" / "zsad"), "train", "--method", "dictas", "--data",
                                  f"mvtec:{tmp_path}", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert needs_torch.returncode == 2 and needs_torch.stderr.splitlines() == [
        "zsad train: error: this needs torch, which the runtime install leaves out; install it with: "
        "pip install 'zsad[torch]'"]
