"""What a new user meets first: the listings read well at 80 columns when piped, and a misspelt name or
an option that cannot apply is refused at once, before torch loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torchless

from zsad.backbones import BACKBONES
from zsad.methods import available_methods

SRC = str(Path(__file__).resolve().parents[2] / "src")


def zsad(*args: str, blocked: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a fresh process whose output is a pipe (so the terminal width is the piped default)."""
    command = [sys.executable, "-c", torchless.CLI] if blocked else [sys.executable, "-m", "zsad"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": ""})


@pytest.mark.parametrize("command, names", [("backbones", list(BACKBONES)), ("methods", list(available_methods()))])
def test_listings_fit_80_columns_when_piped(command, names):
    done = zsad(command)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    first_words = {line.split()[0] for line in lines if line and not line.startswith(" ")}
    assert set(names) <= first_words  # every entry starts a line of its own, nothing squeezed away
    assert len(lines) <= 3 * len(names) + 5


def test_a_misspelt_backbone_is_refused_before_torch_loads(tmp_path):
    done = zsad("train", "--method", "dictas", "--backbone", "clip-vit-b15", "--data", f"mvtec:{tmp_path}",
                blocked=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "zsad train: error: unknown backbone 'clip-vit-b15'; did you mean clip-vit-b16? choose one of "
        + ", ".join(BACKBONES)]


def test_export_offers_only_the_precisions_it_can_write():
    done = zsad("export", "--method", "knn", "--precision", "bf16", "--out", "x", blocked=True)
    assert done.returncode == 2 and "invalid choice: 'bf16' (choose from 'fp32', 'fp16', 'int8')" in done.stderr
    assert "bf16" not in zsad("export", "--help", blocked=True).stdout
