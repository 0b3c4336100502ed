"""Bird gate, calibrated verdicts, open set and INT8 on real photos (../shared/data), for the starter and for
models trained on cub50 (head only, fine-tuned, and 40 of the 50 species for the open-set check).

Run: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
     .venv/bin/python -m bench.gate [--epochs 3] [--skip-finetune] [--out DIR]
Every model is measured as served (ONNX through the Predictor). Prints tables, writes bench/results/gate.json.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SHARED, machine, print_table, write_json
from birdclf.data.layout import read_dataset
from birdclf.data.split import make_splits
from birdclf.serving.predictor import Predictor
from birdclf.training.calibration import abstention_stats, calibrate, softmax

# Photos whose species is one of the starter's 59 classes (cub50 and kaggle525 folder names -> starter label).
STARTER_LABELS = {
    "American_Goldfinch": "Goldfinch", "European_Goldfinch": "Goldfinch", "Indigo_Bunting": "Indigo bunting",
    "Mallard": "Mallard", "Black_footed_Albatross": "Albatross", "Ruby_throated_Hummingbird": "Hummingbird",
    "AMERICAN BITTERN": "Bittern", "GREATER PRAIRIE CHICKEN": "Greater prairie chicken",
    "OYSTER CATCHER": "Oystercatcher", "PURPLE SWAMPHEN": "Purple swamphen", "ROSEATE SPOONBILL": "Spoonbill",
    "RUBY THROATED HUMMINGBIRD": "Hummingbird", "AMETHYST WOODSTAR": "Hummingbird", "HORNED SUNGEM": "Hummingbird",
    "TOUCHAN": "Toucan", "DALMATIAN PELICAN": "Pelican", "MALABAR HORNBILL": "Hornbill", "SNOW PARTRIDGE": "Partridge",
}


def outputs(predictor: Predictor, paths: list[Path], bs: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and P(bird) of images, as served (decode, transform, onnxruntime)."""
    logits, birds = [], []
    for start in range(0, len(paths), bs):
        batch = np.stack([predictor.preprocess(p) for p in paths[start:start + bs]])
        out = predictor.session.run(["logits", "bird_probability"], {"input": batch})
        logits.append(out[0])
        birds.append(out[1].reshape(-1))
    return np.concatenate(logits).astype(np.float64), np.concatenate(birds).astype(np.float64)


def nonbird_sets() -> dict[str, list[Path]]:
    """Non-bird photos: ImageNet samples (optimistic: the backbone may have seen them), others, and bird-like."""
    out: dict[str, list[Path]] = {"imagenet": [], "other": [], "bird_like": []}
    for path in sorted((SHARED / "nonbird").rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        key = "bird_like" if path.parent.name == "bird_like" else ("imagenet" if path.name.startswith("imnet_")
                                                                    else "other")
        out[key].append(path)
    return out


def bird_photos() -> list[tuple[Path, str]]:
    """Every real bird photo: cub50 train and test, kaggle525-sample valid."""
    items = [(p, s.name) for split in ("train", "test") for s in sorted((SHARED / "cub50" / split).iterdir())
             for p in sorted(s.glob("*.jpg"))]
    items += [(p, s.name) for s in sorted((SHARED / "kaggle525-sample" / "valid").iterdir()) if s.is_dir()
              for p in sorted(s.glob("*.jpg"))]
    return items


def gate_rows(name: str, predictor: Predictor, nonbird: dict[str, list[Path]], birds: list[Path]) -> dict:
    """Share of non-bird photos passing as birds (by source) and of bird photos passing."""
    row = {"model": name, "threshold": predictor.bird_threshold}
    for key, paths in nonbird.items():
        _, bird = outputs(predictor, paths)
        row[f"{key}_pass"] = float((bird >= predictor.bird_threshold).mean())
        row[f"{key}_n"] = len(paths)
    _, bird = outputs(predictor, birds)
    row["birds_pass"], row["birds_n"] = float((bird >= predictor.bird_threshold).mean()), len(birds)
    return row


def top1_at_coverage(probs: np.ndarray, targets: np.ndarray, coverage: float = 0.9) -> float:
    order = np.argsort(-probs.max(1))[: max(1, int(round(coverage * len(targets))))]
    return float((probs[order].argmax(1) == targets[order]).mean())


def starter_calibration(predictor: Predictor) -> dict:
    """Fit the starter's temperature and species threshold on half of the photos of its own classes; report on the
    other half, and how it answers birds of species it does not know."""
    labels = {label: i for i, label in enumerate(predictor.labels)}
    covered, unknown = [], []
    for path, folder in bird_photos():
        target = STARTER_LABELS.get(folder, "")
        if target:
            covered.append((path, labels[target]))
        elif (SHARED / "cub50" / "test" / folder).is_dir():
            unknown.append(path)
    half = [int(hashlib.md5(str(p).encode()).hexdigest(), 16) % 2 for p, _ in covered]
    fit = [c for c, h in zip(covered, half) if h == 0]
    held = [c for c, h in zip(covered, half) if h == 1]
    logits, bird = outputs(predictor, [p for p, _ in fit])
    cal = calibrate(logits, np.array([t for _, t in fit]), bird)
    cal.bird_threshold = predictor.bird_threshold  # the starter keeps its measured gate threshold
    held_logits, held_bird = outputs(predictor, [p for p, _ in held])
    held_targets = np.array([t for _, t in held])
    unknown_logits, unknown_bird = outputs(predictor, unknown)
    return {"calibration": cal.to_dict(), "fit_images": len(fit),
            "held_out": abstention_stats(held_logits, held_targets, cal, held_bird),
            "held_out_top1": float((held_logits.argmax(1) == held_targets).mean()),
            "unknown_species": abstention_stats(unknown_logits, np.full(len(unknown), -1), cal, unknown_bird)}


def trained_rows(name: str, predictor: Predictor, test: list[tuple[Path, str]]) -> dict:
    """Verdicts of a cub50 model on cub50 test: coverage and precision of 'species', top-1 at 90% coverage."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    targets = np.array([index[label] for _, label in test])
    logits, bird = outputs(predictor, [p for p, _ in test])
    cal = {"temperature": predictor.config.temperature, "species_threshold": predictor.config.species_threshold,
           "bird_threshold": predictor.bird_threshold}
    probs = softmax(logits, predictor.config.temperature)
    return {"model": name, "top1": float((probs.argmax(1) == targets).mean()),
            "top1_at_90_coverage": top1_at_coverage(probs, targets), **abstention_stats(logits, targets, cal, bird),
            "temperature": cal["temperature"], "species_threshold": cal["species_threshold"]}


def open_set_scores(learn, splits: dict, known: list[tuple[Path, str]], unknown: list[tuple[Path, str]],
                    cache: Path) -> list[dict]:
    """Which 'is this one of the known species' score separates photos of unseen species best? For the abstention
    rule, measured on the 40-species model's features: its calibrated top-1 probability (what birdclf uses), the
    max logit, the energy, and distances in feature space (nearest training photo, class prototypes, Mahalanobis
    with a shared covariance) on the head's penultimate features. AUROC known vs unknown, and the share of unknown
    photos held back at the threshold that keeps 90% of the correctly named validation photos."""
    import torch
    from sklearn.metrics import roc_auc_score

    from birdclf.training.features import extract_features

    head = learn.model[1][2:].eval()
    index = {label: i for i, label in enumerate(learn.dls.vocab)}

    def outputs_of(items: list[tuple[Path, str]]) -> tuple[np.ndarray, np.ndarray]:
        feats = torch.from_numpy(extract_features(learn, [p for p, _ in items], cache_dir=cache))
        with torch.no_grad():
            pen = head[:-1](feats)
            return head[-1](pen).double().numpy(), pen.double().numpy()

    (_, pt), (lv, pv), (lk, pk), (lu, pu) = (outputs_of(splits["train"]), outputs_of(splits["valid"]),
                                             outputs_of(known), outputs_of(unknown))
    yt, yv = (np.array([index[label] for _, label in items]) for items in (splits["train"], splits["valid"]))
    temperature = learn.birdclf_config.temperature
    means = np.stack([pt[yt == c].mean(0) for c in range(len(index))])
    centred = pt - means[yt]
    cov = centred.T @ centred / len(centred)
    precision = np.linalg.inv(0.5 * cov + 0.5 * np.eye(len(cov)) * np.trace(cov) / len(cov))  # shrunk
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    bank, protos = unit(pt), unit(means)

    def score(kind: str, logits: np.ndarray, pen: np.ndarray) -> np.ndarray:
        if kind == "calibrated top-1 probability (used)":
            return softmax(logits, temperature).max(1)
        if kind == "max logit":
            return logits.max(1)
        if kind == "energy":
            z = logits / temperature
            return temperature * (z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)))
        if kind == "nearest training photo (cosine)":
            return (unit(pen) @ bank.T).max(1)
        if kind == "nearest class prototype (cosine)":
            return (unit(pen) @ protos.T).max(1)
        diff = pen[:, None, :] - means[None]
        return -np.einsum("ncd,de,nce->nc", diff, precision, diff).min(1)  # Mahalanobis

    rows = []
    correct_valid = lv.argmax(1) == yv
    for kind in ("calibrated top-1 probability (used)", "max logit", "energy", "nearest training photo (cosine)",
                 "nearest class prototype (cosine)", "Mahalanobis (shared covariance)"):
        sk, su, sv = score(kind, lk, pk), score(kind, lu, pu), score(kind, lv, pv)
        threshold = np.quantile(sv[correct_valid], 0.10)
        auroc = roc_auc_score(np.r_[np.ones(len(sk)), np.zeros(len(su))], np.r_[sk, su])
        rows.append({"score": kind, "auroc": float(auroc), "known_kept": float((sk >= threshold).mean()),
                     "unknown_held_back": float((su < threshold).mean())})
    return rows


def noise_floor(model: Path, evaluation: np.ndarray, grey_levels: float = 1.0) -> float:
    """fp32 top-1 agreement with itself under +-`grey_levels` of uniform input noise: how fragile the model's own
    top-1 is (an INT8 copy cannot agree more than the noise it adds allows)."""
    predictor = Predictor(model, threads=2)
    std = np.asarray(predictor.config.std, np.float32).reshape(1, 3, 1, 1)
    noise = np.random.default_rng(0).uniform(-grey_levels, grey_levels, evaluation.shape).astype(np.float32)
    agree = []
    for start in range(0, len(evaluation), 64):
        batch = evaluation[start:start + 64]
        clean = predictor.session.run(["logits"], {"input": batch})[0]
        noisy = predictor.session.run(["logits"], {"input": batch + noise[start:start + 64] / 255.0 / std})[0]
        agree.append(clean.argmax(1) == noisy.argmax(1))
    return float(np.concatenate(agree).mean())


def int8_row(name: str, model: Path, calibration: list[Path], held: list[tuple[Path, str]]) -> dict:
    """birdclf's INT8 recipe: agreement with fp32 (INT8 alone and as served, with the fp32 second look) and accuracy
    on held-out photos, size and the INT8 branch's batch-32 speed (bench.int8 times it as served)."""
    from birdclf.training.export import quantize_int8

    predictor = Predictor(model, threads=2)
    index = {label: i for i, label in enumerate(predictor.labels)}
    labels = np.array([index.get(label, -1) for _, label in held])
    evaluation = np.stack([predictor.preprocess(p) for p, _ in held])
    report = quantize_int8(model, model.with_name(model.stem + "-int8.onnx"),
                           np.stack([predictor.preprocess(p) for p in calibration]), evaluation,
                           labels if (labels >= 0).all() else None)
    speeds = {}
    for kind, path in (("fp32", model), ("int8", Path(report.path))):
        session = Predictor(path, threads=2).session
        batch = evaluation[:32]
        session.run(None, {"input": batch})
        times = []
        for _ in range(7):
            t = time.perf_counter()
            session.run(None, {"input": batch})
            times.append(time.perf_counter() - t)
        speeds[kind] = 32 / float(np.median(times))
    return {"model": name, "agreement": report.top1_agreement, "images": report.num_images,
            "fp32_noise_agreement": noise_floor(model, evaluation),
            "fp32_acc": report.fp32_accuracy, "int8_acc": report.int8_accuracy,
            "is_bird_agree": report.is_bird_agreement, "served_agreement": report.served_agreement,
            "rechecked": report.rechecked, "int8_species_kept": report.int8_species_kept,
            "species_kept": report.species_kept,
            "fp32_img_s": speeds["fp32"], "int8_img_s": speeds["int8"], "speedup": speeds["int8"] / speeds["fp32"],
            "int8_mb": report.size_bytes / 1e6}


def known_run_splits(result) -> dict:
    """The train/valid split a run was trained on (from its Learner's DataLoaders)."""
    dls = result.learn.dls
    return {name: [(Path(p), dls.vocab[int(y)]) for p, y in zip(ds.items, ds.tls[1])]
            for name, ds in (("train", dls.train_ds), ("valid", dls.valid_ds))}


def _open_set(base: dict, test: list, head50: Predictor, out: Path) -> dict:
    """Trained on 40 of cub50's species, shown the other 10: how many are held back, and the open-set scores."""
    from birdclf.training.trainer import TrainConfig, train

    known_run = train(TrainConfig(**base, epochs=0, max_classes=40, name="open40"))
    open_model = Predictor(known_run.run_dir / "model.onnx")
    known = set(open_model.labels)
    unknown_items = [(p, label) for p, label in test if label not in known]
    known_items = [(p, label) for p, label in test if label in known]
    logits, bird = outputs(open_model, [p for p, _ in unknown_items])
    cal = {"temperature": open_model.config.temperature, "species_threshold": open_model.config.species_threshold,
           "bird_threshold": open_model.bird_threshold}
    open_set = abstention_stats(logits, np.full(len(unknown_items), -1), cal, bird)
    idx50 = {label: i for i, label in enumerate(head50.labels)}
    idx40 = {label: i for i, label in enumerate(open_model.labels)}
    l50, _ = outputs(head50, [p for p, _ in known_items])
    l40, _ = outputs(open_model, [p for p, _ in known_items])
    scores = open_set_scores(known_run.learn, known_run_splits(known_run), known_items, unknown_items,
                             out / "features")
    summary = {
        "unknown_species": len({label for _, label in unknown_items}), "unknown_images": len(unknown_items),
        "answered_unsure_or_not_a_bird": round(1 - open_set["coverage"], 4), **open_set,
        "known_top1_40_class_model": float((l40.argmax(1) == np.array([idx40[lab] for _, lab in known_items])).mean()),
        "known_top1_50_class_model": float((l50.argmax(1) == np.array([idx50[lab] for _, lab in known_items])).mean())}
    return {"open_set": summary, "open_set_scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs for the fine-tuned model")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--out", help="folder for the trained runs (default: a temp folder)")
    args = parser.parse_args()
    if not (SHARED / "cub50").is_dir():
        raise SystemExit("this benchmark needs ../shared/data")
    from birdclf.training.starter import build_starter
    from birdclf.training.trainer import TrainConfig, train

    out = Path(args.out or tempfile.mkdtemp(prefix="birdclf-gate-"))
    record: dict = {"machine": machine()}
    nonbird = nonbird_sets()
    birds = [p for p, _ in bird_photos()]
    cub = make_splits(read_dataset(SHARED / "cub50"))
    test = cub["test"]

    starter_path = build_starter(out / "starter.onnx", force=True)[0]
    starter = Predictor(starter_path)
    record["starter_calibration"] = starter_calibration(starter)
    print("starter calibration:", record["starter_calibration"])
    gates = [gate_rows("starter", starter, nonbird, birds)]

    base = dict(data=str(SHARED / "cub50"), arch="tf_efficientnet_lite0", bs=32, fast_head=True, head_epochs=40,
                feature_cache=str(out / "features"), out=str(out), evaluate=False, seed=42)
    models = {"cub50 head-only": train(TrainConfig(**base, epochs=0, name="head")).run_dir / "model.onnx"}
    if not args.skip_finetune:
        models["cub50 fine-tuned"] = train(TrainConfig(**base, epochs=args.epochs, lr=2e-3, lr_mult=10, patience=None,
                                                       name="finetune")).run_dir / "model.onnx"
    verdicts = []
    for name, model in models.items():
        predictor = Predictor(model)
        gates.append(gate_rows(name, predictor, nonbird, birds))
        verdicts.append(trained_rows(name, predictor, test))

    record.update(_open_set(base, test, Predictor(models["cub50 head-only"]), out))

    calibration_paths = [p for p, _ in cub["train"]][::4][:300]
    kaggle = [(p, s.name) for s in sorted((SHARED / "kaggle525-sample" / "valid").iterdir()) if s.is_dir()
              for p in sorted(s.glob("*.jpg"))]
    int8 = [int8_row("starter (kaggle525)", starter_path, calibration_paths, kaggle),
            int8_row("starter (cub50 test)", starter_path, calibration_paths, test)]
    int8 += [int8_row(f"{name} (cub50 test)", model, calibration_paths, test) for name, model in models.items()]

    print("\nGate: share passing as a bird")
    print_table(gates, ["model", "threshold", "imagenet_pass", "imagenet_n", "other_pass", "other_n",
                        "bird_like_pass", "bird_like_n", "birds_pass", "birds_n"])
    print("\nVerdicts on cub50 test (species = answered confidently)")
    print_table(verdicts, ["model", "top1", "top1_at_90_coverage", "coverage", "precision", "unsure", "not_a_bird",
                           "temperature", "species_threshold"])
    print("\nOpen set: trained on 40 cub50 species, shown the other 10:", record["open_set"])
    print("\nOpen-set scores on the 40-species model (threshold keeping 90% of correct validation answers)")
    print_table(record["open_set_scores"], ["score", "auroc", "known_kept", "unknown_held_back"])
    print("\nINT8 (calibrated on 300 cub50 train photos; measured on held-out photos)")
    print_table(int8, ["model", "agreement", "fp32_noise_agreement", "images", "fp32_acc", "int8_acc",
                       "is_bird_agree", "served_agreement", "rechecked", "int8_species_kept", "species_kept",
                       "fp32_img_s", "int8_img_s", "speedup", "int8_mb"])
    record.update({"gate": gates, "verdicts": verdicts, "int8": int8, "runs": str(out)})
    print(f"wrote {write_json('gate', record)}")


if __name__ == "__main__":
    main()
