"""Several training processes through torch's own launcher: `torchrun --nproc_per_node N -m fer_app train ...`.

torchrun starts N copies of the command and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address in their environment; `setup` joins them into one process group (NCCL on CUDA GPUs, one
GPU per process; gloo on CPUs), and the engine wraps the network in `DistributedDataParallel`.
Without those variables everything here is a no-op for one process (rank 0 of 1).

The helpers that follow are the few collective steps the engine needs: one stop flag for all ranks
(a Stop button on rank 0 stops every rank at the same batch), sums of metric counts across ranks,
a barrier. `gpus` lists this machine's GPUs for the Training page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank of world_size (local_rank on this machine), its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False           # `setup` created the process group (and `teardown` ends it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes checkpoints and saves the model."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 without one): for printing on rank 0 only."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> Context:
    """Join the launcher's process group (once per process) and pick this rank's device.

    `device` is the one chosen for a single process; under torchrun on CUDA each process takes
    GPU LOCAL_RANK. Backend: NCCL for CUDA, gloo otherwise (CPU; MPS is not supported by DDP).
    """
    if not launched():
        return Context(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise RuntimeError(f"several processes (torchrun) train on CUDA GPUs or CPUs, not on {device.type}")
    owns = False
    if not dist.is_initialized():
        # torch's env:// rendezvous, its keys under one prefix per torchrun attempt: after a worker died
        # and torchrun restarted them all, a rank could otherwise read the dead attempt's addresses.
        store, rank, world_size = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"fer_app/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world_size, **({"device_id": device} if device.type == "cuda" else {}))
        owns = True
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def teardown(ctx: Context) -> None:
    """End the process group `setup` created."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(ctx: Context, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a Stop asked for on rank 0 stops all at the same batch)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_across(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """`values` (float64 counts and sums) summed over all ranks; the same tensor for one process."""
    if not ctx.distributed:
        return values
    t = values.to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def shard(n: int, ctx: Context) -> range:
    """This rank's share of n evaluation items (every rank-th one, none twice: exact metrics once summed)."""
    return range(ctx.rank, n, ctx.world_size)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gb: float


def gpus() -> list[Gpu]:
    """This machine's CUDA GPUs with their memory (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(Gpu(i, props.name, round(props.total_memory / 2**30, 1)))
    return out


def gpu_summary(found: list[Gpu] | None = None) -> str:
    """One line for the Training page: the GPUs and their memory, or that there are none."""
    found = gpus() if found is None else found
    if not found:
        return "GPUs: none (CUDA not available); training runs on the CPU"
    return "GPUs: " + "; ".join(f"{g.index}: {g.name}, {g.memory_gb:g} GB" for g in found)
