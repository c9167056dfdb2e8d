"""torch.distributed helpers: the process group torchrun sets up, rank-0-only side effects, and
relaunching a command through torchrun (`--gpus N` outside torchrun)."""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import TransDiffError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return x


def check_gpus(gpus: int, device_type: str) -> None:
    if gpus < 1:
        raise TransDiffError("--gpus must be at least 1")
    if device_type == "cuda":
        have = torch.cuda.device_count()
        if gpus > have:
            raise TransDiffError(f"--gpus {gpus} but only {have} GPU(s) are present")


def relaunch_with_torchrun(nproc: int, nnodes: int = 1, node_rank: int = 0,
                           master_addr: str = "127.0.0.1", master_port: int = 29500) -> int:
    """Re-run the current command line under torch.distributed.run with `nproc` processes per node.
    Returns torchrun's exit code."""
    from torch.distributed import run as torchrun

    argv = [
        f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "transdiff_cli.cli", *sys.argv[1:],
    ]
    try:
        torchrun.main(argv)
    except SystemExit as e:  # torchrun exits with the children's status
        return int(e.code or 0)
    except Exception as e:  # ChildFailedError
        raise TransDiffError(f"a torchrun worker failed: {str(e).splitlines()[0]}") from e
    return 0
