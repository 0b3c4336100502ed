"""Export a torch model or fastai Learner to one verified ONNX file, and optionally quantise it to INT8."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..constants import INPUT_NAME, METADATA_KEY, ONNX_OPSET, OUTPUT_BIRD, OUTPUT_LOGITS, OUTPUT_MAP, OUTPUT_OTHER
from ..errors import ExportError

__all__ = ["ExportReport", "QuantizeReport", "export_onnx", "export_learner", "learner_config",
           "verify_parity", "quantize_int8", "quantize_images", "fp32_nodes", "set_metadata", "read_model_config"]


@dataclass
class ExportReport:
    """What an export produced and how closely onnxruntime matches torch."""

    path: str
    size_bytes: int
    max_abs_diff: float
    top1_agreement: float
    batch_sizes: tuple[int, ...]
    exporter: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class QuantizeReport:
    """INT8 model size and how often it agrees with the fp32 model (and with the labels, when given)."""

    path: str
    size_bytes: int
    fp32_size_bytes: int
    top1_agreement: float
    num_images: int
    held_out: bool = False  # agreement measured on images not used for calibration
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    is_bird_agreement: float | None = None
    fp32_nodes: int = 0  # nodes kept in fp32 (the stem and first stage, the gate's tail)
    int8_species_kept: float | None = None  # of fp32's `species` answers, the share plain INT8 gives the same
    second_look: bool = False  # the file holds the fp32 model too, for answers INT8's noise could change
    rechecked: float | None = None  # share of the evaluation images the second look computed again in fp32
    served_agreement: float | None = None  # top-1 agreement with fp32 as served (INT8 plus the second look)
    species_kept: float | None = None  # of fp32's `species` answers, the share served the same species

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def set_metadata(path: str | os.PathLike, config: ModelConfig) -> None:
    """Embed the model config in the ONNX file's metadata (replacing any older copy)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=config.to_json())
    model.producer_name = "birdclf"
    onnx.save(model, str(path))


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """Read the config embedded in an ONNX file's metadata without starting a session."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path} has no '{METADATA_KEY}' metadata: not a birdclf model")
    return ModelConfig.from_json(props[METADATA_KEY])


def _session(path: str | os.PathLike) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the second look's `precise` switch is an overridable initializer: ORT warns
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_export(model: Any, example: Any, path: Path, output_names: list[str]) -> str:
    """Run torch.onnx.export: the torch.export-based exporter first, the TorchScript one if that fails."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                              external_data=False, verbose=False)
            return "dynamo"
        except Exception:
            axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
            return "torchscript"


def verify_parity(model: Any, path: str | os.PathLike, batch: np.ndarray, atol: float = 1e-3) -> tuple[float, float]:
    """Run torch and onnxruntime on the same batch; raise ExportError unless outputs match and top-1 agree."""
    import torch

    with torch.inference_mode():
        expected = model(torch.from_numpy(batch))
    expected = [e.float().numpy() for e in (expected if isinstance(expected, (tuple, list)) else (expected,))]
    actual = _session(path).run(None, {INPUT_NAME: batch})
    max_diff = max(float(np.abs(e.reshape(a.shape) - a).max()) for e, a in zip(expected, actual))
    agreement = float((expected[0].argmax(-1) == actual[0].argmax(-1)).mean())
    if not np.isfinite(max_diff) or max_diff > atol or agreement < 1.0:
        raise ExportError(f"torch vs onnxruntime parity failed on {path}: max abs diff {max_diff:.2e} "
                          f"(limit {atol:.0e}), top-1 agreement {agreement:.1%}")
    return max_diff, agreement


def export_onnx(model: Any, path: str | os.PathLike, config: ModelConfig, sample: np.ndarray | None = None,
                atol: float = 1e-3, seed: int = 0) -> ExportReport:
    """Export in eval mode with named input/outputs and dynamic batch; check, embed config, verify parity."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    size = config.input_size
    if sample is None:
        sample = np.random.default_rng(seed).standard_normal((4, 3, size, size)).astype(np.float32)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    with torch.inference_mode():
        out = model(torch.from_numpy(sample[:2]))
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    names = list(getattr(model, "output_names", [OUTPUT_LOGITS, OUTPUT_BIRD, OUTPUT_MAP][:n_out]))
    if len(names) != n_out or (out[0] if n_out > 1 else out).shape[-1] != config.num_classes:
        raise ExportError(f"model outputs do not fit the config's {config.num_classes} labels")
    if (OUTPUT_OTHER in names) != (config.extra.get("other_bird") is not None):
        raise ExportError(f"an '{OUTPUT_OTHER}' output and the config's other-bird rule go together")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        exporter = _torch_export(model, torch.from_numpy(sample[:2]).clone(), tmp_path, names)
        merged = onnx.load(str(tmp_path))  # pulls any external data back into one self-contained file
        onnx.save(merged, str(tmp_path), save_as_external_data=False)
        try:
            onnx.checker.check_model(str(tmp_path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the export: {exc}") from exc
        set_metadata(tmp_path, config)
        batches = (1, len(sample))
        diffs = [verify_parity(model, tmp_path, sample[:b], atol) for b in batches]
        os.replace(tmp_path, path)
    return ExportReport(str(path), path.stat().st_size, max(d for d, _ in diffs), min(a for _, a in diffs),
                        batches, exporter)


def learner_config(learn: Any, model_name: str, version: str = "1") -> ModelConfig:
    """The ModelConfig a birdclf-trained Learner carries (set by `birdclf.training`), with its vocab."""
    base = getattr(learn, "birdclf_config", None)
    if base is None:
        raise ExportError("this Learner has no birdclf_config: build it with birdclf.training.make_learner")
    data = base.to_dict() | {"labels": list(learn.dls.vocab), "model_name": model_name, "version": version}
    return ModelConfig.from_dict(data)


def export_learner(learn: Any, path: str | os.PathLike, model_name: str = "birdclf", version: str = "1",
                   sample: np.ndarray | None = None) -> ExportReport:
    """Export a fastai Learner's model (with its bird gate) with its labels, validation transform, calibration
    and card in the metadata."""
    from .gate import attach_gate, gated_model

    attach_gate(learn)
    config = learner_config(learn, model_name, version)
    if sample is None and len(getattr(learn.dls.valid, "dataset", ()) or ()):
        sample = learn.dls.valid.one_batch()[0][:8].detach().cpu().float().numpy()  # real images when attached
    device = next(learn.model.parameters()).device
    learn.model.cpu()  # exported and checked on the CPU, where onnxruntime serves it
    try:
        return export_onnx(gated_model(learn), path, config, sample=sample)  # else a seeded random batch
    finally:
        learn.model.to(device)


class _Reader:
    """Feeds calibration batches to onnxruntime's static quantiser."""

    def __init__(self, arrays: np.ndarray, batch: int = 8) -> None:
        self._batches = iter([{INPUT_NAME: arrays[i:i + batch]} for i in range(0, len(arrays), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# timm parameter names survive the export: the stem and first stage run at half the input resolution, where
# quantisation noise is amplified most (measured on the starter: quantising only the stem cost 3.7 points of
# agreement, only stage 0 another 5.7; later blocks 0-2.3 each).
_HIGH_RESOLUTION = re.compile(r"(^|\.)(conv_stem|bn1|blocks\.0)\.")


def fp32_nodes(model: Any) -> list[str]:
    """Nodes an INT8 model keeps in fp32: those whose weights belong to the stem or first stage of a timm
    EfficientNet-like body (plus weightless nodes fed only by them), and everything after the last Gemm/MatMul
    (the end of the gate branch: P(bird) keeps its precision)."""
    inits = {i.name for i in model.graph.initializer}
    keep, fp32_tensors = [], set()
    for node in model.graph.node:
        weights = [i for i in node.input if i in inits and i.endswith("weight")]
        activations = [i for i in node.input if i and i not in inits]
        if (weights and _HIGH_RESOLUTION.search(weights[0])) or \
                (not weights and activations and all(a in fp32_tensors for a in activations)):
            keep.append(node.name)
            fp32_tensors.update(node.output)
    nodes = list(model.graph.node)
    gemms = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")]
    if gemms:
        tail = set(nodes[gemms[-1]].output)
        for node in nodes[gemms[-1] + 1:]:
            if set(node.input) & tail:
                keep.append(node.name)
                tail |= set(node.output)
    return keep


@contextlib.contextmanager
def _quiet_quantizer() -> Any:
    """onnxruntime's quantizer logs on the root logger advice to pre-process the graph (measured: it changes nothing
    for these models) and that 1-D BatchNorm weights have no axis 1 (they are quantised per tensor): keep both out
    of notebooks and CLI output."""
    root = logging.getLogger()
    quiet = logging.Filter()
    quiet.filter = lambda record: not any(  # type: ignore[method-assign]
        text in record.getMessage() for text in ("pre-processing before quantization", "is out-of-range for weight"))
    root.addFilter(quiet)
    for handler in root.handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        for handler in root.handlers:
            handler.removeFilter(quiet)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                  evaluation: np.ndarray | None = None, labels: np.ndarray | None = None,
                  second_look: bool = True) -> QuantizeReport:
    """Static INT8 (QDQ, per-channel weights, uint8 activations, MinMax) calibrated on real preprocessed images,
    with the stem, first stage and gate tail kept in fp32 (`fp32_nodes`). With `second_look` the file also holds
    the fp32 model, which the Predictor runs on the answers INT8's noise could change (`SecondLook`). Agreement
    is measured on `evaluation` (held out from calibration; the calibration images themselves if not given); with
    `labels` (class indices of the evaluation images) also the accuracy of both models. The report goes into the
    INT8 model's card."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..serving.other_bird import OtherBird
    from ..serving.second_look import SecondLook
    from .second_look import served_outputs, species_kept, with_second_look

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ExportError("quantize_int8 would overwrite its fp32 input: choose another output path")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError("calibration must be a non-empty NCHW batch of preprocessed images")
    config = read_model_config(src)
    keep = fp32_nodes(onnx.load(str(src)))
    with tempfile.TemporaryDirectory(dir=dst.parent if dst.parent.exists() else None) as tmp, \
            _quiet_quantizer():
        out = Path(tmp) / dst.name
        quantize_static(str(src), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax)
        held_out = evaluation is not None
        evaluation = calibration if evaluation is None else np.ascontiguousarray(evaluation, dtype=np.float32)
        fp32_out = _run_all(src, evaluation)
        int8_out = _run_all(out, evaluation)
        report = QuantizeReport(str(dst), out.stat().st_size, src.stat().st_size,
                                float((fp32_out[0].argmax(-1) == int8_out[0].argmax(-1)).mean()), len(evaluation),
                                held_out, fp32_nodes=len(keep))
        if labels is not None and len(labels) == len(evaluation):
            report.fp32_accuracy = float((fp32_out[0].argmax(-1) == labels).mean())
            report.int8_accuracy = float((int8_out[0].argmax(-1) == labels).mean())
        if len(fp32_out) > 1:
            threshold = config.bird_threshold
            report.is_bird_agreement = float(((fp32_out[1] >= threshold) == (int8_out[1] >= threshold)).mean())
        thresholds = (config.temperature, config.species_threshold, config.bird_threshold,
                      OtherBird.from_config(config.extra.get("other_bird")))
        report.int8_species_kept = species_kept(fp32_out, int8_out, *thresholds)
        extra = dict(config.extra)
        if second_look:
            rule = SecondLook()
            served, again = served_outputs(fp32_out, int8_out, rule, *thresholds)
            report.second_look, report.rechecked = True, float(again.mean())
            report.served_agreement = float((fp32_out[0].argmax(-1) == served[0].argmax(-1)).mean())
            report.species_kept = species_kept(fp32_out, served, *thresholds)
            onnx.save(with_second_look(onnx.load(str(src)), onnx.load(str(out))), str(out))
            _check_precise_branch(out, evaluation[:8], [o[:8] for o in fp32_out])
            extra["second_look"] = rule.to_dict()
        summary = {k: v for k, v in report.to_dict().items() if k not in ("path", "size_bytes", "fp32_size_bytes")}
        card = dict(config.card) | {"int8": summary | {"size_mb": round(out.stat().st_size / 1e6, 1)}}
        set_metadata(out, ModelConfig.from_dict(config.to_dict() | {"version": config.version + "-int8",
                                                                     "card": card, "extra": extra}))
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), dst)
    report.size_bytes = dst.stat().st_size
    return report


def _check_precise_branch(path: Path, batch: np.ndarray, expected: list[np.ndarray]) -> None:
    """The second-look file's `precise` branch must give the fp32 model's outputs, exactly."""
    from ..constants import INPUT_PRECISE

    session = _session(path)
    got = session.run([o.name for o in session.get_outputs()], {INPUT_NAME: batch, INPUT_PRECISE: np.array(True)})
    worst = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    if worst > 1e-5:
        raise ExportError(f"the INT8 file's fp32 branch differs from the fp32 model by {worst:.2e}")


def quantize_images(src: str | os.PathLike, dst: str | os.PathLike, images: str | os.PathLike | list[Path],
                    limit: int = 300, evaluate: int = 500, seed: int = 0, second_look: bool = True) -> QuantizeReport:
    """`quantize_int8` calibrated on `limit` of `images` (a folder, searched recursively, or a list of paths),
    shuffled with `seed` so that every class is seen, and measured on up to `evaluate` others it did not see; when
    their folder names are the model's labels, also the accuracy of both models."""
    import random

    from ..data.labels import normalize_label
    from ..data.layout import list_images
    from ..serving.predictor import Predictor

    predictor = Predictor(src)
    files = list(images) if isinstance(images, list) else list_images(images)
    if not files:
        raise ExportError(f"no images in {images} to calibrate with")
    files = [Path(f) for f in files]
    random.Random(seed).shuffle(files)
    held_out = files[limit:limit + evaluate]
    index = {normalize_label(label): i for i, label in enumerate(predictor.labels)}
    targets = [index.get(normalize_label(f.parent.name)) for f in held_out]
    labels = np.array(targets) if held_out and None not in targets else None
    return quantize_int8(src, dst, np.stack([predictor.preprocess(f) for f in files[:limit]]),
                         np.stack([predictor.preprocess(f) for f in held_out]) if held_out else None, labels,
                         second_look=second_look)


def _run_all(path: Path, batch: np.ndarray, chunk: int = 64) -> list[np.ndarray]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {INPUT_NAME: batch[i:i + chunk]}) for i in range(0, len(batch), chunk)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]
