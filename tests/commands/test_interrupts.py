"""Interrupt safety, measured: `zsad train` killed (SIGKILL) or interrupted (SIGINT) at spread-out moments,
then resumed, ends with the same weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsad.engine.checkpoint import CONFIG, WEIGHTS

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _train(out: Path, data: Path, cache: Path, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "zsad", "train", "--method", "aprilgan", "--backbone", "clip-tiny",
               "--image-size", "32", "--data", f"mvtec:{data}", "--epochs", "6", "--batch-size", "4",
               "--calibration-fraction", "0", "--train-set", f"feature_cache={cache}", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command + (["--resume"] if resume else []), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_and_interrupted_training_resumes_to_identical_weights(synthetic_root, tmp_path):
    cache = tmp_path / "cache"
    reference = _train(tmp_path / "reference", synthetic_root, cache, resume=False)
    start = time.monotonic()
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - start
    out = tmp_path / "interrupted"
    interruptions = 0
    # Moments spread over the run (process start included), alternating SIGKILL and SIGINT.
    for i, fraction in enumerate((0.45, 0.6, 0.7, 0.8, 0.9)):
        process = _train(out, synthetic_root, cache, resume=(out / CONFIG).is_file())
        time.sleep(duration * fraction)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if i % 2 == 0 else signal.SIGINT)
            interruptions += 1
        code = process.wait(timeout=300)
        assert code in (0, 130, -signal.SIGKILL, -signal.SIGINT), process.stderr.read()  # -SIGINT: during exit
        if code == 130:
            assert process.stderr.read().strip().splitlines()[-1] == "zsad train: interrupted"
    final = _train(out, synthetic_root, cache, resume=(out / CONFIG).is_file())
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert interruptions >= 3
    assert (out / WEIGHTS).read_bytes() == (tmp_path / "reference" / WEIGHTS).read_bytes()
    assert not list(out.glob("*.pending")) and not (out / "checkpoint.commit").exists()


@pytest.mark.slow
def test_two_runs_on_the_same_data_share_the_cache_without_breaking_each_other(synthetic_root, tmp_path):
    """Started together, both fill the same feature cache: each in its own staging folder, the first to
    finish is kept, and both train to the same weights."""
    cache = tmp_path / "cache"
    runs = [_train(tmp_path / f"run{i}", synthetic_root, cache, resume=False) for i in range(2)]
    for process in runs:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    assert (tmp_path / "run0" / WEIGHTS).read_bytes() == (tmp_path / "run1" / WEIGHTS).read_bytes()
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
