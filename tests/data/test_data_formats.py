"""Every dataset format, on tiny fakes written in its official layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.data import FORMATS, AnomalyDataset, load_sample, open_dataset
from zsad.errors import ConfigError, DataError, ZsadError

SIZE = (12, 10)  # width, height


def image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZE, (value, value // 2, 255 - value)).save(path)
    return path


def mask(path: Path, on: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(SIZE[::-1], dtype=np.uint8)
    pixels[2:5, 3:7] = on
    Image.fromarray(pixels).save(path)
    return path


def one_line(err: pytest.ExceptionInfo[ZsadError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def write_mvtec(root: Path) -> Path:
    for category in ("bottle", "cable"):
        base = root / category
        for i in range(3):
            image(base / "train" / "good" / f"{i:03d}.png")
        image(base / "test" / "good" / "000.png")
        for defect in ("crack", "scratch"):
            for i in range(2):
                image(base / "test" / defect / f"{i:03d}.png", 30)
                mask(base / "ground_truth" / defect / f"{i:03d}_mask.png")
    (root / "license.txt").write_text("not a category")
    image(root / "bottle" / "train" / "good" / "._000.png")  # macOS resource fork: ignored
    return root


def test_formats_describe_every_layout() -> None:
    assert set(FORMATS) == {"mvtec", "visa", "mpdd", "btad", "mvtec3d", "meta", "folder"}
    assert all(description and "\n" not in description for description in FORMATS.values())


@pytest.mark.parametrize("name", ["mvtec", "mpdd"])
def test_mvtec_layout(tmp_path: Path, name: str) -> None:
    dataset = open_dataset(f"{name}:{write_mvtec(tmp_path)}")
    assert isinstance(dataset, AnomalyDataset) and dataset.format == name and dataset.root == tmp_path.resolve()
    assert dataset.categories() == ["bottle", "cable"]

    train = dataset.records("bottle", "train")
    assert [r.image_path.name for r in train] == ["000.png", "001.png", "002.png"]
    assert all(r.label == 0 and r.defect == "good" and r.mask_path is None and r.split == "train" for r in train)

    test = dataset.records("bottle", "test")
    expected = [("crack", 1), ("crack", 1), ("good", 0), ("scratch", 1), ("scratch", 1)]
    assert [(r.defect, r.label) for r in test] == expected
    assert test == sorted(test, key=lambda r: r.image_path)
    for record in test:
        if record.label:
            truth = tmp_path.resolve() / "bottle/ground_truth" / record.defect
            assert record.mask_path == truth / f"{record.image_path.stem}_mask.png"
    assert dataset.has_masks("bottle")
    assert dataset.records("bottle", "test") == test  # deterministic and cached


def test_mvtec_missing_mask_names_the_expected_file(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    (tmp_path / "cable/ground_truth/crack/001_mask.png").unlink()
    dataset = open_dataset(f"mvtec:{tmp_path}")
    with pytest.raises(DataError) as err:
        dataset.records("cable", "test")
    assert "cable/test/crack/001.png" in one_line(err) and "001_mask.png" in one_line(err)


def test_missing_train_folder_is_named(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    for path in (tmp_path / "cable/train/good").iterdir():
        path.unlink()
    (tmp_path / "cable/train/good").rmdir()
    (tmp_path / "cable/train/bad").mkdir()
    with pytest.raises(DataError) as err:
        open_dataset(f"mvtec:{tmp_path}").records("cable", "train")
    assert "cable/train/good" in one_line(err) and "missing folder" in one_line(err)


def test_unknown_category_and_split_list_the_choices(tmp_path: Path) -> None:
    dataset = open_dataset(f"mvtec:{write_mvtec(tmp_path)}")
    with pytest.raises(ConfigError) as err:
        dataset.records("screw", "test")
    assert "'screw'" in one_line(err) and "bottle, cable" in one_line(err)
    with pytest.raises(ConfigError, match="train, test"):
        dataset.records("bottle", "validation")


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    for path in (tmp_path / "bottle/train/good").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="'bottle' has no train images"):
        open_dataset(f"mvtec:{tmp_path}").records("bottle", "train")


def test_btad_pairs_masks_by_stem_across_formats(tmp_path: Path) -> None:
    for category, image_ext, mask_ext in (("01", "bmp", "png"), ("03", "png", "bmp")):
        base = tmp_path / category
        image(base / "train" / "ok" / f"0000.{image_ext}")
        image(base / "test" / "ok" / f"0001.{image_ext}")
        image(base / "test" / "ko" / f"0002.{image_ext}", 20)
        mask(base / "ground_truth" / "ko" / f"0002.{mask_ext}")
    dataset = open_dataset(f"btad:{tmp_path}")
    assert dataset.categories() == ["01", "03"]
    for category, mask_ext in (("01", "png"), ("03", "bmp")):
        test = dataset.records(category, "test")
        assert [(r.defect, r.label) for r in test] == [("ko", 1), ("good", 0)]  # sorted by path: ko < ok
        assert test[0].mask_path is not None and test[0].mask_path.suffix == f".{mask_ext}"
        sample = load_sample(test[0])
        assert sample.mask.sum() == 12 and sample.image.shape == (10, 12, 3)
    assert [r.defect for r in dataset.records("01", "train")] == ["good"]


def test_mvtec3d_reads_rgb_and_gt_only(tmp_path: Path) -> None:
    base = tmp_path / "bagel"
    for i in range(2):
        image(base / "train/good/rgb" / f"{i:03d}.png")
        (base / "train/good/xyz").mkdir(parents=True, exist_ok=True)
        (base / "train/good/xyz" / f"{i:03d}.tiff").write_bytes(b"point cloud")
    image(base / "validation/good/rgb/000.png")
    image(base / "test/good/rgb/000.png")
    mask(base / "test/good/gt/000.png", on=0)
    image(base / "test/crack/rgb/000.png", 10)
    mask(base / "test/crack/gt/000.png")
    dataset = open_dataset(f"mvtec3d:{tmp_path}")
    assert dataset.categories() == ["bagel"]
    assert len(dataset.records("bagel", "train")) == 2
    test = dataset.records("bagel", "test")
    assert [(r.defect, r.label, r.mask_path) for r in test] == [
        ("crack", 1, tmp_path.resolve() / "bagel/test/crack/gt/000.png"),
        ("good", 0, None),
    ]


def write_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for category in ("candle", "pcb1"):
        for i in range(2):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            image(root / rel)
            rows.append(f"{category},train,normal,{rel},")
        rel = f"{category}/Data/Images/Normal/0009.JPG"
        image(root / rel)
        rows.append(f"{category},test,normal,{rel},")
        rel, rel_mask = f"{category}/Data/Images/Anomaly/000.JPG", f"{category}/Data/Masks/Anomaly/000.png"
        image(root / rel, 5)
        mask(root / rel_mask, on=3)  # VisA stores instance ids, not 255
        rows.append(f"{category},test,anomaly,{rel},{rel_mask}")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_split_file(tmp_path: Path) -> None:
    dataset = open_dataset(f"visa:{write_visa(tmp_path)}")
    assert dataset.categories() == ["candle", "pcb1"]
    assert [r.label for r in dataset.records("pcb1", "train")] == [0, 0]
    test = dataset.records("candle", "test")
    assert [(r.label, r.defect) for r in test] == [(1, "anomaly"), (0, "good")]
    assert test[1].mask_path is None
    assert load_sample(test[0]).mask.sum() == 12  # instance ids binarised with != 0
    assert dataset.has_masks("candle")


def test_visa_errors_name_the_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split_csv/1cls.csv"):
        open_dataset(f"visa:{tmp_path}").categories()
    write_visa(tmp_path)
    csv = tmp_path / "split_csv/1cls.csv"
    csv.write_text(csv.read_text().replace("anomaly,", "broken,", 1))
    with pytest.raises(DataError) as err:
        open_dataset(f"visa:{tmp_path}").categories()
    assert "1cls.csv line 5" in one_line(err) and "'broken'" in one_line(err)
    csv.write_text("object,split,image\n")
    with pytest.raises(DataError, match="lacks the column"):
        open_dataset(f"visa:{tmp_path}").categories()


def test_visa_listed_file_that_does_not_exist(tmp_path: Path) -> None:
    write_visa(tmp_path)
    (tmp_path / "pcb1/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DataError, match="0001.JPG, which does not exist"):
        open_dataset(f"visa:{tmp_path}").records("pcb1", "train")


def write_meta(root: Path) -> Path:
    entries = {"train": {"bottle": []}, "test": {"bottle": [], "wood": []}}
    for i in range(2):
        image(root / f"bottle/train/good/{i}.png")
        entries["train"]["bottle"].append(
            {"img_path": f"bottle/train/good/{i}.png", "mask_path": "", "cls_name": "bottle", "specie_name": "good",
             "anomaly": 0}
        )
    image(root / "bottle/test/broken/0.png", 3)
    mask(root / "bottle/ground_truth/broken/0_mask.png")
    entries["test"]["bottle"].append(
        {"img_path": "bottle/test/broken/0.png", "mask_path": "bottle/ground_truth/broken/0_mask.png",
         "cls_name": "bottle", "specie_name": "broken", "anomaly": 1}
    )
    image(root / "wood/test/hole/0.png", 3)
    entries["test"]["wood"].append(
        {"img_path": "wood/test/hole/0.png", "mask_path": "", "cls_name": "wood", "specie_name": "hole", "anomaly": 1}
    )
    (root / "meta.json").write_text(json.dumps(entries))
    return root


@pytest.mark.parametrize("target", ["folder", "file"])
def test_meta_json(tmp_path: Path, target: str) -> None:
    write_meta(tmp_path)
    dataset = open_dataset(f"meta:{tmp_path if target == 'folder' else tmp_path / 'meta.json'}")
    assert dataset.root == tmp_path.resolve() and dataset.categories() == ["bottle", "wood"]
    assert len(dataset.records("bottle", "train")) == 2
    [broken] = dataset.records("bottle", "test")
    assert (broken.label, broken.defect, broken.mask_path.name) == (1, "broken", "0_mask.png")
    assert dataset.has_masks("bottle") and not dataset.has_masks("wood")
    with pytest.raises(DataError, match="'wood' has no train images"):
        dataset.records("wood", "train")


def test_meta_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta.json"):
        open_dataset(f"meta:{tmp_path}").categories()
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json is not valid JSON"):
        open_dataset(f"meta:{tmp_path}").categories()
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"a": [{"img_path": "x.png", "anomaly": 2}]}}))
    with pytest.raises(DataError, match=r"test/a\[0\] has 'anomaly' 2"):
        open_dataset(f"meta:{tmp_path}").records("a", "test")
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"a": [{"anomaly": 0}]}}))
    with pytest.raises(DataError, match="lacks an 'img_path'"):
        open_dataset(f"meta:{tmp_path}").records("a", "test")


def test_folder_layout_allows_missing_masks_and_ok_folders(tmp_path: Path) -> None:
    base = tmp_path / "widget"
    image(base / "train/ok/a.png")
    image(base / "test/ok/b.png")
    image(base / "test/dent/c.png", 9)
    image(base / "test/dent/d.png", 9)
    mask(base / "ground_truth/dent/c.png")
    dataset = open_dataset(f"folder:{tmp_path}")
    assert [r.defect for r in dataset.records("widget", "train")] == ["good"]
    test = dataset.records("widget", "test")
    assert [(r.image_path.name, r.label, r.mask_path.name if r.mask_path else None) for r in test] == [
        ("c.png", 1, "c.png"),
        ("d.png", 1, None),
        ("b.png", 0, None),
    ]
    assert not dataset.has_masks("widget")
    assert not load_sample(test[1]).mask.any()


def test_two_masks_for_one_image_are_an_error(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    mask(tmp_path / "bottle/ground_truth/crack/000_mask.bmp")
    with pytest.raises(DataError, match="two masks for image '000'"):
        open_dataset(f"mvtec:{tmp_path}").records("bottle", "test")


@pytest.mark.parametrize(
    ("spec", "error", "needle"),
    [
        ("mvtec", ConfigError, "FORMAT:PATH"),
        ("mvtec:", ConfigError, "FORMAT:PATH"),
        ("kaggle:/data", ConfigError, "unknown dataset format 'kaggle'"),
        ("mvtec:{tmp}/absent", DataError, "absent does not exist"),
        ("mvtec:{tmp}/file.txt", DataError, "file.txt is not a folder"),
    ],
)
def test_bad_specs(tmp_path: Path, spec: str, error: type[ZsadError], needle: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(error) as err:
        open_dataset(spec.format(tmp=tmp_path))
    assert needle in one_line(err)


def test_folder_without_categories_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(DataError) as err:
        open_dataset(f"mvtec:{tmp_path}").categories()
    assert str(tmp_path) in one_line(err) and "train/good" in one_line(err)
