"""torch.distributed helpers: the process group torchrun (or SLURM's srun) sets up, rank-0-only side
effects, and relaunching a command through torchrun (`--gpus N` outside torchrun)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
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


DEFAULT_PORT = 29500


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list -> host names in order: "node[01-03,07],gpu-a" -> node01, node02,
    node03, node07, gpu-a (zero padding kept; several bracket groups in one name multiply)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    items.append(nodelist[start:])
    return [host for item in items if item.strip() for host in _expand_item(item.strip())]


def _expand_item(item: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if m is None:
        return [item]
    head, rest = item[:m.start()], _expand_item(item[m.end():])
    hosts = []
    for part in m.group(1).split(","):
        lo, _, hi = part.strip().partition("-")
        values = [f"{v:0{len(lo)}d}" for v in range(int(lo), int(hi) + 1)] if hi else [lo]
        hosts += [head + v + tail for v in values for tail in rest]
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `scontrol show hostnames` where it exists, else parsed here."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise TransDiffError(f"cannot read the SLURM node list {nodelist!r}: set MASTER_ADDR")
    return hosts[0]


def slurm_launch_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a task that
    srun started: rank SLURM_PROCID of SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), local rank
    SLURM_LOCALID, the master the first node of the step's (else the job's) node list, port 29500
    unless MASTER_ADDR / MASTER_PORT are set. None outside srun and under torchrun (which wins)."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or "SLURM_LOCALID" not in environ:
        return None
    world = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    if world is None:
        return None
    addr = environ.get("MASTER_ADDR")
    if not addr:
        nodes = next((environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                      if environ.get(k)), None)
        if nodes is None and int(world) > 1:
            raise TransDiffError("srun started several tasks but SLURM_JOB_NODELIST is not set: set MASTER_ADDR")
        addr = first_host(nodes) if nodes else "127.0.0.1"
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": environ["SLURM_LOCALID"],
            "MASTER_ADDR": addr, "MASTER_PORT": environ.get("MASTER_PORT") or str(DEFAULT_PORT)}


def adopt_slurm_launch() -> bool:
    """Under srun with several tasks, export torchrun's variables so that the command joins the
    process group exactly as under torchrun. A single task is left alone (`--gpus N` still relaunches
    through torchrun). Returns whether they were set."""
    env = slurm_launch_env(os.environ)
    if env is None or int(env["WORLD_SIZE"]) < 2:
        return False
    os.environ.update(env)
    return True


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
        raise TransDiffError("`gpus` must be at least 1")
    if device_type == "cuda":
        have = torch.cuda.device_count()
        if gpus > have:
            raise TransDiffError(f"`gpus` {gpus} but only {have} GPU(s) are present")


def relaunch_with_torchrun(nproc: int, nnodes: int = 1, node_rank: int = 0,
                           master_addr: str = "127.0.0.1", master_port: int = 29500) -> int:
    """Re-run the current command line under torch.distributed.run with `nproc` processes per node.
    Returns torchrun's exit code."""
    argv = [
        f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "transdiff_cli.cli", *sys.argv[1:],
    ]
    return run_torchrun(argv)


def run_torchrun(argv: list[str]) -> int:
    """torch.distributed.run with `argv`; returns its exit code, a failed worker's own code (the
    first failure; 128 + N for a worker killed by signal N) rather than a generic error."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(argv)
    except SystemExit as e:  # torchrun exits with the children's status
        return int(e.code or 0)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        code = failure.exitcode
        return 128 - code if code < 0 else code or 1
    except Exception as e:  # the launcher itself (rendezvous, a busy port)
        raise TransDiffError(f"torchrun failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return 0
