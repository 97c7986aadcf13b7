"""The deploy runtime: an exported zsad model (:mod:`zsad.export`) on ONNX Runtime or OpenVINO, without
PyTorch or transformers (``pip install 'zsad[deploy]'``)::

    from zsad import deploy
    model = deploy.load("models/bracket")
    for inspection in model.inspect([image], ["bracket-0001.png"]):   # RGB uint8 [H, W, 3], any size
        inspection.score, inspection.decision, inspection.regions   # .anomaly_map: float32, the image's size

The runtime does no method math: it resizes each image (or each tile) to the model's input size exactly
as ``zsad predict`` does, runs the graph and resizes the map back (bilinear, half-pixel centres, as
PyTorch's ``interpolate(align_corners=False)``). It is a :class:`~zsad.inference.scoring.Model` of the
one inspection loop, so decisions, regions, tiling and ``zsad predict --model``'s outputs are those of the
PyTorch path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zsad import __version__
from zsad.errors import ConfigError, DataError
from zsad.inference.inspection import Inspection, Thresholds
from zsad.inference.overlay import resize_image
from zsad.inference.scoring import Inspector, ModelOutput, Scorer
from zsad.inference.tiling import Tiling

FORMAT = "zsad-model"
FORMAT_VERSION = 2  # 2: thresholds sealed by thresholds_sha256, references' digests recorded
METADATA = "zsad-model.json"


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``(height, width)`` with half-pixel centres, as PyTorch's
    ``F.interpolate(mode="bilinear", align_corners=False)`` (sources clamped at the border)."""
    result = anomaly_map.astype(np.float32)
    for axis, target in enumerate(size):
        length = result.shape[axis]
        if length == target:
            continue
        source = np.maximum((np.arange(target, dtype=np.float64) + 0.5) * (length / target) - 0.5, 0)
        low = np.minimum(np.floor(source).astype(np.intp), length - 1)
        high = np.minimum(low + 1, length - 1)
        weight = (source - low).astype(np.float32)
        shape = [1, 1]
        shape[axis] = target
        weight = weight.reshape(shape)
        result = np.take(result, low, axis=axis) * (1 - weight) + np.take(result, high, axis=axis) * weight
    return result


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(folder: Path) -> dict:
    path = folder / METADATA
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no exported model folder there")
    if not path.is_file():
        raise ConfigError(f"{folder}: not an exported zsad model (no {METADATA}); create one with `zsad export`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a zsad model description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(f"{path}: model format version {version!r} was written by a newer zsad "
                          f"({meta.get('zsad_version', '?')}); this is zsad {__version__}, which reads up to "
                          f"{FORMAT_VERSION}")
    required = ("input_size", "model_files", "sha256", "thresholds", "runtime") + \
        (("thresholds_sha256",) if version >= 2 else ())
    for key in required:
        if key not in meta:
            raise ConfigError(f"{path}: the description lacks {key!r}")
    return meta


class DeployedModel:
    """An exported model loaded for inference; see the module docstring."""

    few_shot = False  # everything about the product is folded in: no references to prepare
    zero_shot = True

    def __init__(self, folder: str | Path, batch_size: int = 8, read_thresholds: bool = True) -> None:
        self.folder = Path(folder)
        self.meta = read_metadata(self.folder)
        for name in self.meta["model_files"]:
            path = self.folder / name
            if not path.is_file():
                raise ConfigError(f"{path}: model file missing")
            if sha256(path) != self.meta["sha256"].get(name):
                raise ConfigError(f"{path}: model file does not match its recorded SHA-256 (corrupted or "
                                  f"truncated); export it again")
        self.size = int(self.meta["input_size"])
        self.batch_size = batch_size
        self.thresholds = self._thresholds() if read_thresholds else Thresholds()
        self.tiling = Tiling(**self.meta["tiling"]) if self.meta.get("tiling") else None
        self.scorer = Scorer(self, self.tiling, batch_size)
        self.name = str(self.meta.get("method", ""))
        self.class_name = str(self.meta.get("class_name", "object"))
        self._run = self._onnx() if self.meta["runtime"] == "onnx" else self._openvino()

    def _thresholds(self) -> Thresholds:
        """The artefact's thresholds, refused when edited since export or ``zsad calibrate`` sealed them
        (models of format 1 carry no seal)."""
        where = f"{self.folder / METADATA}: thresholds"
        if self.meta["format_version"] < 2:
            return Thresholds.from_dict(self.meta["thresholds"], where)
        return Thresholds.from_sealed(self.meta["thresholds"], self.meta["thresholds_sha256"], where,
                                      f"calibrate them on normal images: zsad calibrate --model {self.folder} "
                                      f"--refs NORMAL_DIR")

    def _onnx(self):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("running an exported model needs onnxruntime: pip install 'zsad[deploy]'") from None
        path = self.folder / "model.onnx"
        try:
            session = onnxruntime.InferenceSession(str(path), providers=_providers(onnxruntime))
        except Exception as err:  # ORT raises its own exception types for malformed models
            raise ConfigError(f"{path}: onnxruntime cannot load it ({' '.join(str(err).split())[:200]})") from None
        return lambda batch: session.run(None, {"images": batch})

    def _openvino(self):
        try:
            import openvino
        except ImportError:
            raise ConfigError("this model was exported for OpenVINO: pip install openvino") from None
        path = self.folder / "model.xml"
        try:
            # OpenVINO's CPU plugin may compute in bf16 on CPUs that have it: hold it to the exported precision.
            hint = "f16" if self.meta.get("precision") == "fp16" else "f32"
            compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
        except Exception as err:
            raise ConfigError(f"{path}: OpenVINO cannot load it ({' '.join(str(err).split())[:200]})") from None
        return lambda batch: [compiled(batch)[i] for i in range(2)]

    # --- the Model of the inspection loop -------------------------------------------------------------
    def prepare(self, class_name: str, references: list[np.ndarray] | None,
                progress: Callable[[int], None] | None = None) -> None:
        """Nothing to prepare: the product's state was folded in at export."""

    def run(self, pieces: list[np.ndarray]) -> ModelOutput:
        """The graph on pieces of any size resized to the input size, in batches; maps back at each size."""
        maps, scores = [], []
        for start in range(0, len(pieces), self.batch_size):
            chunk = pieces[start : start + self.batch_size]
            batch = np.stack([resize_image(np.ascontiguousarray(p), (self.size, self.size)) for p in chunk])
            anomaly_map, score = self._run(batch)
            maps += [resize_map(np.asarray(m, dtype=np.float32), p.shape[:2]) for p, m in zip(chunk, anomaly_map)]
            scores.append(np.asarray(score, dtype=np.float32))
        return ModelOutput(maps, np.concatenate(scores))

    # --- inspections ----------------------------------------------------------------------------------
    def inspect(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> list[Inspection]:
        """Inspections of RGB ``uint8`` images ``[H, W, 3]`` under the artefact's thresholds."""
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"images must be RGB uint8 arrays [H, W, 3]; got {image.dtype} {list(image.shape)}")
        return Inspector(self.scorer, self.thresholds).inspect(images, sources)


def _providers(onnxruntime) -> list[str]:
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load(path: str | Path, batch_size: int = 8, read_thresholds: bool = True) -> DeployedModel:
    """An exported model folder, checked (format version, SHA-256 of the model files and of the thresholds)
    and ready to run; ``read_thresholds=False`` skips the thresholds, for ``zsad calibrate``, which replaces
    them."""
    return DeployedModel(path, batch_size, read_thresholds)
