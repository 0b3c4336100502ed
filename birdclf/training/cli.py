"""`birdclf data ...`, `train`, `compare`, `evaluate`, `export`, `starter`, `quantize` (the train extra)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..console import echo, print_json
from ..errors import BirdclfError, DataError

__all__ = ["add_commands"]


def _absolute(path: Any) -> Any:
    """A path the user gave, made absolute at once (relative to where the command was started); None stays."""
    import os

    return os.path.abspath(os.path.expanduser(path)) if path else path


def _absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Every path argument of the training and data commands, absolute before any work starts."""
    for name in ("data", "out", "dest", "report", "quarantine", "run", "feature_cache", "model", "calibration"):
        if isinstance(getattr(args, name, None), str) and not str(getattr(args, name)).startswith("kaggle"):
            setattr(args, name, _absolute(getattr(args, name)))
    return args


def _data_download(args: argparse.Namespace) -> int:
    from ..data.download import get_data

    echo(get_data(args.source, args.dest, sha256=args.sha256))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset
    from ..data.layout import read_dataset

    report = check_dataset(read_dataset(args.data), args.quarantine, args.max_distance)
    data = Path(args.data)
    folder = report.write(args.report or data.parent / f"{data.name or 'data'}-check")
    print_json(report.summary() | {"report": str(folder)})
    return 0


def _splits(args: argparse.Namespace) -> Any:
    from ..data.layout import read_dataset
    from ..data.split import make_splits

    return make_splits(read_dataset(args.data), args.strategy, args.valid_pct, args.seed)


def _data_split(args: argparse.Namespace) -> int:
    from ..data.split import materialize

    echo(materialize(_splits(args), args.out, copy=args.copy))
    return 0


def _data_mini(args: argparse.Namespace) -> int:
    from ..data.split import materialize, mini_subset

    echo(materialize(mini_subset(_splits(args), args.per_class, args.seed, args.max_classes), args.out,
                      copy=args.copy))
    return 0


def _data_stats(args: argparse.Namespace) -> int:
    from ..data.split import dataset_stats

    stats = dataset_stats(_splits(args))
    if not args.per_class:
        stats.pop("per_class")
    print_json(stats)
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from .trainer import TrainConfig, recipe

    names = {f.name for f in fields(TrainConfig)} - {"data"}
    return recipe(args.data, **{k: v for k, v in vars(args).items() if k in names})  # flags given override it


def _train(args: argparse.Namespace) -> int:
    from .trainer import train

    result = train(_train_config(args))
    if result is not None:  # None: a distributed run's other processes (the main one prints the run)
        print_json({"run_dir": result.run_dir, "metrics": result.metrics, "timings": result.timings})
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .runs import open_run

    run = open_run(args.run)
    data = args.data or run.data
    splits = run.splits(args.data)  # the run's own split strategy, seed and subset
    if not splits.get(args.split):
        raise DataError(f"{data} has no {args.split!r} split")
    out = Path(args.run) / f"evaluation-{args.split}{'-onnx' if args.onnx else ''}"
    if args.onnx:
        from .evaluate import evaluate_onnx

        metrics = evaluate_onnx(Path(args.run) / "model.onnx", splits[args.split], out)
    else:
        from .evaluate import evaluate_learner
        from .runs import load_run

        metrics = evaluate_learner(load_run(args.run), splits[args.split], out)
    metrics.pop("top_losses", None)
    print_json(metrics | {"saved": str(out)})
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_learner
    from .runs import load_run

    if not (Path(args.run) / "export.pkl").is_file() and (Path(args.run) / "config.json").is_file():
        from .trainer import TrainingRun  # a run that stopped after training: finish it from its weights

        result = TrainingRun.resume(args.run).finish()
        if not args.out:
            print_json({"run_dir": result.run_dir, "metrics": result.metrics} | _read_onnx_report(result.run_dir))
            return 0
    out = Path(args.out or Path(args.run) / "model.onnx")
    if out.exists() and not args.force:
        raise BirdclfError(f"{out} exists; pass --force to replace it")
    learn = load_run(args.run)
    report = export_learner(learn, out, model_name=f"birdclf-{learn.birdclf_config.arch}", version=Path(args.run).name)
    print_json(report.to_dict())
    return 0


def _read_onnx_report(run_dir: Path) -> dict[str, Any]:
    import json

    return {"onnx": json.loads((run_dir / "config.json").read_text()).get("onnx")}


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_architectures

    rows = compare_architectures(_train_config(args), [a.strip() for a in args.archs.split(",") if a.strip()])
    echo(f"{'arch':28s} {'accuracy':>9s} {'top5':>6s} {'seconds':>8s} {'params M':>9s} {'onnx MB':>8s}")
    for r in rows:
        if "error" in r:
            echo(f"{r['arch']:28s} failed: {r['error']}")
        else:
            echo(f"{r['arch']:28s} {r['accuracy']:9.3f} {r['top5']:6.3f} {r['seconds']:8.1f} {r['params_m']:9.2f} "
                  f"{r['onnx_mb']!s:>8s}")
    return 0


def _starter(args: argparse.Namespace) -> int:
    from .starter import build_starter

    path, report = build_starter(args.out, force=args.force)
    if report is None:
        echo(f"starter model already at {path} (use --force to rebuild)")
    else:
        echo(f"built {path}: {report.size_bytes / 1e6:.1f} MB, torch vs onnxruntime max abs diff "
              f"{report.max_abs_diff:.2e}, top-1 agreement {report.top1_agreement:.0%}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from .export import quantize_images

    report = quantize_images(args.model, args.out, args.calibration, args.limit, args.evaluate,
                             second_look=not args.no_second_look)
    where = "held-out" if report.held_out else "calibration"
    accuracy = (f"; accuracy on labels fp32 {report.fp32_accuracy:.1%}, int8 {report.int8_accuracy:.1%}"
                if report.int8_accuracy is not None else "")
    echo(f"int8 model {report.path}: {report.size_bytes / 1e6:.1f} MB (fp32 {report.fp32_size_bytes / 1e6:.1f} MB), "
          f"top-1 agreement with fp32 {report.top1_agreement:.1%} on {report.num_images} {where} images{accuracy}")
    if report.second_look:
        kept = "" if report.species_kept is None else f", {report.species_kept:.1%} of fp32's species answers kept"
        echo(f"as served, with the fp32 second look on {report.rechecked:.1%} of the images (the file holds both "
             f"models): top-1 agreement {report.served_agreement:.1%}{kept}")
    return 0


def _paths_absolute(handler: Any) -> Any:
    """The handler, given its path arguments made absolute first; what fastai prints while it works (progress
    bars) goes to stderr, so stdout holds only the command's result (JSON for train, evaluate, export)."""
    def run(args: argparse.Namespace) -> int:
        import contextlib
        import sys

        out = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            import birdclf.console as console

            console.OUT = out
            try:
                return handler(_absolute_paths(args))
            finally:
                console.OUT = None

    return run


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="data folder (Kaggle layout or one folder per class)")
    p.add_argument("--strategy", choices=["given", "random"], default="given")
    p.add_argument("--valid-pct", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help; every flag defaults to None so the recipe fills the rest."""
    import typing

    from .trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        shown = "" if f.default is None or "default" in meta["help"] else f" (default: {f.default})"
        if f.name == "data":
            p.add_argument(flag, required=True, help=meta["help"])
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"] + shown)
        else:
            p.add_argument(flag, type=kind, choices=meta.get("choices"), default=None, help=meta["help"] + shown)
        for alias, value in meta.get("aliases", {}).items():
            p.add_argument(alias, dest=f.name, action="store_const", const=value, default=None,
                           help=f"the same as {flag if value else '--no-' + flag[2:]}")


def add_commands(sub: Any) -> None:
    """Register the training subcommands (each with its handler) on the main parser."""
    p = sub.add_parser("starter", help="build the offline starter model (needs the train extra)")
    p.add_argument("--out", help="where to write it (default: $BIRDCLF_HOME/starter.onnx)")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.set_defaults(handler=_paths_absolute(_starter))
    p = sub.add_parser("quantize", help="INT8 copy of an ONNX model, calibrated on images")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--calibration", required=True, help="folder of images (searched recursively)")
    p.add_argument("--limit", type=int, default=300, help="images to calibrate on")
    p.add_argument("--evaluate", type=int, default=500, help="further images to measure agreement on")
    p.add_argument("--no-second-look", action="store_true",
                   help="INT8 alone (a smaller file): no fp32 second look at answers INT8's noise could change")
    p.set_defaults(handler=_paths_absolute(_quantize))

    data = sub.add_parser("data", help="download, check, split, subset and describe data sets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("download", help="'kaggle', an archive URL or a local archive -> extracted data root")
    p.add_argument("source")
    p.add_argument("--dest", default="data")
    p.add_argument("--sha256")
    p.set_defaults(handler=_paths_absolute(_data_download))
    p = dsub.add_parser("check", help="invalid files (quarantined), duplicates, leakage between splits")
    p.add_argument("data")
    p.add_argument("--quarantine", help="move unreadable files here (default: only report)")
    p.add_argument("--report", help="folder for the CSV reports")
    p.add_argument("--max-distance", type=int, default=3, help="near-duplicate dHash distance")
    p.set_defaults(handler=_paths_absolute(_data_check))
    for name, fn, help_text in (("split", _data_split, "write the chosen split as a new folder of links"),
                                ("mini", _data_mini, "a seeded N-per-class subset as a new folder of links")):
        p = dsub.add_parser(name, help=help_text)
        _add_split_args(p)
        p.add_argument("--out", required=True)
        p.add_argument("--copy", action="store_true", help="copy files instead of symlinking")
        if name == "mini":
            p.add_argument("--per-class", type=int, required=True)
            p.add_argument("--max-classes", type=int)
        p.set_defaults(handler=_paths_absolute(fn))
    p = dsub.add_parser("stats", help="class counts and image sizes")
    _add_split_args(p)
    p.add_argument("--per-class", action="store_true")
    p.set_defaults(handler=_paths_absolute(_data_stats))

    p = sub.add_parser("train", help="fine-tune a timm architecture with fastai; writes a run folder")
    _add_train_args(p)
    p.set_defaults(handler=_paths_absolute(_train))
    p = sub.add_parser("compare", help="train several architectures on the same data; print a table")
    _add_train_args(p)
    p.add_argument("--archs", required=True, help="comma-separated timm names")
    p.set_defaults(handler=_paths_absolute(_compare))
    p = sub.add_parser("evaluate", help="test-split metrics, per-class report, confusions, top losses")
    p.add_argument("run")
    p.add_argument("--data", help="data folder (default: the run's)")
    p.add_argument("--split", default="test")
    p.add_argument("--onnx", action="store_true", help="evaluate the exported model.onnx (what serves)")
    p.set_defaults(handler=_paths_absolute(_evaluate))
    p = sub.add_parser("export", help="(re-)export a run's Learner to verified ONNX")
    p.add_argument("run")
    p.add_argument("--out")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=_paths_absolute(_export))
