"""The main job, end to end on built-in synthetic data: train, evaluate, compare, predict, report.

It follows the class-generalizable few-shot protocol on categories the trained model has never seen:
a synthetic *auxiliary* set (one seed) trains every trainable method of the plan briefly; unseen target
categories (another seed, so disjoint categories) evaluate each method at k shots over several reference
draws; the first method then predicts a folder of target images with thresholds calibrated on normal
references only; and one HTML report compares the methods. Every number comes from the same library
code a real run uses — only the sizes are small and the backbone is a tiny random one, so the numbers
show that the pipeline works, not what pretrained models achieve.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from zsad.core import io
from zsad.core.progress import progress_bar
from zsad.config import to_dict
from zsad.data import open_dataset
from zsad.data.synthetic import write_synthetic
from zsad.engine.build import build_method
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE
from zsad.engine.evaluate import EvalConfig, evaluate, write_results
from zsad.engine.scorer import predict_images
from zsad.inference.folder import PredictConfig, PredictSummary, list_files
from zsad.engine.train import Trainer, train_config_for, training_records
from zsad.errors import ConfigError
from zsad.core.runtime import seed_everything
from zsad.methods import method_class
from zsad.report import ReportCollector, Results, write_report

MARKER = "demo.json"
SUBFOLDERS = ("data", "checkpoints", "results", "predict", "report")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo; the defaults take about 2–3 minutes on two CPU cores."""

    methods: tuple[str, ...] = ("dictas", "knn", "winclip")
    backbone: str = "clip-tiny"
    image_size: int = 224  # model input
    data_size: int = 128  # generated images
    auxiliary_categories: int = 3
    auxiliary_images: int = 16  # normal training images per auxiliary category
    target_categories: int = 3
    target_train: int = 6  # normal images per target category to draw references from
    target_good: int = 4
    target_defect: int = 6
    shots: tuple[int, ...] = (1, 4)
    seeds: int = 2
    epochs: int = 1
    steps_per_epoch: int = 6
    batch_size: int = 8

    @classmethod
    def quick(cls, methods: tuple[str, ...] = ("dictas", "knn", "winclip")) -> DemoPlan:
        """A smaller plan for tests: the same stages, a fraction of the work."""
        return cls(methods=methods, image_size=64, data_size=64, auxiliary_categories=2, auxiliary_images=4,
                   target_categories=2, target_train=3, target_good=2, target_defect=2, shots=(2,), seeds=1,
                   steps_per_epoch=1, batch_size=4)


@dataclass
class DemoResult:
    report: Path
    results: dict[str, Path]
    prediction: PredictSummary
    seconds: float
    stages: dict[str, float]  # wall seconds per stage


def prepare_folder(out: Path) -> None:
    """Make ``out`` ready: empty, or left by an earlier demo (its subfolders are then replaced)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"{out} is not empty and was not written by `zsad demo`; choose another --out")
        for name in SUBFOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / MARKER).unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_demo(out: Path, plan: DemoPlan | None = None, console: Console | None = None) -> DemoResult:
    """Run every stage of the demo into ``out`` (see the module docstring)."""
    plan = plan or DemoPlan()
    console = console or Console(quiet=True)
    classes = {name: method_class(name) for name in plan.methods}
    out = Path(out)
    prepare_folder(out)
    stages: dict[str, float] = {}
    with _timed(stages, "data"):
        auxiliary, target = _write_data(out / "data", plan, console)
    checkpoints, results = {}, {}
    for name in [n for n, cls in classes.items() if cls.trainable]:
        with _timed(stages, f"train {name}"):
            checkpoints[name] = _train(name, auxiliary, out / "checkpoints" / name, plan, console)
    for name in plan.methods:
        with _timed(stages, f"evaluate {name}"):
            results[name] = _evaluate(name, checkpoints.get(name), target, out / "results" / name, plan, console)
    first = plan.methods[0]
    with _timed(stages, f"predict {first}"):
        prediction = _predict(first, checkpoints.get(first), target, out / "predict", plan, console)
    with _timed(stages, "report"):
        report = write_report([Results.load(folder) for folder in results.values()], out / "report")
    seconds = sum(stages.values())
    io.write_text(out / MARKER, json.dumps({"plan": asdict(plan), "seconds": round(seconds, 1),
                                            "stages": {k: round(v, 1) for k, v in stages.items()}}, indent=2))
    return DemoResult(report, results, prediction, seconds, stages)


@contextlib.contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - start


def _write_data(folder: Path, plan: DemoPlan, console: Console) -> tuple[Path, Path]:
    auxiliary, target = folder / "auxiliary", folder / "target"
    names = write_synthetic(auxiliary, plan.auxiliary_categories, seed=1, size=plan.data_size,
                            train_per_category=plan.auxiliary_images, test_good=1, test_defect=1)
    console.print(f"auxiliary data: {len(names)} synthetic categories in {auxiliary}")
    names = write_synthetic(target, plan.target_categories, seed=2, size=plan.data_size,
                            train_per_category=plan.target_train, test_good=plan.target_good,
                            test_defect=plan.target_defect)
    console.print(f"unseen target data: {', '.join(names)} in {target}")
    return auxiliary, target


def _train(name: str, auxiliary: Path, checkpoint: Path, plan: DemoPlan, console: Console) -> Path:
    config = replace(train_config_for(method_class(name)), epochs=plan.epochs, batch_size=plan.batch_size,
                     max_steps_per_epoch=plan.steps_per_epoch, feature_cache="off")
    seed_everything(config.seed)  # before building: the fresh parameters are part of the run, as in `zsad train`
    method = build_method(name, backbone=plan.backbone, image_size=plan.image_size)
    records = training_records([open_dataset(f"mvtec:{auxiliary}")], config)
    trainer = Trainer(method, records, config, checkpoint, meta={"data": [f"mvtec:{auxiliary}"]})
    with progress_bar(console, f"training {name}") as advance:
        advance.total(config.epochs * trainer.steps_per_epoch)
        trainer.on_step = lambda step, losses: (advance(1), advance.info(f"loss {losses['loss']:.4f}"))
        rows = trainer.fit()
    console.print(f"{name}: trained {config.epochs} epoch(s) on {len(records)} auxiliary images, "
                  f"final loss {rows[-1]['loss']:.4f}; checkpoint in {checkpoint}")
    return checkpoint


def _evaluate(name: str, checkpoint: Path | None, target: Path, out: Path, plan: DemoPlan,
              console: Console) -> Path:
    method = build_method(name, checkpoint=checkpoint, backbone=plan.backbone, image_size=plan.image_size)
    dataset = open_dataset(f"mvtec:{target}")
    config = EvalConfig(shots=plan.shots, seeds=plan.seeds, batch_size=plan.batch_size)
    collector = ReportCollector()
    meta = {"method": name, "dataset": f"mvtec:{target}", "checkpoint": str(checkpoint or ""),
            "eval": to_dict(config), "method_config": to_dict(method.config)}
    with progress_bar(console, f"evaluating {name}") as advance:
        document = evaluate(method, dataset, config, meta, progress=advance, on_predictions=collector,
                            on_total=advance.total)
    write_results(out, document)
    collector.write(out, document)
    summary = document["summary"][str(max(plan.shots))]["mean"]
    console.print(f"{name}: {max(plan.shots)}-shot image AUROC {100 * summary['image_auroc']:.1f}, "
                  f"pixel AUROC {100 * summary['pixel_auroc']:.1f}; results in {out}")
    return out


def _predict(name: str, checkpoint: Path | None, target: Path, out: Path, plan: DemoPlan,
             console: Console) -> PredictSummary:
    """Predict the first target category's test folder, calibrated on its normal train images."""
    method = build_method(name, checkpoint=checkpoint, backbone=plan.backbone, image_size=plan.image_size)
    category = sorted(p for p in target.iterdir() if p.is_dir())[0]
    config = PredictConfig(class_name=category.name, threshold=IMAGE_RULE, pixel_threshold=PIXEL_RULE,
                           batch_size=plan.batch_size)
    with progress_bar(console, f"predicting with {name}") as advance:
        advance.total(len(list_files(category / "test")[1]))
        summary = predict_images(method, category / "test", out, category / "train" / "good", config, advance)
    console.print(f"{name} on {category / 'test'}: {summary.anomalous} of {summary.predicted} images above the "
                  f"automatic threshold {summary.thresholds.image:.4g}; overlays in {out / 'overlays'}")
    return summary
