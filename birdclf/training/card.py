"""Model cards: what a model was trained on, how well it does, when it abstains, and what it is not for.
The summary travels in the ONNX metadata (served at /api/model); MODEL_CARD.md sits in the run folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .calibration import Calibration

__all__ = ["INTENDED_USE", "LIMITS", "build_card", "render_card", "write_card"]

INTENDED_USE = ("Suggest the species of a bird in a photo, for curious people and birders; a second opinion, "
                "not an authority for records or surveys.")
LIMITS = [
    "Knows only the species it was trained on: any other bird gets one of them or, if the model is unsure, "
    "suggestions (verdict 'unsure'); read top_k as candidates.",
    "Kaggle BIRDS images are cropped and centred on one bird: real photos (small, distant, partly hidden birds, "
    "several birds) score lower than the test metrics below.",
    "The bird gate is ImageNet's notion of a bird: drawings, toys and carvings of birds often pass it.",
    "Thresholds were fitted on the training data's own photos (validation or out-of-fold predictions); a "
    "different population of photos shifts them.",
]
OTHER_BIRD_LIMIT = ("Knows only the species it was trained on: its other-bird class holds most other species back "
                    "(verdict 'unsure'), not all, and some of its own species' photos too; read top_k as candidates.")


_GATE_KINDS = {
    "shared": "the backbone's ImageNet classifier beside the new head; P(bird) = mass of ImageNet's 59 bird classes",
    "fixed": "a fixed branch, the starter's frozen ImageNet EfficientNet-Lite0 on the same photo (fine-tuning moved "
             "the body, so its own ImageNet classifier no longer holds); P(bird) = mass of ImageNet's 59 bird "
             "classes"}


def build_card(name: str, version: str, arch: str, weights: str, data: str | os.PathLike, split: str,
               classes: int, images: dict[str, int], test: dict[str, Any] | None,
               calibration: dict[str, Any] | None, int8: dict[str, Any] | None = None,
               gate: str | None = "shared", other_birds: int | None = None) -> dict[str, Any]:
    """The card as a JSON-ready dict (no local paths: only the data folder's name, and where it was downloaded
    from when `birdclf data download` fetched it). `gate`: "shared", "fixed" or None, the gate exported.
    `other_birds`: photos of other species an other-bird class was trained on."""
    from ..data.download import data_origin

    card: dict[str, Any] = {
        "model": name, "version": version, "arch": arch, "weights": weights,
        "data": {"source": Path(data).name, "split": split, "classes": classes, "images": images},
        "intended_use": INTENDED_USE, "limits": [OTHER_BIRD_LIMIT, *LIMITS[1:]] if other_birds else LIMITS}
    origin = data_origin(data)
    if origin:
        card["data"]["origin"] = {k: origin[k] for k in ("source", "version", "downloaded") if k in origin}
    if test:
        card["test"] = {k: round(float(test[k]), 4) for k in ("accuracy", "top5_accuracy", "f1_weighted")
                        if k in test} | {"images": int(test.get("num_images", 0)),
                                         "worst_classes": test.get("worst_classes", [])}
    if calibration:
        card["abstention"] = {"temperature": calibration["temperature"],
                              "species_threshold": calibration["species_threshold"],
                              "valid": {"coverage": round(calibration["coverage"], 4),
                                        "precision": round(calibration["precision"], 4)}}
        if "precision_bound" in calibration:  # what the threshold rests on (older records lack it)
            card["abstention"]["fitted_on"] = {
                "source": calibration["source"], "photos": calibration["images"],
                "target_precision": calibration["target_precision"],
                "precision_bound": calibration["precision_bound"], "bound": calibration["bound"],
                "level": calibration["level"], "summary": Calibration(**calibration).summary()}
        if calibration.get("other_threshold") is not None:
            card["abstention"]["other_bird"] = {"photos": other_birds, "threshold": calibration["other_threshold"],
                                                "pass_rate": calibration.get("other_pass")}
        if test and test.get("abstention"):
            card["abstention"]["test"] = test["abstention"]
        if test and test.get("reliability"):
            card["abstention"]["reliability"] = {"ece": test["reliability"]["ece"],
                                                 "figure": "evaluation/reliability.png"}
        if gate:
            card["gate"] = {"kind": _GATE_KINDS.get(gate, gate), "branch": gate,
                            "bird_threshold": calibration.get("bird_threshold"),
                            "valid_bird_pass": calibration.get("bird_pass")}
    if int8:
        card["int8"] = int8
    return card


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}%" if isinstance(x, (int, float)) else "n/a"


def render_card(card: dict[str, Any]) -> str:
    """MODEL_CARD.md text."""
    data = card.get("data", {})
    lines = [f"# Model card: {card.get('model')} (version {card.get('version')})", "",
             f"- Architecture: `{card.get('arch')}`, weights: {card.get('weights')}",
             f"- Data: `{data.get('source')}` ({data.get('split')} split), {data.get('classes')} classes, images "
             + ", ".join(f"{k} {v}" for k, v in (data.get("images") or {}).items())
             + (f"; downloaded from `{data['origin']['source']}` (version: {data['origin'].get('version')}, "
                f"{data['origin'].get('downloaded')})" if data.get("origin") else ""), "",
             "## Intended use", "", card.get("intended_use", INTENDED_USE), ""]
    if "coverage" in card:
        lines += ["## Coverage", "", card["coverage"]["summary"], "",
                  "Group labels: " + ", ".join(card["coverage"].get("groups", [])), ""]
    if "test" in card:
        test = card["test"]
        worst = ", ".join(f"{r['class']} {r['f1']}" for r in test.get("worst_classes", []))
        lines += ["## Test metrics", "",
                  f"- top-1 {_pct(test.get('accuracy'))}, top-5 {_pct(test.get('top5_accuracy'))}, "
                  f"weighted F1 {test.get('f1_weighted')}, on {test.get('images')} images",
                  f"- Worst classes (F1): {worst}", ""]
    if "abstention" in card:
        ab = card["abstention"]
        lines += ["## Abstention (verdict)", "",
                  f"- Probabilities are softmax(logits / {ab['temperature']}); the verdict is `species` when the top-1 "
                  f"probability is at least {ab['species_threshold']}, else `unsure` (top_k are suggestions)."]
        if "fitted_on" in ab:
            lines.append(f"- {ab['fitted_on']['summary']}")
        elif "valid" in ab:
            lines.append(f"- Validation: {_pct(ab['valid']['coverage'])} answered `species`, "
                         f"{_pct(ab['valid']['precision'])} of them right.")
        if "other_bird" in ab:
            other = ab["other_bird"]
            lines.append(f"- Species it was not trained on: an \"other bird\" class learnt from {other['photos']} "
                         f"photos of other species holds a photo back (`unsure`) when it wins or its probability is "
                         f"above {other['threshold']}, which {_pct(other['pass_rate'])} of the known species' "
                         "photos stay under.")
        if "measured" in ab:
            lines.append(f"- Measured: {ab['measured']}")
        if "test" in ab:
            lines.append(f"- Test: {_pct(ab['test']['coverage'])} answered `species`, "
                         f"{_pct(ab['test']['precision'])} of them right.")
        if "reliability" in ab:
            lines.append(f"- Reliability on the test photos (confidence against accuracy): expected calibration "
                         f"error {_pct(ab['reliability']['ece'])}; figure `{ab['reliability']['figure']}`.")
        lines.append("")
    if "gate" in card:
        gate = card["gate"]
        lines += ["## Bird gate", "", f"- {gate['kind']}.",
                  f"- `not_a_bird` under P(bird) {gate.get('bird_threshold')}; "
                  + (f"validation birds passing: {_pct(gate['valid_bird_pass'])}." if "valid_bird_pass" in gate
                     else gate.get("measured", "")), ""]
    if "int8" in card:
        lines += ["## INT8", "", "- " + ", ".join(f"{k}: {v}" for k, v in card["int8"].items()), ""]
    lines += ["## Limits", ""] + [f"- {limit}" for limit in card.get("limits", LIMITS)]
    return "\n".join(lines) + "\n"


def write_card(folder: str | os.PathLike, card: dict[str, Any], name: str = "MODEL_CARD.md") -> Path:
    """Write the card as markdown into `folder`."""
    path = Path(folder) / name
    path.write_text(render_card(card))
    return path
