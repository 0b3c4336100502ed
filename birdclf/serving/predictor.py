"""The one inference path: an ONNX model plus the config inside it, run with onnxruntime (no torch)."""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..constants import (
    DEFAULT_TOP_K,
    INPUT_NAME,
    INPUT_PRECISE,
    MAX_TOP_K,
    METADATA_KEY,
    OUTPUT_BIRD,
    OUTPUT_LOGITS,
    OUTPUT_MAP,
    OUTPUT_OTHER,
)
from ..errors import BirdclfError, ModelFormatError
from ..settings import Settings, get_settings
from .hardening import DecodeBudget
from .imaging import (
    ORIGINAL_SIZE,
    ImageLimits,
    ImageSource,
    center_crop_region,
    load_image,
    normalize,
    resize_center_crop,
    resize_region,
)
from .locate import FindParams, Found, View, crop_around, find_bird, heat_overlay, paint_heat, tiles, to_original
from .model_source import resolve_model_path
from .other_bird import OtherBird
from .second_look import SecondLook

__all__ = ["VERDICTS", "Prediction", "Predictor", "verdict_of", "available_cpus", "softmax", "calibrated"]

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
               species_threshold: float, other: float | None = None, other_bird: OtherBird | None = None) -> str:
    """not_a_bird under the bird threshold; else species when the calibrated top-1 probability reaches the
    species threshold (and, for a model with an other-bird class, that class does not hold the photo back); else
    unsure."""
    if bird_probability is not None and bird_probability < bird_threshold:
        return "not_a_bird"
    if other is not None and other_bird is not None and other_bird.holds_back(other, confidence):
        return "unsure"
    return "species" if confidence >= species_threshold else "unsure"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def calibrated(logits: np.ndarray, temperature: float, other: np.ndarray | None = None) -> np.ndarray:
    """softmax(logits / temperature) over the species and, given a model's other-bird logit, that class last."""
    logits = np.asarray(logits, np.float64)
    if other is not None:
        logits = np.concatenate([logits, np.asarray(other, np.float64).reshape(len(logits), 1)], axis=1)
    return softmax(logits / temperature)


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
    box: tuple[int, int, int, int] | None = None  # where the bird is: x, y, width, height in the photo's pixels
    birds: int | None = None  # bird-like places found in the photo (the answer is for the most bird-like one)

    @property
    def label(self) -> str:
        """The most likely species."""
        return self.top_k[0]["label"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"top_k": self.top_k, "bird_probability": self.bird_probability, "is_bird": self.is_bird,
                "verdict": self.verdict, "box": None if self.box is None else list(self.box), "birds": self.birds}


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
        options.log_severity_level = 3  # an INT8 model's `precise` switch is an overridable initializer: ORT warns
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
        self._outputs = [OUTPUT_LOGITS] + [o for o in (OUTPUT_BIRD, OUTPUT_MAP, OUTPUT_OTHER) if o in outputs]
        self._n = self.config.num_classes
        self.other_bird = OtherBird.from_config(self.config.extra.get("other_bird")) \
            if OUTPUT_OTHER in outputs else None  # trained with an other-bird class: unknown species held back
        if OUTPUT_OTHER in outputs and self.other_bird is None:
            raise ModelFormatError(f"{self.path} has an '{OUTPUT_OTHER}' output but no other-bird rule in its config")
        switches = {i.name for i in self.session.get_overridable_initializers()}
        self.second_look = (SecondLook.from_config(self.config.extra.get("second_look"))
                            if INPUT_PRECISE in switches else None)  # INT8 with its fp32 copy inside
        self.find_params = FindParams.from_config(self.config.extra.get("find"))
        self.finds = settings.find and OUTPUT_MAP in outputs and OUTPUT_BIRD in outputs  # older models: no box
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
                "species_threshold": self.config.species_threshold, "temperature": self.config.temperature,
                "finds_bird": self.finds, "second_look": self.second_look is not None,
                "other_bird": None if self.other_bird is None else self.other_bird.to_dict()}

    def prepare(self, image: ImageSource) -> View:
        """Decode one image (bounded memory) into a View: the photo and its whole-photo model input."""
        cfg = self.config
        keep = cfg.resize_size  # the find stage's closest crop (min_crop of the shorter side) keeps full resolution
        if self.finds:
            keep = max(keep, math.ceil(cfg.input_size / max(self.find_params.min_crop, 0.05)))
        img = load_image(image, self.limits, min_short_side=keep, budget=self.decode_budget)
        whole = resize_center_crop(img, cfg.resize_size, cfg.input_size, cfg.interpolation)
        array = normalize(whole, cfg.mean, cfg.std)
        region = center_crop_region(img.size, cfg.resize_size, cfg.input_size)
        return View(img, array, region, tuple(img.info.get(ORIGINAL_SIZE, img.size)))

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """One image to the model's CHW float32 input (the whole photo, as the validation transform)."""
        return self.prepare(image).array

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(calibrated probabilities: one column per species, then P(other bird) for a model with that class; bird
        probabilities or None; bird maps or None) for an NCHW batch."""
        names = self._outputs if self.finds else [o for o in self._outputs if o != OUTPUT_MAP]
        batch = batch.astype(np.float32, copy=False)
        results = dict(zip(names, self.session.run(names, {INPUT_NAME: batch})))
        probs = self._calibrated(results)
        bird = results[OUTPUT_BIRD].reshape(-1).astype(np.float64) if OUTPUT_BIRD in results else None
        if self.second_look is not None:
            other = probs[:, self._n] if self.other_bird is not None else None
            again = self.second_look.rows(probs[:, :self._n], bird, self.config.species_threshold, self.bird_threshold,
                                          other, self.other_bird)
            if again.any():  # INT8 answers its noise could change: the same rows through the fp32 copy
                logger.debug("second look in fp32 for %d of %d inputs", int(again.sum()), len(batch))
                precise = dict(zip(names, self.session.run(names, {INPUT_NAME: batch[again],
                                                                   INPUT_PRECISE: np.array(True)})))
                for name in names:
                    results[name] = np.array(results[name])
                    results[name][again] = precise[name]
                probs[again] = self._calibrated(precise)
                if bird is not None:
                    bird[again] = precise[OUTPUT_BIRD].reshape(-1)
        return probs, bird, results.get(OUTPUT_MAP)

    def _calibrated(self, results: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated probabilities of one model call's outputs (the other-bird class last, for a model with one)."""
        other = results[OUTPUT_OTHER] if self.other_bird is not None else None
        return calibrated(results[OUTPUT_LOGITS], self.config.temperature, other)

    def _forward_all(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """`_forward` over any number of CHW inputs, `batch_size` at a time (the model's memory stays bounded)."""
        parts = [self._forward(np.stack(inputs[i:i + self.batch_size])) for i in range(0, len(inputs), self.batch_size)]
        return tuple(None if part[0] is None else np.concatenate(part)  # type: ignore[return-value]
                     for part in zip(*parts))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Model call on an NCHW batch: (calibrated probabilities, one per label, bird probabilities or None). With
        an other-bird class, each row sums to 1 - P(other bird)."""
        probs, bird, _ = self._forward(batch)
        return probs[:, :self._n], bird

    def _decode(self, probs: np.ndarray, bird: float | None, top_k: int, box: tuple[int, int, int, int] | None = None,
                birds: int | None = None) -> Prediction:
        k = min(top_k, len(self.labels))
        species = probs[:self._n]
        order = np.argsort(-species, kind="stable")[:k]
        top = [{"label": self.labels[i], "probability": round(float(species[i]), 6)} for i in order]
        verdict = verdict_of(float(species[order[0]]), bird, self.bird_threshold, self.config.species_threshold,
                             *self._other(probs))
        if bird is None:
            return Prediction(top, None, None, verdict)
        is_bird = bool(bird >= self.bird_threshold)
        count = None if not self.finds else (birds or 1) if is_bird else 0
        return Prediction(top, round(float(bird), 6), is_bird, verdict, box if is_bird else None, count)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Predict already-preprocessed CHW arrays, in batches (the whole input only: no find stage, no box)."""
        top_k = _checked_top_k(top_k)
        out: list[Prediction] = []
        for start in range(0, len(arrays), self.batch_size):
            batch = np.stack(arrays[start:start + self.batch_size])
            probs, bird, _ = self._forward(batch)
            out += [self._decode(probs[i], None if bird is None else bird[i], top_k) for i in range(len(batch))]
        return out

    def predict_views(self, views: Sequence[View], top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Predict decoded photos: the whole photo, then (models with a bird map) a closer look around the bird
        where the whole photo is not a confident close-up; the better answer of the two, with the bird's box."""
        top_k = _checked_top_k(top_k)
        out: list[Prediction] = []
        for start in range(0, len(views), self.batch_size):
            chunk = views[start:start + self.batch_size]
            probs, bird, maps = self._forward(np.stack([v.array for v in chunk]))
            if maps is None or bird is None:
                out += [self._decode(probs[i], None if bird is None else bird[i], top_k) for i in range(len(chunk))]
                continue
            found = [find_bird(maps[i], v.region, self.find_params) for i, v in enumerate(chunk)]
            answers = [(probs[i], float(bird[i]), found[i]) for i in range(len(chunk))]
            closer = [i for i in range(len(chunk))
                      if self._look_closer(*answers[i]) and self._worth_a_look(chunk[i], *answers[i][1:])]
            self._look(chunk, answers, closer)
            unclear = [i for i in range(len(chunk)) if not self._confident(*answers[i][:2])
                       and not self._close_up(bird[i], found[i])]  # the search is for birds too small to see
            if unclear and self.find_params.tile:
                self._search(chunk, answers, unclear)
            for view, (p, b, where) in zip(chunk, answers):
                box = to_original(where.box, view) if where is not None else None
                out.append(self._decode(p, b, top_k, box, where.birds if where is not None else None))
        return out

    def _look(self, chunk: Sequence[View], answers: list[tuple[np.ndarray, float, Found | None]],
              closer: list[int]) -> None:
        """Closer looks, each cropping around the bird the last one found, while they gain."""
        for _ in range(int(self.find_params.looks)):
            if not closer:
                break
            closer = self._closer_look(chunk, answers, closer, [a[2].birds if a[2] else 1 for a in answers])

    def _search(self, chunk: Sequence[View], answers: list[tuple[np.ndarray, float, Found | None]],
                unclear: list[int]) -> None:
        """Search overlapping tiles of the photos whose bird is still unclear; look closer around the birds of
        the `search_top` most bird-like tiles, and keep the best of those answers where it is better."""
        grids = [self._tiles(chunk[i]) for i in unclear]
        inputs = [self._crop_input(chunk[i], r) for i, grid in zip(unclear, grids) for r in grid]
        if not inputs:
            return
        _, bird, maps = self._forward_all(inputs)
        start, best = 0, []
        for i, grid in zip(unclear, grids):
            scores = bird[start:start + len(grid)]  # type: ignore[index]
            for k in np.argsort(-scores, kind="stable")[:max(1, int(self.find_params.search_top))]:
                found = find_bird(maps[start + k], grid[k], self.find_params)  # type: ignore[index]
                if found is not None:
                    best.append((i, found))
            start += len(grid)
        if not best:
            return
        local = [(answers[i][0], -1.0, found) for i, found in best]  # only a closer look may win
        self._look([chunk[i] for i, _ in best], local, list(range(len(best))))
        for (i, _), close in zip(best, local):
            if close[1] >= 0 and self._is_better(answers[i], close):  # type: ignore[arg-type]
                answers[i] = close

    def _closer_look(self, chunk: Sequence[View], answers: list[tuple[np.ndarray, float, Found | None]],
                     closer: list[int], birds: list[int]) -> list[int]:
        """One model call on crops around the birds of `answers[closer]`; keep each crop's answer where it is
        better; return those that may still gain from an even closer look."""
        regions = [crop_around(answers[i][2], chunk[i].image.size, self.find_params) for i in closer]  # type: ignore[arg-type]
        probs, bird, maps = self._forward_all([self._crop_input(chunk[i], r) for i, r in zip(closer, regions)])
        again = []
        for j, (i, region) in enumerate(zip(closer, regions)):
            where = find_bird(maps[j], region, self.find_params)  # type: ignore[index]
            close = (probs[j], float(bird[j]), where or Found(region, 1.0, 0.0, 1))  # type: ignore[index]
            if self._is_better(answers[i], close):
                answers[i] = (close[0], close[1], Found(close[2].box, close[2].fill, close[2].peak, birds[i]))
                if where is not None and self._look_closer(*close):
                    again.append(i)
        return again

    def _look_closer(self, probs: np.ndarray, bird: float, found: Found | None) -> bool:
        """Whether the whole photo leaves room for a closer look: a bird-like place, and no confident close-up."""
        if not self.finds or found is None:
            return False
        return not ((self._confident(probs, bird) or self._claimed_by_other(probs)) and self._close_up(bird, found))

    def _worth_a_look(self, view: View, bird: float, found: Found | None) -> bool:
        """Whether a closer look at a bird the whole photo already sees has more of the photo's pixels to show: its
        crop must hold at least the model's input side of them. A small photo (Kaggle's 224 px crops) is answered
        whole: upsampling adds no detail, and there closer looks changed more right answers to wrong than back."""
        if bird < self.bird_threshold or found is None:
            return True
        return crop_around(found, view.image.size, self.find_params)[2] / view.reduced >= self.config.input_size

    def _tiles(self, view: View) -> list[tuple[float, float, float, float]]:
        """The search's tiles in the view's image: only grids whose tiles hold enough of the original photo's
        pixels to be worth a look (half the model's input side or more): a small photo has nothing to zoom into."""
        return tiles(view.image.size, self.find_params, min_side=self.config.input_size / 2 * view.reduced)

    def _close_up(self, bird: float, found: Found | None) -> bool:
        """The whole photo sees a bird that fills a good part of it."""
        return bird >= self.bird_threshold and found is not None and found.fill >= self.find_params.fill

    def _confident(self, probs: np.ndarray, bird: float) -> bool:
        """A bird, and sure of its species."""
        top = self._top(probs)
        return bird >= self.bird_threshold and verdict_of(top, bird, self.bird_threshold,
                                                          self.config.species_threshold,
                                                          *self._other(probs)) == "species"

    def _top(self, probs: np.ndarray) -> float:
        """The top species' calibrated probability."""
        return float(probs[:self._n].max())

    def _claimed_by_other(self, probs: np.ndarray) -> bool:
        """Whether the other-bird class (a model with one) wins: a close-up of a species the model does not know is
        answered whole (a crop must not shop for a part that looks like a known one)."""
        return self.other_bird is not None and float(probs[self._n]) > self._top(probs)

    def _other(self, probs: np.ndarray) -> tuple[float | None, OtherBird | None]:
        """(P(other bird), the rule) for a model with an other-bird class, else (None, None)."""
        return (float(probs[self._n]), self.other_bird) if self.other_bird is not None else (None, None)

    def _is_better(self, whole: tuple[np.ndarray, float, Found | None], close: tuple[np.ndarray, float, Found]) -> bool:
        """A closer look wins when it sees a bird and is surer of the species than the wider view, or the wider
        view saw no bird. (For a model with an other-bird class, the verdict of the answer kept is then decided
        with that class's rule, so a crop may turn `species` into `unsure`, or back.)"""
        if close[1] < self.bird_threshold:
            return False
        if whole[1] < self.bird_threshold:  # a bird the wider view did not see: only when quite sure (false alarms)
            params = self.find_params
            return close[1] >= params.zoom_sure_bird or (close[1] >= params.zoom_bird
                                                         and self._top(close[0]) >= params.zoom_confidence)
        return self._top(close[0]) > self._top(whole[0])

    def _crop_input(self, view: View, region: tuple[float, float, float, float]) -> np.ndarray:
        """The model's input for one region of a photo (resized straight to the input size: the crop is square)."""
        cfg = self.config
        return normalize(resize_region(view.image, region, cfg.input_size, cfg.interpolation), cfg.mean, cfg.std)

    def explain(self, image: ImageSource, folder: str | os.PathLike) -> Path:
        """Write `folder`/<name>.explain.png: where the model sees a bird (the whole view's and the search tiles'
        bird maps) over the photo, with the answer's box; return its path."""
        if not self.finds:
            raise BirdclfError("this model has no bird map (exported before the find stage, or BIRDCLF_FIND=0): "
                               "there is no heat map to draw")
        view = self.prepare(image)
        regions = [view.region, *self._tiles(view)]
        maps = self._forward_all([view.array, *(self._crop_input(view, r) for r in regions[1:])])[2]
        answer = self.predict_views([view])[0]
        box = None
        if answer.box is not None:
            sx, sy = view.image.size[0] / view.original_size[0], view.image.size[1] / view.original_size[1]
            box = (answer.box[0] * sx, answer.box[1] * sy, answer.box[2] * sx, answer.box[3] * sy)
        name = Path(image).name if isinstance(image, (str, os.PathLike)) else "image"
        target = Path(folder) / f"{name}.explain.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        heat_overlay(view.image, paint_heat(view.image.size, regions, maps), box).save(target)
        return target

    def predict_batch(self, images: Iterable[ImageSource], top_k: int = DEFAULT_TOP_K,
                      names: Sequence[str] | None = None) -> list[Prediction]:
        """Predict several images (paths, bytes or PIL images); one bad image raises naming it (`names`, its path,
        or its position)."""
        views = []
        for index, image in enumerate(images):
            try:
                views.append(self.prepare(image))
            except BirdclfError as exc:
                name = names[index] if names else image if isinstance(image, (str, os.PathLike)) else f"image {index}"
                raise type(exc)(f"{name}: {exc}") from exc
        return self.predict_views(views, top_k) if views else []

    def predict(self, image: ImageSource, top_k: int = DEFAULT_TOP_K) -> Prediction:
        """Predict one image."""
        return self.predict_views([self.prepare(image)], top_k)[0]
