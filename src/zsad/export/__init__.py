"""Export a method, prepared for one product, to one ONNX (or OpenVINO) model that runs without PyTorch.

Everything category-specific is folded into the graph as constants: text anchors, the reference memory
or dictionary, prompts; the thresholds are calibrated from the references exactly as ``zsad predict``
does and written into the artefact's metadata. The graph takes a batch of RGB ``uint8`` images
``[B, S, S, 3]`` already resized to the method's input size ``S`` (bicubic, as the evaluation loader and
``zsad predict`` resize) and returns the anomaly map ``[B, S, S]`` float32 at that size, smoothing and
upsampling included, and the image score ``[B]``. Scaling to [0, 1] and the backbone's normalisation
happen in the graph. The batch axis is dynamic.

Artefact folder (written to a temporary folder beside ``out`` and renamed into place, so ``out`` never
holds half a model)::

    model.onnx           (or model.xml + model.bin for OpenVINO)
    zsad-model.json      method, backbone, class name, input size, preprocessing, outputs, thresholds and
                         how they were set, tiling, precision, zsad version, SHA-256 of the model file(s)

Operators that do not export as they run in PyTorch have exportable equivalents, each proved equal by
the export tests: sparsemax sorts all scores instead of fetching top-k candidates on demand
(:mod:`zsad.methods.components.sparsemax`); WinCLIP's window counts use ``scatter_add`` instead of ``bincount``;
Dual-Anchor's per-image prompt gather is skipped for a single product; Gumbel assignment is already
noise-free at inference; MoECLIP's top-k routing and AnomalyCLIP's value-value attention export as is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from zsad import __version__
from zsad.core.io import umask
from zsad.deploy import FORMAT, FORMAT_VERSION, METADATA, sha256
from zsad.deploy import load as deploy_load
from zsad.engine.scorer import MethodModel, method_scorer
from zsad.errors import ConfigError
from zsad.inference.calibration import IMAGE_RULE, PIXEL_RULE, calibrate, image_digest
from zsad.inference.inspection import Thresholds
from zsad.inference.scoring import ModelOutput, Scored, Scorer
from zsad.metrics.binary import auroc
from zsad.inference.tiling import Tiling
from zsad.methods.base import Method

OPSET = 18
# Kept in fp32 inside an fp16 graph: ONNX Runtime's CPU provider has no fp16 kernel for a ScatterElements
# that adds (WinCLIP's window counts); and the patch and position embeddings, whose cubic resize of the
# position grid (constant, folded by the runtime in fp32) cannot shrink a grid once cast to fp16.
FP32_ISLANDS = ("ScatterElements",)
FP32_SUBGRAPH = "/embeddings/"
# int8: the backbone's matrix products only (weights int8 per output channel, activations quantised on the fly
# by ONNX Runtime); the method's own heads, anchors and reference memories stay fp32, where a rounded distance
# to the nearest normal patch would be the anomaly score's error itself.
INT8_OPS = ("MatMul", "Gemm")
INT8_SCOPE = "/backbone/"
# How far an artefact may deviate from the PyTorch path on its check images (maps: fraction of their range;
# scores: of their spread or size). fp16 measured up to 3.2 % (WinCLIP's maps at 64 px); int8 2.5 % on
# random-weight ViT-B/16 and ViT-L/14@336 (knn).
TOLERANCE = {"fp32": 1e-3, "fp16": 0.1, "int8": 0.1}
# With masked check images: the most pixel AUROC an artefact may lose against the PyTorch path.
AUROC_LOSS = 0.01
Format = Literal["onnx", "openvino"]
Precision = Literal["fp32", "fp16", "int8"]


class DeployGraph(nn.Module):
    """A prepared method as one function of uint8 images ``[B, S, S, 3]``: ``(anomaly map, score)``."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        prediction = self.method.predict(images.permute(0, 3, 1, 2).float() / 255)
        return prediction.anomaly_map.float(), prediction.score.float()


def _check(method: Method, references: list[np.ndarray] | None, fmt: str, precision: str) -> None:
    if fmt not in ("onnx", "openvino"):
        raise ConfigError(f"--format must be onnx or openvino, got {fmt!r}")
    if precision not in TOLERANCE:
        raise ConfigError(f"--precision must be one of {', '.join(TOLERANCE)} for export, got {precision!r}")
    if precision == "int8" and fmt != "onnx":
        raise ConfigError("--precision int8 is written for --format onnx (ONNX Runtime's quantised kernels); "
                          "export fp16 for OpenVINO")
    if method.few_shot and not method.zero_shot and not references:
        raise ConfigError(f"method {method.name!r} is few-shot: pass --refs DIR with normal images of the product "
                          f"to fold into the exported model")
    if fmt == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ConfigError("--format openvino needs the openvino package: pip install 'zsad[openvino]'"
                              ) from None


def export_graph(method: Method, path: Path, batch: int = 2) -> None:
    """Trace the prepared ``method`` to ONNX at ``path`` with a dynamic batch axis."""
    size = method.config.image_size
    example = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=method.device,
                            generator=torch.Generator(method.device).manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on Python-side shapes: the batch axis is checked by tests
        torch.onnx.export(DeployGraph(method).eval(), (example,), str(path), input_names=["images"],
                          output_names=["anomaly_map", "score"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}})


@dataclass
class CheckSet:
    """What an artefact is checked on: images, what they are (for messages), and defect masks if known."""

    what: str
    images: list[np.ndarray]
    masks: list[np.ndarray] | None = None


def _check_set(method: Method, references: list[np.ndarray] | None, given: list[np.ndarray] | None,
               masks: list[np.ndarray] | None) -> CheckSet:
    if given:
        return CheckSet("check images", given, masks)
    if references:
        return CheckSet("references turned a quarter", [np.ascontiguousarray(np.rot90(r)) for r in references[:8]])
    size = method.config.image_size
    rng = np.random.default_rng(0)
    return CheckSet("random images", [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)])


def self_check(folder: Path, pytorch: Scorer, check: CheckSet, precision: str) -> dict[str, Any]:
    """Run the artefact in ``folder`` on the check images on its own runtime and compare its maps (as a fraction
    of the PyTorch maps' range) and scores (as a fraction of their spread or size) with the PyTorch path; with
    masks, also the pixel AUROC each reaches, which the artefact may not lose by more than :data:`AUROC_LOSS`."""
    images = check.images
    try:
        exported = deploy_load(folder).scorer.score(images)
    except ConfigError:
        raise
    except Exception as err:  # the runtime's own exception types: an artefact that cannot run
        raise ConfigError(f"the exported model does not run on its runtime ({' '.join(str(err).split())[:200]}); "
                          f"it was not written") from None
    expected = pytorch.score(images)
    span = max(float(e.anomaly_map.max() - e.anomaly_map.min()) for e in expected) or 1.0
    map_error = max(float(np.abs(x.anomaly_map - e.anomaly_map).max()) for x, e in zip(exported, expected)) / span
    scores = np.array([e.score for e in expected])
    scale = max(float(np.ptp(scores)), float(np.abs(scores).mean()), 1e-12)
    score_error = max(abs(x.score - e.score) for x, e in zip(exported, expected)) / scale
    tolerance = TOLERANCE[precision]
    if map_error > tolerance or score_error > tolerance:
        raise ConfigError(f"the exported {precision} model deviates from the PyTorch path on {len(images)} "
                          f"{check.what}: maps by {100 * map_error:.3g}% of their range, scores by "
                          f"{100 * score_error:.3g}% (tolerance {100 * tolerance:g}%); it was not written")
    result = {"images": len(images), "on": check.what, "map_error": map_error, "score_error": score_error,
              "tolerance": tolerance}
    if check.masks is not None:
        result["pixel_auroc"] = _auroc_loss(exported, expected, check.masks, precision)
    return result


def _auroc_loss(exported: list[Scored], expected: list[Scored], masks: list[np.ndarray],
                precision: str) -> dict[str, float]:
    truth = np.concatenate([m.ravel() for m in masks])
    if truth.all() or not truth.any():
        raise ConfigError("--check-masks: the masks must mark some pixels defective and leave some normal")
    reached = {name: auroc(np.concatenate([s.anomaly_map.ravel() for s in scored]), truth)
               for name, scored in (("pytorch", expected), ("exported", exported))}
    loss = reached["pytorch"] - reached["exported"]
    if loss > AUROC_LOSS:
        raise ConfigError(f"the exported {precision} model loses {100 * loss:.2f} points of pixel AUROC on the "
                          f"check images ({100 * reached['exported']:.2f} vs {100 * reached['pytorch']:.2f} in "
                          f"PyTorch; at most {100 * AUROC_LOSS:g} allowed); it was not written")
    return {**reached, "loss": loss}


def export_model(method: Method, out: str | Path, class_name: str, references: list[np.ndarray] | None = None,
                 fmt: Format = "onnx", precision: Precision = "fp32", tiling: Tiling | None = None,
                 fixed: Thresholds | None = None, overwrite: bool = False,
                 source: dict[str, Any] | None = None, check_images: list[np.ndarray] | None = None,
                 check_masks: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Prepare ``method`` for ``class_name`` (and its ``references``), calibrate, export, check; return the
    metadata. Without references, ``fixed`` thresholds (a checkpoint's held-out calibration) go with the
    model. The written artefact is run on ``check_images`` (default: the references rotated by a quarter
    turn — real content the memory does not hold) on its own runtime and precision and compared with the
    PyTorch path; one that cannot run or deviates past :data:`TOLERANCE` (or, given ``check_masks`` for the
    check images, loses more than :data:`AUROC_LOSS` of pixel AUROC) is not written."""
    out = Path(out)
    _check(method, references, fmt, precision)
    if out.exists() and not (out.is_dir() and overwrite):
        raise ConfigError(f"{out} exists already: choose another --out or pass --overwrite to replace it")
    method.eval()
    rule = references is not None and len(references) >= (2 if method.few_shot else 1)
    image_rule, pixel_rule = (IMAGE_RULE, PIXEL_RULE) if rule else (None, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        artefact = ArtefactModel(method, staging, fmt, precision)
        if precision == "fp32" or not rule:  # the PyTorch path decides as the fp32 artefact does (to ~1e-5)
            thresholds = calibrate(method_scorer(method, tiling), class_name, references, image_rule, pixel_rule, fixed)
            Scorer(artefact, tiling).prepare(class_name, references if method.few_shot else None)
        else:  # leave-one-out on the artefact's own outputs: one artefact per left-out reference
            thresholds = calibrate(Scorer(artefact, tiling), class_name, references, image_rule, pixel_rule, fixed)
            thresholds.calibration["on"] = f"the exported {fmt} {precision} model"
        final = artefact.folder  # the last one written: the method prepared for the product as it will run
        metadata = artefact_metadata(method, final, artefact.files, class_name, fmt, precision, tiling, thresholds,
                                     references or [], source)
        (final / METADATA).write_text(json.dumps(metadata, indent=2))
        check = _check_set(method, references, check_images, check_masks)
        metadata["check"] = self_check(final, method_scorer(method, tiling), check, precision)
        (final / METADATA).write_text(json.dumps(metadata, indent=2))
        final.chmod(0o777 & ~umask())  # mkdtemp makes it private; the artefact gets normal permissions
        if out.exists():
            retired = out.with_name(f".{out.name}-replaced")
            out.rename(retired)
            final.rename(out)
            shutil.rmtree(retired)
        else:
            final.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def write_artefact(method: Method, folder: Path, fmt: Format, precision: Precision) -> list[str]:
    """The prepared ``method`` as a model file (or two) in ``folder``, at ``precision``; the file names."""
    import onnx

    onnx_path = folder / "model.onnx"
    export_graph(method, onnx_path)
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        embeddings = [node.name for node in model.graph.node if FP32_SUBGRAPH in node.name]
        onnx.save(convert_float_to_float16(model, keep_io_types=True, node_block_list=embeddings,
                                           op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_ISLANDS]), str(onnx_path))
    if precision == "int8":
        _quantise(model, onnx_path)
    if fmt == "onnx":
        return ["model.onnx"]
    import openvino

    openvino.save_model(openvino.convert_model(str(onnx_path)), str(folder / "model.xml"),
                        compress_to_fp16=precision == "fp16")
    onnx_path.unlink()
    return ["model.xml", "model.bin"]


def _quantise(model: Any, path: Path) -> None:
    """Rewrite the fp32 graph at ``path`` with the backbone's matrix products in int8 (see :data:`INT8_SCOPE`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    chosen = [node.name for node in model.graph.node if node.op_type in INT8_OPS and INT8_SCOPE in node.name]
    quantised = path.with_name("int8.onnx")
    quantize_dynamic(path, quantised, weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=chosen)
    quantised.replace(path)


def artefact_metadata(method: Method, folder: Path, files: list[str], class_name: str, fmt: Format,
                      precision: Precision, tiling: Tiling | None, thresholds: Thresholds,
                      references: list[np.ndarray], source: dict[str, Any] | None) -> dict[str, Any]:
    """``zsad-model.json``: what the runtime needs, how the thresholds were set (sealed), where it came from."""
    size = method.config.image_size
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "zsad_version": __version__,
        "method": method.name, "backbone": method.config.backbone, "class_name": class_name,
        "source": source or {}, "runtime": fmt, "precision": precision, "model_files": files,
        "sha256": {name: sha256(folder / name) for name in files},
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3], "layout": "NHWC RGB"},
        "input_size": size,
        "preprocessing": {"resize": f"each image to {size}x{size}, bicubic (PIL), before the graph",
                          "in_graph": "x / 255, then the backbone's mean/std normalisation"},
        "outputs": {"anomaly_map": {"dtype": "float32", "shape": ["batch", size, size]},
                    "score": {"dtype": "float32", "shape": ["batch"]}},
        "postprocessing": "anomaly_map resized bilinearly (half-pixel centres) to each image's own size",
        "tiling": None if tiling is None else asdict(tiling),
        "thresholds": thresholds.to_dict(), "thresholds_sha256": thresholds.digest(),
        "references": len(references), "reference_digests": [image_digest(image) for image in references],
        "opset": OPSET,
    }


class ArtefactModel:
    """The method as an exported artefact runs it: a :class:`~zsad.inference.scoring.Model` whose
    ``prepare`` writes an artefact for those references and loads it on its runtime, so that calibration
    (leave-one-out included) runs on the exported model's own outputs at its own precision."""

    def __init__(self, method: Method, workdir: Path, fmt: Format, precision: Precision) -> None:
        self.method, self.workdir, self.fmt, self.precision = method, workdir, fmt, precision
        self.few_shot, self.zero_shot = method.few_shot, method.zero_shot
        self.folder: Path | None = None
        self.files: list[str] = []

    def prepare(self, class_name: str, references: list[np.ndarray] | None,
                progress: Callable[[int], None] | None = None) -> None:
        MethodModel(self.method).prepare(class_name, references, progress)
        if self.folder is not None:  # the runtime holds the previous artefact in memory: its files can go
            shutil.rmtree(self.folder)
        self.folder = Path(tempfile.mkdtemp(prefix="artefact-", dir=self.workdir))
        self.files = write_artefact(self.method, self.folder, self.fmt, self.precision)
        metadata = artefact_metadata(self.method, self.folder, self.files, class_name, self.fmt, self.precision,
                                     None, Thresholds(), references or [], None)
        (self.folder / METADATA).write_text(json.dumps(metadata))
        self.deployed = deploy_load(self.folder, read_thresholds=False)

    def run(self, pieces: list[np.ndarray]) -> ModelOutput:
        return self.deployed.run(pieces)
