"""Data-parallel training and sampling over processes started by ``torchrun``.

``torchrun --nproc_per_node=K -m sde_diffusion train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU), each process takes its shard of
every batch (``DistributedSampler`` order), ``DistributedDataParallel`` averages the gradients, and
rank 0 alone logs and writes. Without those variables everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among ``world_size`` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "cpu") -> Distributed:
    """Join the torchrun process group if there is one; pick this process's device (cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        dev = torch.device("cuda", local) if world > 1 or device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Distributed(rank, world, local, dev)


def teardown(env: Distributed) -> None:
    if env.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, env: Distributed) -> nn.Module:
    """``DistributedDataParallel(net)`` when several processes train, else ``net`` itself."""
    if not env.active:
        return net
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def epoch_indices(n: int, epoch: int, seed: int, env: Distributed) -> Tensor:
    """This rank's shuffled sample indices for ``epoch`` (``DistributedSampler``, drop_last)."""
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=env.world_size, rank=env.rank,
                                                  shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def gather_chunks(chunks: List[tuple], env: Distributed) -> List[tuple]:
    """All ranks' ``(index, tensor)`` pairs on every rank, sorted by index (CPU tensors)."""
    parts = gather_object([(i, t.cpu()) for i, t in chunks], env)
    return sorted((c for part in parts for c in part), key=lambda c: c[0])


def gather_object(obj, env: Distributed) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not env.active:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(env: Distributed) -> None:
    if env.active:
        dist.barrier()
