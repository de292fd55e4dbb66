"""Data parallelism under torchrun, as a few small helpers the loop calls (each a no-op in one process).

Every process draws the same permutation and the same global batches of `train.batch_size`, and takes
its own contiguous part of each; DDP averages the gradients. Launching the processes and reporting a
failed one is cnnlab.plumbing.torchrun's job."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab import CnnlabError


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_lead() -> bool:
    """Rank 0 reports and writes; the others only train."""
    return rank() == 0


def shard() -> tuple[int, int]:
    return rank(), world_size()


def init(device_type: str) -> torch.device:
    """Join the process group torchrun set up (NCCL between GPUs, gloo between CPU processes); return
    this process's device."""
    if device_type == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local >= gpus:  # NCCL takes one GPU per process: two ranks cannot share one
            raise CnnlabError(f"params.yaml: train.nproc asks for more processes on this node than its "
                              f"{gpus} GPU{'s' if gpus != 1 else ''}; set it to at most {gpus}")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_type)
    if not dist.is_initialized():  # a dead peer is noticed by torchrun within seconds; this bounds a hang
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return device


def finish() -> None:
    """Wait until every process has finished training, then leave the process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module) -> nn.Module:
    """The module that steps: DDP around the model when there are several processes."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_share(loss: torch.Tensor, logits: torch.Tensor, global_batch: int) -> torch.Tensor:
    """This process's share of the global batch's mean loss, scaled so that DDP's average of the
    processes' gradients is the global batch's gradient (the loss itself in one process)."""
    ranks = world_size()
    if ranks == 1:
        return loss
    if len(logits) == 0:  # a short last batch left nothing for this process: it still steps, as DDP needs
        return logits.sum() * 0
    return loss * (len(logits) * ranks / global_batch)


def my_part(images: int) -> torch.Tensor | None:
    """The indices of a split this process evaluates (None: all of it, in one process)."""
    return None if world_size() == 1 else torch.arange(images).tensor_split(world_size())[rank()]


def sum_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor summed across the processes, in place (as it is in one process)."""
    if world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)
    return tensors


def agree(stop: bool) -> bool:
    """Every process follows rank 0's early-stopping decision."""
    if world_size() == 1:
        return stop
    decision = torch.tensor([int(stop)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(decision, 0)
    return bool(decision.item())
