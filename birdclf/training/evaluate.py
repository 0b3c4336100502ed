"""Evaluate on the test split: accuracy, top-5, weighted F1, per-class report, confusions, top losses; saved."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["compute_metrics", "most_confused", "evaluate_probs", "evaluate_learner", "evaluate_onnx",
           "plot_confusion", "plot_top_losses", "plot_reliability", "model_outputs", "label_targets"]


def compute_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Top-1, top-5 accuracy and weighted F1 from class probabilities."""
    from sklearn.metrics import f1_score

    preds = probs.argmax(1)
    k = min(5, probs.shape[1])
    top5 = np.argsort(-probs, axis=1)[:, :k]
    return {"accuracy": float((preds == targets).mean()),
            "top5_accuracy": float((top5 == targets[:, None]).any(1).mean()),
            "f1_weighted": float(f1_score(targets, preds, average="weighted", zero_division=0)),
            "num_images": int(len(targets))}


def most_confused(confusion: np.ndarray, labels: Sequence[str], n: int = 20, min_count: int = 1) -> list[dict]:
    """The (actual, predicted) pairs the model mixes up most, like fastai's `most_confused`."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0]
    out = []
    for a, p in order[:n]:
        if off[a, p] < min_count:
            break
        out.append({"actual": labels[a], "predicted": labels[p], "count": int(off[a, p])})
    return out


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: Path, max_classes: int = 30) -> None:
    """Confusion matrix PNG; with many classes, only the classes involved in the most confusions (readable)."""
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

    idx = np.arange(len(labels))
    title = "Confusion matrix"
    if len(labels) > max_classes:
        off = confusion.copy()
        np.fill_diagonal(off, 0)
        score = off.sum(0) + off.sum(1)
        idx = np.sort(np.argsort(-score, kind="stable")[:max_classes])
        title = f"Confusion matrix: the {max_classes} most confused of {len(labels)} classes"
    sub = confusion[np.ix_(idx, idx)]
    size = max(5, 0.35 * len(idx) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(sub, cmap="Blues")
    ax.set_xticks(range(len(idx)), [labels[i] for i in idx], rotation=90, fontsize=7)
    ax.set_yticks(range(len(idx)), [labels[i] for i in idx], fontsize=7)
    for (r, c), v in np.ndenumerate(sub):
        if v:
            ax.text(c, r, int(v), ha="center", va="center", fontsize=6,
                    color="white" if v > sub.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_top_losses(rows: list[dict], path: Path, n: int = 12) -> None:
    """Grid of the images with the highest loss: predicted / actual / loss / probability of the actual class."""
    from matplotlib.figure import Figure

    from ..serving.imaging import load_image

    rows = rows[:n]
    if not rows:
        return
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 4.3 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        try:
            img = load_image(row["path"])
            img.thumbnail((300, 300))
            ax.imshow(img)
        except Exception:
            pass
        ax.set_title(f"pred: {row['predicted']}\nactual: {row['actual']}\nloss {row['loss']:.2f}, "
                     f"p(actual) {row['prob_actual']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_reliability(table: dict[str, Any], path: Path, threshold: float | None = None) -> None:
    """Reliability figure: accuracy against confidence per bin (bar width = bin, darker = more photos), the
    diagonal of perfect calibration, and the species threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    most = max((row["photos"] for row in table["bins"]), default=1)
    for row in table["bins"]:
        ax.bar(row["low"], row["accuracy"], width=row["high"] - row["low"], align="edge", edgecolor="white",
               color=(0.15, 0.4, 0.75, 0.3 + 0.7 * row["photos"] / most))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    if threshold is not None:
        ax.axvline(threshold, color="tab:green", lw=1.5, label=f"species threshold {threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (calibrated top-1 probability)", ylabel="accuracy",
           title=f"Reliability on {table['photos']} test photos (ECE {100 * table['ece']:.1f}%)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def evaluate_probs(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], paths: Sequence[Any],
                   out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics, per-class report, confusions and top losses from probabilities; written to `out_dir` if given."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = list(labels)
    metrics = compute_metrics(probs, targets)
    preds = probs.argmax(1)
    confusion = confusion_matrix(targets, preds, labels=list(range(len(labels))))
    report = classification_report(targets, preds, labels=list(range(len(labels))), target_names=labels,
                                   output_dict=True, zero_division=0)
    losses = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0))
    rows = [{"path": str(p), "actual": labels[t], "predicted": labels[q], "prob_predicted": float(probs[i, q]),
             "prob_actual": float(probs[i, t]), "loss": float(losses[i])}
            for i, (p, t, q) in enumerate(zip(paths, targets, preds))]
    top = sorted(rows, key=lambda r: -r["loss"])
    metrics["most_confused"] = most_confused(confusion, labels)
    f1 = sorted((round(float(report[name]["f1-score"]), 3), name) for name in labels if report[name]["support"])
    metrics["worst_classes"] = [{"class": name, "f1": score} for score, name in f1[:5]]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "precision", "recall", "f1", "support"])
            for name in labels:
                r = report[name]
                writer.writerow([name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1-score']:.4f}",
                                 int(r["support"])])
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
            writer.writeheader()
            writer.writerows(rows)
        np.savetxt(out / "confusion_matrix.csv", confusion, fmt="%d", delimiter=",",
                   header=",".join(labels), comments="")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_confusion(confusion, labels, out / "confusion_matrix.png")
        plot_top_losses(top, out / "top_losses.png")
    metrics["top_losses"] = top[:10]
    return metrics


def label_targets(items: Sequence[tuple[Any, str]], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for _, label in items if label not in index})
    if unknown:
        raise DataError(f"test labels the model does not know: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return np.array([index[label] for _, label in items])


def evaluate_learner(learn: Any, items: Sequence[tuple[Path, str]], out_dir: str | os.PathLike | None = None,
                     bs: int = 64, calibration: Any = None) -> dict[str, Any]:
    """Evaluate a fastai Learner on (path, label) items with the validation transform; with a `calibration`, also
    how its verdicts do (coverage and precision of "species", share passing the bird gate)."""
    from .calibration import abstention_stats, reliability, softmax

    labels = list(learn.dls.vocab)
    targets = label_targets(items, labels)
    logits, bird = model_outputs(learn, [p for p, _ in items], bs)  # an other-bird logit last, if the model has one
    n = len(labels)
    metrics = evaluate_probs(softmax(logits[:, :n]), targets, labels, [p for p, _ in items], out_dir)
    if calibration is not None:
        metrics["abstention"] = abstention_stats(logits, targets, calibration, bird)
        probs = softmax(logits, calibration.temperature)[:, :n]
        metrics["reliability"] = reliability(probs.max(1), probs.argmax(1) == targets)
        if out_dir is not None:
            plot_reliability(metrics["reliability"], Path(out_dir) / "reliability.png",
                             calibration.species_threshold)
    return metrics


def evaluate_onnx(model: str | os.PathLike, items: Sequence[tuple[Path, str]],
                  out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate the served artifact itself (birdclf Predictor, no torch) on (path, label) items."""
    from ..serving.predictor import Predictor

    predictor = Predictor(model)
    targets = label_targets(items, predictor.labels)
    chunks = []
    for start in range(0, len(items), 64):
        batch = np.stack([predictor.preprocess(p) for p, _ in items[start:start + 64]])
        chunks.append(predictor.run(batch)[0])
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(predictor.labels)))
    return evaluate_probs(probs, targets, predictor.labels, [p for p, _ in items], out_dir)


def model_outputs(learn: Any, paths: Sequence[Any], bs: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Species logits and P(bird) (None without a gate) of images under the validation transform, in eval mode;
    with an other-bird class (`learn.other_bird`), its logit is the last column."""
    import torch

    from .gate import gated_model

    model = gated_model(learn)
    device = next(model.parameters()).device
    logits, birds = [], []
    with torch.inference_mode():
        for (xb,) in learn.dls.test_dl(list(paths), bs=bs):
            out = model(xb.to(device))
            species = out[0] if isinstance(out, tuple) else out
            if getattr(learn, "other_bird", None) is not None:
                species = torch.cat([species, out[-1]], dim=1)
            logits.append(species.float().cpu().numpy())
            if isinstance(out, tuple):
                birds.append(out[1].float().cpu().numpy())
    width = len(learn.dls.vocab) + (getattr(learn, "other_bird", None) is not None)
    return (np.concatenate(logits) if logits else np.zeros((0, width)),
            np.concatenate(birds) if birds else None)
