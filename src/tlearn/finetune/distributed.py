"""DistributedDataParallel under ``torchrun`` or Ray Train: gloo on CPU, NCCL on CUDA.

Both launchers set the same environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); Ray Train
also joins the process group before the loop starts, and :mod:`tlearn.scale.ray_train` sets
``TLEARN_LAUNCHER=ray`` so that the loop reports its epochs and checkpoints to Ray Train
(:class:`~tlearn.finetune.callbacks.RayTrainReport`).

Every process reads its own shard of each epoch's (shared, seeded) permutation; gradients
are averaged across processes, so ``batch_size`` is the global batch as in one process. Only
rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "all_reduce_array", "all_reduce_sum", "dist_info", "maybe_wrap"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # "torchrun" or "ray" when distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info(device: torch.device) -> DistInfo:
    """Read the launcher's environment and join the process group (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = os.environ.get("TLEARN_LAUNCHER", "torchrun")
    if world <= 1:
        return DistInfo(launcher="ray" if launcher == "ray" else "none")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, launcher)


def maybe_wrap(net: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP around ``net`` when distributed and something is trainable."""
    if not info.enabled or not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _summed(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over processes, on the CPU. NCCL (CUDA's process group) reduces only
    CUDA tensors: a CPU one raised "No backend type associated with device type cpu" at
    the first validation of every multi-GPU run; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t)
    return t.cpu()


def all_reduce_array(values: np.ndarray, info: DistInfo) -> np.ndarray:
    """An array summed over processes (each fills its own rows, zeros elsewhere)."""
    if not info.enabled:
        return values
    return _summed(torch.from_numpy(values).to(torch.float64)).numpy().astype(values.dtype)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    return list(_summed(torch.tensor(values, dtype=torch.float64)).tolist())
