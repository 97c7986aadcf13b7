"""The procedural benchmark: layout, determinism, variety and exact masks; and the two CLI commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsad.cli import main
from zsad.data import FORMATS, load_sample, open_dataset
from zsad.data.synthetic import render, sample_categories, write_synthetic
from zsad.data.synthetic.defects import OBJECT_DEFECTS, SURFACE_DEFECTS
from zsad.data.synthetic.scenes import SHAPES
from zsad.data.synthetic.textures import PATTERNS
from zsad.errors import ConfigError, DataError


def test_fixture_reads_as_mvtec_and_folder(synthetic_root: Path) -> None:
    mvtec, folder = open_dataset(f"mvtec:{synthetic_root}"), open_dataset(f"folder:{synthetic_root}")
    assert mvtec.categories() == folder.categories()
    assert len(mvtec.categories()) == 3
    for category in mvtec.categories():
        assert mvtec.records(category, "test") == folder.records(category, "test")
        assert len(mvtec.records(category, "train")) == 8
        test = mvtec.records(category, "test")
        assert sum(r.label == 0 for r in test) == 6 and sum(r.label == 1 for r in test) == 8
        assert mvtec.has_masks(category)
        for record in test:
            sample = load_sample(record)
            assert sample.image.shape == (64, 64, 3)
            assert sample.mask.any() == bool(record.label)


def test_seeds_give_disjoint_categories(synthetic_root: Path, unseen_synthetic_root: Path) -> None:
    seen = set(open_dataset(f"mvtec:{synthetic_root}").categories())
    unseen = set(open_dataset(f"mvtec:{unseen_synthetic_root}").categories())
    assert len(unseen) == 2 and not seen & unseen


def test_categories_are_named_by_kind_family_seed_and_index() -> None:
    families = {p.name for p in PATTERNS} | {s.name for s in SHAPES}
    for index, category in enumerate(sample_categories(6, seed=7)):
        kind, family, seed, number = category.name.rsplit("_", 3)
        assert kind == category.look.kind and family == category.look.family in families
        assert (seed, number) == ("s7", str(index))


def test_a_few_categories_already_cover_textures_objects_and_every_defect() -> None:
    categories = sample_categories(8, seed=0)
    assert {c.look.kind for c in categories} == {"texture", "object"}
    assert len({c.look.family for c in categories}) == 8
    assert set().union(*(c.defects for c in categories)) == set(OBJECT_DEFECTS)
    for category in categories:
        allowed = OBJECT_DEFECTS if category.look.kind == "object" else SURFACE_DEFECTS
        assert 3 <= len(category.defects) and set(category.defects) <= set(allowed)


def test_category_does_not_depend_on_how_many_are_drawn() -> None:
    assert sample_categories(2, seed=5) == sample_categories(4, seed=5)[:2]


def test_rendering_is_deterministic() -> None:
    category = sample_categories(1, seed=3)[0]
    first = render(category, 48, np.random.default_rng(11), category.defects[0])
    second = render(category, 48, np.random.default_rng(11), category.defects[0])
    assert all((a == b).all() for a, b in zip(first, second))


def test_normal_images_vary_but_share_their_category_look() -> None:
    categories = sample_categories(6, seed=2)
    means = np.array(
        [[render(c, 48, np.random.default_rng(i))[0].reshape(-1, 3).mean(0) for i in range(3)] for c in categories]
    )  # [category, image, rgb]
    within = np.abs(means - means.mean(1, keepdims=True)).max()
    between = np.abs(means.mean(1)[:, None] - means.mean(1)[None]).max(-1)
    assert within < np.median(between[np.triu_indices(len(categories), 1)])
    a, b = (render(categories[0], 48, np.random.default_rng(i))[0] for i in (0, 1))
    assert (a != b).mean() > 0.5  # not copies of one image


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), index=st.integers(0, 7), image_seed=st.integers(0, 10_000), pick=st.integers(0, 6))
def test_defect_masks_are_exact(seed: int, index: int, image_seed: int, pick: int) -> None:
    category = sample_categories(index + 1, seed)[index]
    kind = category.defects[pick % len(category.defects)]
    normal, empty = render(category, 48, np.random.default_rng(image_seed))
    defective, mask = render(category, 48, np.random.default_rng(image_seed), kind)
    assert not empty.any() and mask.sum() >= 6
    changed = (normal != defective).any(-1)
    assert not (changed & ~mask).any(), "a pixel outside the mask changed"
    assert changed[mask].mean() > 0.3, f"{kind} barely changed its own mask"


def test_defect_kinds_are_the_folder_names(synthetic_root: Path) -> None:
    dataset = open_dataset(f"mvtec:{synthetic_root}")
    for category in dataset.categories():
        defects = {r.defect for r in dataset.records(category, "test") if r.label}
        assert defects <= set(OBJECT_DEFECTS) and len(defects) >= 3


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"categories": 0}, ConfigError),
        ({"size": 16}, ConfigError),
        ({"test_defect": 0}, ConfigError),
        ({"seed": -1}, ConfigError),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type) -> None:
    arguments = {"categories": 1, "seed": 0, "size": 32} | kwargs
    with pytest.raises(error):
        write_synthetic(tmp_path / "out", **arguments)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        write_synthetic(tmp_path, categories=1, seed=0, size=32)


def test_synth_command_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = ["synth", str(out), "--categories", "2", "--seed", "4", "--size", "40", "--train", "2", "--test-good", "1",
            "--test-defect", "3"]
    assert main(argv) == 0
    dataset = open_dataset(f"mvtec:{out}")
    printed = capsys.readouterr().out
    assert all(category in printed for category in dataset.categories()) and f"mvtec:{out}" in printed
    for category in dataset.categories():
        assert category.endswith(("_s4_0", "_s4_1"))
        assert len(dataset.records(category, "train")) == 2
        assert [r.label for r in dataset.records(category, "test")].count(1) == 3
    assert main(argv) == 2  # the folder is no longer empty
    assert capsys.readouterr().err.count("\n") == 1


def test_datasets_command_lists_formats_and_summarises(
    synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in FORMATS)
    assert main(["datasets", f"mvtec:{synthetic_root}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].split()[1:] == ["8", "6", "8", "yes"]
    assert main(["datasets", "nosuch:/x"]) == 2
    assert "unknown dataset format" in capsys.readouterr().err
