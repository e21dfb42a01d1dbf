"""Several processes through torch.distributed, started by torchrun (docs/long-runs.md).

Under `torchrun --nproc_per_node=N ...` the environment carries RANK, WORLD_SIZE and LOCAL_RANK;
`setup` joins the process group (NCCL on CUDA, Gloo on CPU) and gives each rank its own device.
Run as a plain single process, everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    """This process's place in the run: rank in 0..world_size-1 and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Rank:
    """Join the process group when started by torchrun; pick this rank's device.

    device: "cpu", "cuda" or "cuda:K". Under torchrun with CUDA each rank takes cuda:LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = torch.device(device)
    if world_size == 1:
        return Rank(0, 1, wanted)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), wanted)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled through torch.distributed)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
