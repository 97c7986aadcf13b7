"""Shared fixtures: small synthetic datasets in the MVTec layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from zsad.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories (textures and objects) at 64 px, seed 0: read it as ``mvtec:<path>``.

    Each category has 8 train, 6 normal test and 8 defective test images with masks.
    """
    root = tmp_path_factory.mktemp("synthetic") / "seed0"
    write_synthetic(root, categories=3, seed=0, size=64)
    return root


@pytest.fixture(scope="session")
def unseen_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories from seed 1, disjoint from :func:`synthetic_root`'s: for held-out evaluation."""
    root = tmp_path_factory.mktemp("synthetic") / "seed1"
    write_synthetic(root, categories=2, seed=1, size=64)
    return root
