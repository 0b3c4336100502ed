"""The `birdclf` command line: predict, serve, package for Azure, the demo, and the training workflow."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from . import __version__
from .console import print_json
from .constants import DEFAULT_APP_PORT, DEFAULT_FUNCTION_PORT, DEFAULT_HOST, DEFAULT_TOP_K
from .errors import BirdclfError

__all__ = ["main", "build_parser", "print_json"]

# A missing module -> the extra that installs it (a command run without its extra says which one to install).
_EXTRAS = {**dict.fromkeys(("torch", "torchvision", "fastai", "timm", "onnx", "onnxscript", "sklearn", "matplotlib",
                            "pandas", "kaggle"), "train"),
           **dict.fromkeys(("onnxruntime", "fastapi", "starlette", "uvicorn", "h11", "multipart", "python_multipart",
                            "anyio", "pydantic", "azure"), "serve"),
           **dict.fromkeys(("voila", "ipywidgets", "ipykernel", "jupyter_server"), "app")}


def _predict(args: argparse.Namespace) -> int:
    from .serving.predictor import Predictor

    predictor = Predictor(args.model, threads=args.threads)
    rows, failed = [], 0
    for image in args.images:
        try:
            rows.append((image, predictor.predict(image, top_k=args.top_k)))
            if args.explain:
                print(f"heat map: {predictor.explain(image, args.explain)}", file=sys.stderr)
        except BirdclfError as exc:
            failed += 1
            print(f"error: {image}: {exc}", file=sys.stderr)
    if args.json:
        print_json([{"image": image, **p.to_dict()} for image, p in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["image", "rank", "label", "probability", "bird_probability", "is_bird", "verdict",
                         "box_x", "box_y", "box_width", "box_height", "birds"])
        for image, p in rows:
            box = list(p.box) if p.box else ["", "", "", ""]
            for rank, item in enumerate(p.top_k, 1):
                writer.writerow([image, rank, item["label"], f"{item['probability']:.6f}",
                                 p.bird_probability, p.is_bird, p.verdict, *box, "" if p.birds is None else p.birds])
    else:
        for image, p in rows:
            print(image)
            if p.verdict == "not_a_bird":
                print(f"  this may not be a bird (bird probability {p.bird_probability:.1%}); best guesses:")
            elif p.verdict == "unsure":
                print("  not sure which species; it could be one of these:")
            for item in p.top_k:
                print(f"  {item['probability']:7.2%}  {item['label']}")
            if p.box:
                more = f" ({p.birds} bird-like places; this is the most bird-like)" if (p.birds or 0) > 1 else ""
                print(f"  bird at x={p.box[0]} y={p.box[1]}, {p.box[2]}x{p.box[3]} px{more}")
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> int:
    from .serving.server import serve

    serve(args.host, args.port, args.model)
    return 0


def _package(args: argparse.Namespace) -> int:
    from .serving.packaging import package_function

    report = package_function(args.model, args.dest, force=args.force, build=args.build)
    print_json(report)
    if report["kept"]:
        print(f"note: kept your {', '.join(report['kept'])} (different from this version's); pass --force to "
              "replace them (the old ones are kept as .bak)", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, args.host, args.function_port, args.app_port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand; each sets its handler with set_defaults."""
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
    p.add_argument("--explain", metavar="DIR", type=Path,
                   help="also write DIR/<image>.explain.png: where the model sees a bird, over the photo, and the box")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("serve", help="run the prediction API (the app Azure runs) under uvicorn")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_FUNCTION_PORT)
    p.add_argument("--model", help="ONNX model (default: $BIRDCLF_MODEL, else the starter model)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("package-function", help="write a publishable Azure Functions folder with a model")
    p.add_argument("model")
    p.add_argument("--dest", help="function folder, created if missing (default: ./azure_function)")
    p.add_argument("--force", action="store_true", help="replace a different model or files (old ones kept as .bak)")
    p.add_argument("--build", action="store_true",
                   help="also install trimmed dependencies into .python_packages (publish with --no-build)")
    p.set_defaults(handler=_package)

    p = sub.add_parser("demo", help="start the local API and the Voila app; Ctrl-C stops both")
    p.add_argument("--model")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--function-port", type=int, default=DEFAULT_FUNCTION_PORT)
    p.add_argument("--app-port", type=int, default=DEFAULT_APP_PORT)
    p.set_defaults(handler=_demo)

    from .training.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors print one clear line and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BirdclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra:
            print(f"error: `birdclf {args.command}` needs the {extra} extra ({exc.name} is not installed): "
                  f"pip install 'birdclf[{extra}]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
