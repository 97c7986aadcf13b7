"""`zsad serve --model DIR`: exported models served as products in a process where PyTorch cannot be imported;
the products are the models', their thresholds the export's until the product's own images refine them, and a
model exported again is picked up as a new revision."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchless
from PIL import Image

from conftest import DEFECT, server, texture
from zsad.engine.build import build_method
from zsad.export import export_model

SRC = str(Path(__file__).resolve().parents[2] / "src")
SERVE_WITHOUT_TORCH = [sys.executable, "-c", torchless.CLI, "serve"]


def _export(folder: Path, seeds: range) -> Path:
    torch.manual_seed(0)
    method = build_method("knn", backbone="clip-tiny", image_size=64)
    export_model(method, folder, "bracket", [texture(seed) for seed in seeds], overwrite=True)
    return folder


def _file(image: np.ndarray, name: str) -> tuple[str, tuple[str, bytes, str]]:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return ("images", (name, buffer.getvalue(), "image/png"))


@pytest.mark.slow
def test_exported_models_are_served_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    model = _export(tmp_path / "models" / "bracket", range(10, 14))
    store = tmp_path / "store"
    with server(store, "--model", str(model), command=SERVE_WITHOUT_TORCH) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["models"]["bracket"]["runtime"] == "onnx"
        product = httpx.get(f"{url}/products/bracket").json()
        assert product["thresholds"]["image"] is not None and product["calibration"]["leave_one_out"] is True
        answer = httpx.post(f"{url}/products/bracket/inspect", files=[_file(texture(21, True), "defect.png"),
                                                                       _file(texture(20), "normal.png")], timeout=60)
        assert answer.status_code == 200, answer.text
        defect, normal = answer.json()
        assert (defect["decision"], normal["decision"]) == ("anomalous", "normal")
        x, y = defect["regions"][0]["peak_at"]
        assert DEFECT[0] <= x < DEFECT[1] and DEFECT[0] <= y < DEFECT[1]
        refused = httpx.post(f"{url}/products", data={"name": "other", "class_name": "x"}, timeout=30)
        assert refused.status_code == 422 and "export a model for the new product" in refused.json()["error"]
        assert httpx.delete(f"{url}/products/bracket").status_code == 422
        learnt = httpx.post(f"{url}/inspections/{normal['id']}/review", json={"verdict": "normal", "learn": True},
                            timeout=60)
        assert learnt.status_code == 200, learnt.text
        assert httpx.get(f"{url}/products/bracket").json()["revision"] == 2

    _export(model, range(30, 34))  # exported again on other references: the product follows the new model
    with server(store, "--model", str(model), command=SERVE_WITHOUT_TORCH) as url:
        product = httpx.get(f"{url}/products/bracket").json()
        assert product["revision"] == 3
        assert len(httpx.get(f"{url}/inspections").json()) == 2  # the history is kept
