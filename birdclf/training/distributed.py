"""Several processes training one run (`--distributed` under `accelerate launch`): every process fits its share
of each batch; only the main one writes (the run folder, lr_find, the cached-feature head, history, checkpoints,
calibration, evaluation, export)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import BirdclfError

__all__ = ["Processes", "processes", "distributed_fit", "unwrap"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
# The other processes wait while the main one runs lr_find or the cached-feature head (feature extraction over a
# 90k-photo set): longer than torch's default 10-30 minutes.
WAIT = timedelta(hours=2)
ONE_PROCESS = ("--distributed, but this is the only process: `accelerate launch --cpu --num_processes N` starts one "
               "process (several CPU processes need mpirun); start N with `accelerate launch --multi_gpu "
               "--num_processes N -m birdclf train ... --distributed` (torchrun: on GPUs with NCCL; with "
               "CUDA_VISIBLE_DEVICES= on CPU with gloo)")


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: `rank` of `world`; rank 0 is the main process."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0

    def shared(self, make: Callable[[], T]) -> T:
        """`make()` on the main process only; every process gets its value, or raises its error."""
        if self.world == 1:
            return make()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                with self.alone():
                    box = [(True, make())]
            except Exception as exc:  # the others must not wait forever for a value that will not come
                box = [(False, f"{type(exc).__name__}: {exc}")]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise BirdclfError(f"the main process failed ({value}); see its log")
        return value

    def close(self) -> None:
        """Leave the process group once this process's part is done (the main one: after the export)."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """fastai work on this process only (lr_find, the cached-feature head, calibration, export): fastai gathers
        every batch's loss and predictions across processes whenever WORLD_SIZE > 1, so the others, not fitting
        with it, would leave it waiting forever."""
        if self.world == 1:
            yield
            return
        world = os.environ.get("WORLD_SIZE")
        os.environ["WORLD_SIZE"] = "1"  # what fastai's num_distrib() reads
        try:
            yield
        finally:
            if world is None:
                os.environ.pop("WORLD_SIZE", None)
            else:
                os.environ["WORLD_SIZE"] = world


def processes(distributed: bool) -> Processes:
    """One process unless `distributed`; then the process group that `accelerate launch` (torchrun) set up:
    NCCL on GPUs, gloo on CPU. The other processes log warnings and errors only."""
    if not distributed:
        return Processes()
    try:
        from accelerate import PartialState
        from accelerate.utils import InitProcessGroupKwargs
    except ImportError:
        raise BirdclfError("--distributed needs Hugging Face Accelerate: pip install 'birdclf[dist]' "
                           "(Colab has it)") from None
    import torch

    state = PartialState(cpu=not torch.cuda.is_available(), **InitProcessGroupKwargs(timeout=WAIT).to_kwargs())
    procs = Processes(state.process_index, state.num_processes)
    if procs.world == 1:
        logger.warning(ONE_PROCESS)
    elif not procs.main:
        logging.getLogger("birdclf").setLevel(logging.WARNING)
    logger.info("process %d of %d (%s, %s)", procs.rank, procs.world, state.backend, state.device)
    return procs


def unwrap(model: Any) -> Any:
    """The model inside DistributedDataParallel (or DataParallel) while fastai fits it; else the model."""
    return getattr(model, "module", model)


def _trainer(sync_bn: bool = False) -> Any:
    """fastai's DistributedTrainer, with data loaders whose index broadcast also works on gloo (CPU)."""
    import torch
    import torch.distributed as dist
    from fastai.distributed import DistributedDL, DistributedTrainer

    class _DistributedDL(DistributedDL):
        def _broadcast(self, t: list[int], rank: int) -> list[int]:
            t = torch.LongTensor(t)  # fastai's puts it on CUDA (NCCL's need) even when the backend is gloo
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, rank)
            return t.cpu().tolist()

    class _Trainer(DistributedTrainer):
        def _wrap_dl(self, dl: Any) -> Any:
            return dl if isinstance(dl, DistributedDL) else _DistributedDL(dl, device=self.learn.model.device)

    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        logger.warning("accelerate launch --mixed_precision %s is ignored: birdclf's --precision (fp16 on a GPU by "
                       "default) does mixed precision", os.environ["ACCELERATE_MIXED_PRECISION"])
    # Accelerate's own autocast would wrap the model's forward for good (fastai unwraps only DDP), into the export
    return _Trainer(sync_bn=sync_bn, mixed_precision="no")


@contextmanager
def distributed_fit(learn: Any, procs: Processes) -> Iterator[Any]:
    """fastai's `learn.distrib_ctx()` for the fits inside, over `procs`; nothing changes with one process.

    BatchNorm stays per process (fastai's `sync_bn=True` is torch's converter, which turns timm's BatchNormAct2d
    into a plain SyncBatchNorm and drops its activation): the body's BatchNorm is frozen (FreezeBodyBatchNorm), and
    the head's sees `bs` photos a process. Each process gets `bs` photos a step: the step's batch is bs x processes.
    """
    if procs.world == 1:
        yield learn
        return
    from fastai.callback.progress import ProgressCallback

    trainer = _trainer()
    learn.add_cb(trainer)
    progress = getattr(learn, "progress", None) if not procs.main else None
    if progress is not None:
        learn.remove_cb(progress)
    try:
        yield learn
    finally:
        learn.remove_cb(trainer)
        if progress is not None:
            learn.add_cb(ProgressCallback())
