"""The one inference path: an ONNX model plus its embedded config, served with onnxruntime (no torch)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .constants import (
    DEFAULT_TOP_K,
    ENV_BIRD_THRESHOLD,
    ENV_HOME,
    ENV_MODEL,
    ENV_THREADS,
    INPUT_NAME,
    MAX_TOP_K,
    METADATA_KEY,
    OUTPUT_BIRD,
    OUTPUT_LOGITS,
    STARTER_FILENAME,
)
from .errors import BirdclfError, ModelFormatError, ModelNotFoundError
from .imaging import ImageLimits, ImageSource, preprocess

__all__ = ["Prediction", "Predictor", "available_cpus", "default_home", "resolve_model_path", "softmax",
           "read_model_config"]


def available_cpus() -> int:
    """CPUs this process may really use: affinity and the cgroup quota (onnxruntime ignores the quota)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_home() -> Path:
    """Where birdclf keeps built models: $BIRDCLF_HOME or ~/.cache/birdclf."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "birdclf")


def resolve_model_path(model: str | os.PathLike | None = None) -> Path:
    """The model to serve: the argument, else $BIRDCLF_MODEL, else the starter model in the cache."""
    chosen = model or os.environ.get(ENV_MODEL) or default_home() / STARTER_FILENAME
    path = Path(chosen).expanduser()
    if not path.is_file():
        hint = "" if (model or os.environ.get(ENV_MODEL)) else " (build it with `birdclf starter`)"
        raise ModelNotFoundError(f"no model file at {path}{hint}; set {ENV_MODEL} or pass --model")
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """Top-k species for one image, and whether it looks like a bird at all."""

    top_k: list[dict[str, Any]]
    bird_probability: float | None
    is_bird: bool | None

    @property
    def label(self) -> str:
        """The most likely species."""
        return self.top_k[0]["label"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"top_k": self.top_k, "bird_probability": self.bird_probability, "is_bird": self.is_bird}


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """Read the config embedded in an ONNX file's metadata without starting a session."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ModelFormatError(f"{path} has no '{METADATA_KEY}' metadata: not a birdclf model")
    return ModelConfig.from_json(props[METADATA_KEY])


class Predictor:
    """Load an ONNX model once; predict top-k species for one image or a batch."""

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = None,
                 limits: ImageLimits | None = None, batch_size: int = 32) -> None:
        import onnxruntime as ort

        self.path = resolve_model_path(model)
        self.threads = int(threads or os.environ.get(ENV_THREADS) or available_cpus())
        self.limits = limits or ImageLimits()
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own, unrelated exception types
            raise ModelFormatError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelFormatError(f"{self.path} has no '{METADATA_KEY}' metadata: not a birdclf model")
        self.config = ModelConfig.from_json(meta[METADATA_KEY])
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_LOGITS not in outputs:
            raise ModelFormatError(f"{self.path}: expected input '{INPUT_NAME}' and output '{OUTPUT_LOGITS}', "
                                   f"got inputs {inputs}, outputs {outputs}")
        self._outputs = [OUTPUT_LOGITS] + ([OUTPUT_BIRD] if OUTPUT_BIRD in outputs else [])
        env_threshold = os.environ.get(ENV_BIRD_THRESHOLD)
        self.bird_threshold = float(env_threshold) if env_threshold else self.config.bird_threshold

    @property
    def labels(self) -> tuple[str, ...]:
        """The species this model knows."""
        return self.config.labels

    @property
    def has_bird_signal(self) -> bool:
        """Whether the model outputs a 'bird at all' probability."""
        return OUTPUT_BIRD in self._outputs

    def info(self) -> dict[str, Any]:
        """Model name, version and size facts for health and labels endpoints."""
        return {"model_name": self.config.model_name, "version": self.config.version, "arch": self.config.arch,
                "num_classes": self.config.num_classes, "input_size": self.config.input_size,
                "bird_signal": self.has_bird_signal, "file": self.path.name}

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """One image to the model's CHW float32 input."""
        return preprocess(image, self.config, self.limits)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw model call on an NCHW batch: (probabilities, bird probabilities or None)."""
        results = self.session.run(self._outputs, {INPUT_NAME: batch.astype(np.float32, copy=False)})
        probs = softmax(results[0].astype(np.float64))
        bird = results[1].reshape(-1).astype(np.float64) if len(results) > 1 else None
        return probs, bird

    def _decode(self, probs: np.ndarray, bird: float | None, top_k: int) -> Prediction:
        k = min(top_k, len(self.labels))
        order = np.argsort(-probs, kind="stable")[:k]
        top = [{"label": self.labels[i], "probability": round(float(probs[i]), 6)} for i in order]
        if bird is None:
            return Prediction(top, None, None)
        return Prediction(top, round(float(bird), 6), bool(bird >= self.bird_threshold))

    @staticmethod
    def check_top_k(top_k: int) -> int:
        """Validate k: 1..MAX_TOP_K."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
            raise BirdclfError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
        return int(top_k)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Predict already-preprocessed CHW arrays, in batches."""
        top_k = self.check_top_k(top_k)
        out: list[Prediction] = []
        for start in range(0, len(arrays), self.batch_size):
            batch = np.stack(arrays[start:start + self.batch_size])
            probs, bird = self.run(batch)
            out += [self._decode(probs[i], None if bird is None else bird[i], top_k) for i in range(len(batch))]
        return out

    def predict_batch(self, images: Iterable[ImageSource], top_k: int = DEFAULT_TOP_K,
                      names: Sequence[str] | None = None) -> list[Prediction]:
        """Predict several images (paths, bytes or PIL images); one bad image raises naming it (`names`, its path,
        or its position)."""
        arrays = []
        for index, image in enumerate(images):
            try:
                arrays.append(self.preprocess(image))
            except BirdclfError as exc:
                name = names[index] if names else image if isinstance(image, (str, os.PathLike)) else f"image {index}"
                raise type(exc)(f"{name}: {exc}") from exc
        return self.predict_arrays(arrays, top_k) if arrays else []

    def predict(self, image: ImageSource, top_k: int = DEFAULT_TOP_K) -> Prediction:
        """Predict one image."""
        return self.predict_arrays([self.preprocess(image)], top_k)[0]
