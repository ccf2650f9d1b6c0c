"""Process-group handling in one place: start-up, rank queries, and decisions all ranks must share.

A run is one process (`python train.py`), several launched by `deepspeed`/`torchrun` (they set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or several spawned by a test. The backend is NCCL on GPUs and gloo on CPU.
Anything every rank must agree on (a run directory's fate, a skipped step) is decided here once and shared.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(device: str = "auto") -> DistInfo:
    """Join (or create, for a single process) the default process group through DeepSpeed."""
    import deepspeed  # imported here: it is slow to import and only training needs it

    launched = "MASTER_PORT" in os.environ  # by deepspeed / torchrun, or a test spawning ranks itself
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "0")):
        os.environ.setdefault(key, value)
    # A lone process meets itself through a file rather than a TCP port: no port to find free, none to lose in a race.
    init_method = None
    if not launched and not dist.is_initialized():
        store = tempfile.mkdtemp(prefix="cogvideo_lite_pg_")
        atexit.register(shutil.rmtree, store, ignore_errors=True)  # the store file outlives the group otherwise
        init_method = f"file://{store}/store"
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False, init_method=init_method,
                                   rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
    )


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(value):
    """Rank 0's `value` on every rank (a decision taken once)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device or torch.device("cpu"))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def mean_over_ranks(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Average logged scalars across ranks so that rank 0 logs the global figure."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device or torch.device("cpu"))
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def replicas_identical(module: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical weights and buffers (ZeRO-1/2 replicate them; a codebook updated
    outside the optimizer must stay in step by itself). Compares one digest per rank."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    mine = digest.hexdigest()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return True
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return len(set(everyone)) == 1
