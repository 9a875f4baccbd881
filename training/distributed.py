"""Process group from torchrun's environment, and the few collectives training needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous for several nodes); without
them (plain `python train_ddp.py`) this is one process and every collective is a no-op.
NCCL on GPU, gloo on CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.device import resolve_device
from core.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 without torchrun), before init."""
    return int(os.environ.get("RANK", 0))


def init_distributed(device_type: str = "auto") -> Dist:
    """Join the process group torchrun describes; pick this process's device.

    device_type: "auto" takes the GPU LOCAL_RANK when CUDA is present, else the CPU; "cpu"
    never touches CUDA (a CPU run on a GPU machine); "cuda" insists on the GPU. A GPU that
    is not there (no CUDA, or LOCAL_RANK past the GPUs this node shows) is a UserError.
    """
    rank, world_size = env_rank(), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device_type}: expected auto, cpu or cuda")
    use_cuda = resolve_device(device_type) == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} of this node needs GPU {local_rank}, but only "
                            f"{torch.cuda.device_count()} GPU(s) are visible: lower --nproc_per_node, "
                            f"or run on the CPU with --device cpu")
        torch.cuda.set_device(local_rank)  # before init: NCCL binds each process to its own GPU
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", **kwargs)
    return Dist(rank, world_size, local_rank, device)


def shutdown(d: Dist):
    if d.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank when `flag` is true on some rank (a stop request, say)."""
    if not d.is_distributed:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `t` over the ranks (a copy; every rank gets it)."""
    t = t.detach().clone()
    if d.is_distributed:
        dist.all_reduce(t)
        t /= d.world_size
    return t


def gather_objects(d: Dist, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects only)."""
    if not d.is_distributed:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def on_every_rank(d: Dist, fn, *args, **kwargs):
    """fn(*args, **kwargs) on every rank; a UserError on any rank is raised on all of them.

    A rank that stopped alone would leave the others waiting in their next collective, so every
    rank learns of the first failure (by rank) and stops with the same line.
    """
    try:
        result, problem = fn(*args, **kwargs), None
    except UserError as e:
        result, problem = None, (f"rank {d.rank}: {e}" if d.is_distributed else str(e))
    problems = [p for p in gather_objects(d, problem) if p]
    if problems:
        raise UserError(problems[0])
    return result


def barrier(d: Dist):
    if d.is_distributed:
        dist.barrier()


def fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """[2 x parameters] float64 on the CPU: each parameter's sum and sum of squares.

    Equal weights give bit-equal fingerprints; different ones almost surely differ. Cheap enough
    to compare the ranks' weights at every checkpoint.
    """
    with torch.no_grad():
        sums = [torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()]
    return torch.cat(sums).cpu()


def ranks_agree(d: Dist, module: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters (by fingerprint)."""
    prints = gather_objects(d, fingerprint(module))
    return all(torch.equal(prints[0], p) for p in prints[1:])
