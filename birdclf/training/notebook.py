"""Helpers for the notebooks: environment set-up (Colab, GPU, Drive) and the smoke mode's tiny data and run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["DRIVE_WORKDIR", "setup", "unfinished_runs", "smoke_data", "smoke_config", "smoke_run", "show_images"]

DRIVE_WORKDIR = "/content/drive/MyDrive/birdclf"  # runs on Colab, kept across sessions


def setup(mount_drive: bool | None = None, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Detect Colab and the GPU, mount Google Drive (on Colab by default: `mount_drive=None`) and pick the working
    folder for runs (`workdir`, on Drive when mounted, so they outlive a disconnect) and for data (`datadir`: on
    Colab always the local disk, since tens of thousands of small files on Drive are slow and Drive has no
    symlinks). If Drive cannot be mounted, runs stay on the local disk and it says so."""
    import torch

    colab = "google.colab" in sys.modules
    if colab and mount_drive is not False:
        try:
            from google.colab import drive  # type: ignore[import-not-found]

            drive.mount("/content/drive")
            workdir = workdir or DRIVE_WORKDIR
        except Exception as exc:  # refused in the pop-up, or no Drive for this account
            print(f"Google Drive was not mounted ({type(exc).__name__}: {exc}): runs stay in /content/birdclf and "
                  "are lost when the Colab session ends; set MOUNT_DRIVE = True and allow access to keep them")
    workdir = Path(workdir or ("/content/birdclf" if colab else "."))
    datadir = Path("/content/birdclf-data") if colab else workdir
    for folder in (workdir, datadir):
        folder.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    info = {"colab": colab, "gpu": gpu, "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "workdir": workdir.resolve(), "datadir": datadir.resolve()}
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    for run in unfinished_runs(workdir / "runs"):
        print(f"an earlier run stopped before it finished: {run}; finish it with `birdclf export {run}` (or "
              f"TrainingRun.resume('{run}').finish()) instead of training again")
    return info


def unfinished_runs(runs: str | os.PathLike) -> list[Path]:
    """Run folders with saved weights but no export (a disconnect or an error after training)."""
    runs = Path(runs)
    if not runs.is_dir():
        return []
    return sorted(run for run in runs.iterdir() if (run / "config.json").is_file()
                  and not (run / "export.pkl").is_file() and any((run / "models").glob("*.pth")))


def smoke_data(workdir: str | os.PathLike) -> Path:
    """The tiny generated data set smoke runs use (made once)."""
    from ..data.synthetic import make_synthetic_birds

    root = Path(workdir) / "smoke-data"
    return root if (root / "train").is_dir() else make_synthetic_birds(root)


def smoke_config(workdir: str | os.PathLike, **overrides: Any) -> Any:
    """A TrainConfig that trains in seconds on CPU: tiny images, cached-feature head, one short fine-tune epoch."""
    from .trainer import TrainConfig

    base = dict(data=str(smoke_data(workdir)), arch="tf_efficientnet_lite0", epochs=1, freeze_epochs=1, bs=8,
                input_size=64, fast_head=True, head_epochs=4, lr_find_iters=20, num_workers=0,
                out=str(Path(workdir) / "runs"))
    return TrainConfig(**(base | overrides))


def smoke_run(workdir: str | os.PathLike, name: str, **overrides: Any) -> Path:
    """The run folder of a smoke run: trained the first time, reused when the notebook runs again."""
    from .trainer import train

    run_dir = Path(workdir) / "runs" / name
    if (run_dir / "export.pkl").is_file():
        return run_dir
    return train(smoke_config(workdir, name=name, **overrides)).run_dir


def show_images(*paths: str | os.PathLike, width: int = 700) -> None:
    """Display saved plots (lr_find, loss, confusion matrix, top losses) inline."""
    from IPython.display import Image, display

    for path in paths:
        if Path(path).exists():
            display(Image(filename=str(path), width=width))
        else:
            print(f"(no {Path(path).name})")
