"""Process group from torchrun's environment, and the few collectives training needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous for several nodes); without
them (plain `python train_ddp.py`) this is one process and every collective is a no-op.
NCCL on GPU, gloo on CPU.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

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


def init_distributed(device_type: str = "auto", timeout_s: float | None = None) -> Dist:
    """Join the process group torchrun describes; pick this process's device.

    device_type: "auto" takes the GPU LOCAL_RANK when CUDA is present, else the CPU; "cpu"
    never touches CUDA (a CPU run on a GPU machine); "cuda" insists on the GPU. A GPU that
    is not there (no CUDA, or LOCAL_RANK past the GPUs this node shows) is a UserError.
    timeout_s: how long a collective waits for the other ranks before it raises
    (torch.distributed.DistError) instead of hanging on a rank that died or froze; None keeps
    torch's default.
    """
    rank, world_size = env_rank(), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_restartable()
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
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group("nccl" if use_cuda else "gloo", **kwargs)
    return Dist(rank, world_size, local_rank, device)


def lost_rank(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another rank is gone or frozen: NCCL raises
    torch.distributed.DistError, gloo a RuntimeError from its transport (a broken connection,
    "Timed out waiting ...ms", or "Application timeout caused pair closure" after the process
    group's timeout)."""
    text = str(e)
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError) and ("gloo/transport" in text or "caused pair closure" in text))


def check_restartable():
    """Refuse torchrun --max-restarts with the rendezvous store shared with the workers.

    By default torchrun's c10d rendezvous lends its own store to the workers' process group, and
    a restarted group then reads the previous attempt's addresses from it: the first restart
    fails to connect (pytorch/pytorch#135712; seen with torch 2.13: "Gloo connectFullMesh failed
    ... Connection refused"). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, read by torchrun itself,
    gives every attempt a store of its own. Told at the start, not after the first fault.
    """
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0:
        raise UserError("torchrun --max-restarts: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's "
                        "environment, or a restart reuses the failed attempt's addresses and cannot connect "
                        "(pytorch/pytorch#135712)")


def shutdown(d: Dist):
    if d.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(d: Dist, *flags: bool) -> list:
    """[flag true on some rank, for each flag] on every rank (a stop request, a checkpoint due),
    all in one collective."""
    if not d.is_distributed:
        return [bool(f) for f in flags]
    t = torch.tensor([int(f) for f in flags], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


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
