"""The main job, end to end on built-in synthetic data: train, evaluate, compare, predict, report.

It follows the class-generalizable few-shot protocol on categories the trained model has never seen. The
data is the planted-signal task (:mod:`zsad.data.synthetic.planted`): every category is its own woven
texture, and a defect is a blob of one colour family shared by all categories, so what a method learns
on the *auxiliary* categories (one seed) is, by construction, what finds the defects of the unseen
*target* categories (another seed) — even on a tiny random backbone, where real defects carry too little
signal to tell learning from noise.

Stages: DictAS is trained through the training assembly (the path ``zsad train`` takes) for at least
``FEW_STEPS`` optimiser steps; it is evaluated untrained and trained, beside the training-free ``knn``
and ``winclip``, at k shots over several reference draws; the trained DictAS then predicts the first
target category's test folder with thresholds calibrated on its normal train images alone; one HTML
report compares everything. Every number comes from the library code a real run uses; only the sizes
are small and the backbone is random, so the numbers show what the methods do, not pretrained accuracy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from zsad.config import to_dict
from zsad.core import io
from zsad.core.progress import progress_bar
from zsad.core.runtime import seed_everything
from zsad.data import open_dataset
from zsad.data.synthetic.planted import write_planted
from zsad.engine.assembly import TrainingPlan, train_method
from zsad.engine.build import build_method
from zsad.engine.evaluate import EvalConfig, evaluate, write_results
from zsad.engine.scorer import predict_images
from zsad.errors import ConfigError
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE
from zsad.inference.folder import PredictConfig, PredictSummary, list_files
from zsad.methods.base import Method
from zsad.report import ReportCollector, Results, write_report

MARKER = "demo.json"
SUBFOLDERS = ("data", "checkpoints", "results", "predict", "report")
TRAINED = "dictas"  # the method the demo trains, evaluates untrained and trained, and predicts with
UNTRAINED = f"{TRAINED} (untrained)"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo; the defaults take about 2-3 minutes on two idle CPU cores."""

    baselines: tuple[str, ...] = ("knn", "winclip")  # training-free, evaluated beside DictAS
    backbone: str = "clip-tiny"
    image_size: int = 128  # model input
    data_size: int = 128  # generated images
    auxiliary_categories: int = 3
    auxiliary_images: int = 24  # normal training images per auxiliary category
    target_categories: int = 3
    target_train: int = 6  # normal images per target category to draw references from
    target_good: int = 5
    target_defect: int = 5
    shots: tuple[int, ...] = (1, 4)
    seeds: int = 2
    steps: int = 90  # DictAS optimiser steps (at least FEW_STEPS = 50: fewer rarely move a method)
    batch_size: int = 8

    @classmethod
    def quick(cls) -> DemoPlan:
        """A smaller plan for tests: the same stages, a fraction of the work."""
        return cls(image_size=64, data_size=64, auxiliary_categories=2, auxiliary_images=4, target_categories=2,
                   target_train=3, target_good=2, target_defect=2, shots=(2,), seeds=1, steps=2, batch_size=4)

    @property
    def compared(self) -> tuple[str, ...]:
        """What the demo evaluates, in the report's order."""
        return (TRAINED, UNTRAINED, *self.baselines)


@dataclass
class DemoResult:
    report: Path
    results: dict[str, Path]
    summary: dict[str, dict[str, float]]  # per compared method, at the largest k: mean metrics
    prediction: PredictSummary
    defective: int  # defective images in the predicted folder
    flagged_defective: int  # of those, flagged anomalous
    flagged_normal: int  # normal images flagged anomalous
    seconds: float
    stages: dict[str, float]  # wall seconds per stage

    def verdict(self) -> list[str]:
        """The demo's findings in plain words, each with the numbers it rests on."""
        k = self.summary[TRAINED]["shots"]
        trained, untrained, knn = (self.summary[m]["pixel_auroc"] for m in (TRAINED, UNTRAINED, "knn"))
        normal = self.prediction.predicted - self.defective
        lines = [
            f"training {'helped' if trained > untrained else 'did not help'}: trained DictAS {k}-shot pixel AUROC "
            f"{100 * trained:.1f} vs {100 * untrained:.1f} untrained",
            f"trained DictAS is {'on par with' if trained >= knn - 0.02 else 'below'} the training-free nearest "
            f"neighbour baseline (knn {100 * knn:.1f}, within 2 points counts as on par)",
            f"prediction with thresholds from {self.prediction.thresholds.calibration.get('images', 0)} normal "
            f"references only: {self.flagged_defective} of {self.defective} defective images flagged, "
            f"{self.flagged_normal} of {normal} normal ones",
        ]
        return lines


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
    out = Path(out)
    prepare_folder(out)
    stages: dict[str, float] = {}
    with _timed(stages, "data"):
        auxiliary, target = _write_data(out / "data", plan, console)
    with _timed(stages, f"train {TRAINED}"):
        checkpoint = _train(auxiliary, out / "checkpoints" / TRAINED, plan, console)
    results, summary = {}, {}
    for name in plan.compared:
        with _timed(stages, f"evaluate {name}"):
            method = _build(name, checkpoint, plan)
            results[name], summary[name] = _evaluate(name, method, checkpoint, target, out / "results" / _slug(name),
                                                     plan, console)
    with _timed(stages, f"predict {TRAINED}"):
        prediction, category = _predict(_build(TRAINED, checkpoint, plan), target, out / "predict", plan, console)
    with _timed(stages, "report"):
        report = write_report([Results.load(folder) for folder in results.values()], out / "report")
    rows = list(_rows(prediction.out / "scores.csv"))
    defective = [r for r in rows if "/good/" not in r["path"]]
    result = DemoResult(report, results, summary, prediction, len(defective),
                        sum(r["decision"] == "anomalous" for r in defective),
                        sum(r["decision"] == "anomalous" for r in rows if "/good/" in r["path"]),
                        sum(stages.values()), stages)
    io.write_text(out / MARKER, json.dumps({"plan": asdict(plan), "seconds": round(result.seconds, 1),
                                            "stages": {k: round(v, 1) for k, v in stages.items()},
                                            "summary": summary, "predicted_category": category,
                                            "verdict": result.verdict()}, indent=2))
    return result


@contextlib.contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - start


def _slug(name: str) -> str:
    return name.replace(" (", "-").replace(")", "")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    import csv

    with path.open() as handle:
        yield from csv.DictReader(handle)


def _write_data(folder: Path, plan: DemoPlan, console: Console) -> tuple[Path, Path]:
    auxiliary, target = folder / "auxiliary", folder / "target"
    names = write_planted(auxiliary, plan.auxiliary_categories, seed=1, size=plan.data_size,
                          train=plan.auxiliary_images, test_good=1, test_defect=1)
    console.print(f"auxiliary data: {len(names)} synthetic categories in {auxiliary}")
    names = write_planted(target, plan.target_categories, seed=2, size=plan.data_size, train=plan.target_train,
                          test_good=plan.target_good, test_defect=plan.target_defect)
    console.print(f"unseen target data: {', '.join(names)} in {target}")
    return auxiliary, target


def _train(auxiliary: Path, checkpoint: Path, plan: DemoPlan, console: Console) -> Path:
    """DictAS through the training assembly, as `zsad train` trains it."""
    training = TrainingPlan(TRAINED, [f"mvtec:{auxiliary}"], checkpoint, backbone=plan.backbone,
                            image_size=plan.image_size,
                            train={"steps": plan.steps, "batch_size": plan.batch_size, "feature_cache": "off"})
    result = train_method(training, console=console)
    first, last = next(iter(result.rows.values()))[0], next(iter(result.rows.values()))[-1]
    console.print(f"{TRAINED}: {result.steps} optimiser steps on {result.records} auxiliary images, query loss "
                  f"{first['query']:.4f} -> {last['query']:.4f}; checkpoint in {result.checkpoint}")
    return result.checkpoint


def _build(name: str, checkpoint: Path, plan: DemoPlan) -> Method:
    """The trained checkpoint, the same method freshly initialised (seeded as training seeds it), or a baseline."""
    if name == TRAINED:
        return build_method(checkpoint=checkpoint, backbone=plan.backbone, image_size=plan.image_size)
    seed_everything(0)
    return build_method(TRAINED if name == UNTRAINED else name, backbone=plan.backbone, image_size=plan.image_size)


def _evaluate(name: str, method: Method, checkpoint: Path, target: Path, out: Path, plan: DemoPlan,
              console: Console) -> tuple[Path, dict[str, Any]]:
    dataset = open_dataset(f"mvtec:{target}")
    config = EvalConfig(shots=plan.shots, seeds=plan.seeds, batch_size=plan.batch_size)
    collector = ReportCollector()
    meta = {"method": name, "dataset": f"mvtec:{target}", "checkpoint": str(checkpoint if name == TRAINED else ""),
            "eval": to_dict(config), "method_config": to_dict(method.config)}
    with progress_bar(console, f"evaluating {name}") as advance:
        document = evaluate(method, dataset, config, meta, progress=advance, on_predictions=collector,
                            on_total=advance.total)
    write_results(out, document)
    collector.write(out, document)
    k = max(plan.shots)
    summary = {**document["summary"][str(k)]["mean"], "shots": k}
    console.print(f"{name}: {k}-shot image AUROC {100 * summary['image_auroc']:.1f}, pixel AUROC "
                  f"{100 * summary['pixel_auroc']:.1f}; results in {out}")
    return out, summary


def _predict(method: Method, target: Path, out: Path, plan: DemoPlan, console: Console,
             ) -> tuple[PredictSummary, str]:
    """Predict the first target category's test folder, calibrated on its normal train images."""
    category = sorted(p for p in target.iterdir() if p.is_dir())[0]
    config = PredictConfig(class_name=category.name, threshold=IMAGE_RULE, pixel_threshold=PIXEL_RULE,
                           batch_size=plan.batch_size)
    with progress_bar(console, f"predicting with {method.name}") as advance:
        advance.total(len(list_files(category / "test")[1]))
        summary = predict_images(method, category / "test", out, category / "train" / "good", config, advance)
    console.print(f"{method.name} on {category / 'test'}: {summary.anomalous} of {summary.predicted} images above "
                  f"the automatic threshold {summary.thresholds.image:.4g}; overlays in {out / 'overlays'}")
    return summary, category.name
