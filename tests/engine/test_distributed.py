"""Two gloo processes on the CPU (torchrun) give the same training result and evaluation as one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")


def _run(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [TORCHRUN, "--standalone", f"--nproc-per-node={processes}", str(WORKER), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_training_matches_one_process(synthetic_root, tmp_path):
    data = f"mvtec:{synthetic_root}"
    _run(["train", "--data", data, "--out", str(tmp_path / "one")], processes=1)
    _run(["train", "--data", data, "--out", str(tmp_path / "two")], processes=2)
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert (one[name] - two[name]).abs().max() < 1e-5, name
    log_one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_two] == [1, 2]
    assert log_two[-1]["loss"] == pytest.approx(log_one[-1]["loss"], rel=1e-4)


def test_sharded_evaluation_matches_one_process(synthetic_root, tmp_path):
    data = f"mvtec:{synthetic_root}"
    _run(["eval", "--data", data, "--out", str(tmp_path / "one")], processes=1)
    _run(["eval", "--data", data, "--out", str(tmp_path / "two")], processes=2)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert json.loads((tmp_path / "two" / "ranks.json").read_text()) == 2
    assert one["runs"] == two["runs"]
    assert one["summary"] == two["summary"]
