"""The one inference path: an ONNX model plus the config inside it, run with onnxruntime (no torch)."""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..constants import DEFAULT_TOP_K, INPUT_NAME, MAX_TOP_K, METADATA_KEY, OUTPUT_BIRD, OUTPUT_LOGITS
from ..errors import BirdclfError, ModelFormatError
from ..settings import Settings, get_settings
from .hardening import DecodeBudget
from .imaging import ImageLimits, ImageSource, preprocess
from .model_source import resolve_model_path

__all__ = ["VERDICTS", "Prediction", "Predictor", "verdict_of", "available_cpus", "softmax"]

logger = logging.getLogger(__name__)


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


def _checked_top_k(top_k: Any) -> int:
    """k for the Python API: an int from 1 to MAX_TOP_K (HTTP requests are validated by their request models)."""
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise BirdclfError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r:.40}")
    return int(top_k)


def verdict_of(confidence: float, bird_probability: float | None, bird_threshold: float,
               species_threshold: float) -> str:
    """not_a_bird under the bird threshold; else species when the calibrated top-1 probability reaches the
    species threshold; else unsure."""
    if bird_probability is not None and bird_probability < bird_threshold:
        return "not_a_bird"
    return "species" if confidence >= species_threshold else "unsure"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


VERDICTS = ("species", "unsure", "not_a_bird")


@dataclass(frozen=True)
class Prediction:
    """Top-k species for one image, whether it looks like a bird at all, and the verdict.

    verdict: "species" (confidently top_k[0]), "unsure" (a bird, but the top guesses are only suggestions) or
    "not_a_bird" (bird_probability under the model's bird threshold).
    """

    top_k: list[dict[str, Any]]
    bird_probability: float | None
    is_bird: bool | None
    verdict: str = "species"

    @property
    def label(self) -> str:
        """The most likely species."""
        return self.top_k[0]["label"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"top_k": self.top_k, "bird_probability": self.bird_probability, "is_bird": self.is_bird,
                "verdict": self.verdict}


class Predictor:
    """Load an ONNX model once; predict top-k species for one image or a batch."""

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = None,
                 limits: ImageLimits | None = None, batch_size: int = 32, settings: Settings | None = None) -> None:
        import onnxruntime as ort

        settings = settings or get_settings()
        self.path = resolve_model_path(model, settings)
        self.threads = int(threads or settings.threads or available_cpus())
        self.limits = limits or ImageLimits.from_settings(settings)
        self.decode_budget = DecodeBudget(settings.decode_memory)  # over every image this Predictor decodes
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        self.bird_threshold = (settings.bird_threshold if settings.bird_threshold is not None
                               else self.config.bird_threshold)
        logger.info("model %s version %s loaded from %s: %d classes, %d threads", self.config.model_name,
                    self.config.version, self.path.name, self.config.num_classes, self.threads)

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
                "bird_signal": self.has_bird_signal, "bird_threshold": self.bird_threshold,
                "species_threshold": self.config.species_threshold, "temperature": self.config.temperature}

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """One image to the model's CHW float32 input."""
        return preprocess(image, self.config, self.limits, self.decode_budget)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Model call on an NCHW batch: (calibrated probabilities, bird probabilities or None)."""
        results = self.session.run(self._outputs, {INPUT_NAME: batch.astype(np.float32, copy=False)})
        probs = softmax(results[0].astype(np.float64) / self.config.temperature)
        bird = results[1].reshape(-1).astype(np.float64) if len(results) > 1 else None
        return probs, bird

    def _decode(self, probs: np.ndarray, bird: float | None, top_k: int) -> Prediction:
        k = min(top_k, len(self.labels))
        order = np.argsort(-probs, kind="stable")[:k]
        top = [{"label": self.labels[i], "probability": round(float(probs[i]), 6)} for i in order]
        verdict = verdict_of(float(probs[order[0]]), bird, self.bird_threshold, self.config.species_threshold)
        if bird is None:
            return Prediction(top, None, None, verdict)
        return Prediction(top, round(float(bird), 6), bool(bird >= self.bird_threshold), verdict)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Predict already-preprocessed CHW arrays, in batches."""
        top_k = _checked_top_k(top_k)
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
