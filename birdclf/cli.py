"""The `birdclf` command line: predict, build the starter, serve, package, and the training workflow."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from typing import Any

from . import __version__
from .constants import DEFAULT_APP_PORT, DEFAULT_FUNCTION_PORT, DEFAULT_HOST, DEFAULT_TOP_K
from .errors import BirdclfError

__all__ = ["main", "build_parser"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        _COMMANDS[name] = fn
        return fn
    return register


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    from .inference import Predictor

    predictor = Predictor(args.model, threads=args.threads)
    rows, failed = [], 0
    for image in args.images:
        try:
            rows.append((image, predictor.predict(image, top_k=args.top_k)))
        except BirdclfError as exc:
            failed += 1
            print(f"error: {image}: {exc}", file=sys.stderr)
    if args.json:
        _print_json([{"image": image, **p.to_dict()} for image, p in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["image", "rank", "label", "probability", "bird_probability", "is_bird"])
        for image, p in rows:
            for rank, item in enumerate(p.top_k, 1):
                writer.writerow([image, rank, item["label"], f"{item['probability']:.6f}",
                                 p.bird_probability, p.is_bird])
    else:
        for image, p in rows:
            print(image)
            if p.is_bird is False:
                print(f"  this may not be a bird (bird probability {p.bird_probability:.1%}); best guesses:")
            for item in p.top_k:
                print(f"  {item['probability']:7.2%}  {item['label']}")
    return 1 if failed else 0


@_command("starter")
def _starter(args: argparse.Namespace) -> int:
    from .starter import build_starter

    path, report = build_starter(args.out, force=args.force)
    if report is None:
        print(f"starter model already at {path} (use --force to rebuild)")
    else:
        print(f"built {path}: {report.size_bytes / 1e6:.1f} MB, torch vs onnxruntime max abs diff "
              f"{report.max_abs_diff:.2e}, top-1 agreement {report.top1_agreement:.0%}")
    return 0


@_command("quantize")
def _quantize(args: argparse.Namespace) -> int:
    import numpy as np

    from .data.layout import list_images
    from .export import quantize_int8
    from .inference import Predictor

    predictor = Predictor(args.model)
    files = list_images(args.calibration)[: args.limit]
    if not files:
        raise BirdclfError(f"no images under {args.calibration} to calibrate with")
    arrays = np.stack([predictor.preprocess(f) for f in files])
    report = quantize_int8(args.model, args.out, arrays)
    print(f"int8 model {report.path}: {report.size_bytes / 1e6:.1f} MB (fp32 {report.fp32_size_bytes / 1e6:.1f} MB), "
          f"top-1 agreement with fp32 {report.top1_agreement:.1%} on {report.num_images} images")
    return 0


@_command("serve")
def _serve(args: argparse.Namespace) -> int:
    from .localserver import serve

    serve(args.host, args.port, args.model)
    return 0


@_command("package-function")
def _package(args: argparse.Namespace) -> int:
    from .deploy import package_function

    _print_json(package_function(args.model, args.dest, force=args.force))
    return 0


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, args.host, args.function_port, args.app_port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="birdclf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"birdclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="top-k species for images")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", help="ONNX model (default: $BIRDCLF_MODEL, else the starter model)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--threads", type=int)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    p = sub.add_parser("starter", help="build the offline starter model (needs the train extra)")
    p.add_argument("--out", help="where to write it (default: $BIRDCLF_HOME/starter.onnx)")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")

    p = sub.add_parser("quantize", help="INT8 copy of an ONNX model, calibrated on images")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--calibration", required=True, help="folder of images (searched recursively)")
    p.add_argument("--limit", type=int, default=200)

    p = sub.add_parser("serve", help="run the Azure Function's routes locally over HTTP")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_FUNCTION_PORT)
    p.add_argument("--model")

    p = sub.add_parser("package-function", help="copy a model and birdclf into azure_function/ for publishing")
    p.add_argument("model")
    p.add_argument("--dest", help="function folder (default: the repo's azure_function/)")
    p.add_argument("--force", action="store_true", help="replace a different packaged model (kept as .bak)")

    p = sub.add_parser("demo", help="start the local function and the Voila app; Ctrl-C stops both")
    p.add_argument("--model")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--function-port", type=int, default=DEFAULT_FUNCTION_PORT)
    p.add_argument("--app-port", type=int, default=DEFAULT_APP_PORT)

    _add_training_commands(sub)
    return parser


def _add_training_commands(sub: Any) -> None:
    """Subcommands of the training workflow (need the train extra)."""
    try:
        from .training_cli import add_commands
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    _COMMANDS.update(add_commands(sub))


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors print one clear line and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or _COMMANDS[args.command]
        return handler(args)
    except BirdclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
