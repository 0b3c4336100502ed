"""Helpers for the notebooks: environment set-up (Colab, GPU, Drive) and the smoke mode's tiny data and run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["setup", "smoke_data", "smoke_config", "smoke_run", "show_images"]


def setup(mount_drive: bool = False, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Detect Colab and the GPU, mount Google Drive if asked, and pick the working folder for runs (`workdir`, on
    Drive when mounted, so they outlive the Colab session) and for data (`datadir`: on Colab always the local disk,
    since tens of thousands of small files on Drive are slow and Drive has no symlinks)."""
    import torch

    colab = "google.colab" in sys.modules
    if mount_drive and colab:
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
        workdir = workdir or "/content/drive/MyDrive/birdclf"
    workdir = Path(workdir or ("/content/birdclf" if colab else "."))
    datadir = Path("/content/birdclf-data") if colab else workdir
    for folder in (workdir, datadir):
        folder.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    info = {"colab": colab, "gpu": gpu, "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "workdir": workdir.resolve(), "datadir": datadir.resolve()}
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    return info


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
