"""Launchers: tasks started by SLURM's srun join the process group as torchrun's workers do (the
variables set by hand here), SLURM node lists, and a failed torchrun worker's exit code."""

import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core import distributed
from transdiff_cli.core.distributed import expand_nodelist, first_host, run_torchrun, slurm_launch_env
from transdiff_cli.core.errors import TransDiffError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_env(rank: int, ntasks: int, **extra: str) -> dict[str, str]:
    """What srun exports to task `rank` of `ntasks` on one node."""
    return {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(ntasks),
            "SLURM_JOB_NODELIST": "node[07-08,11],login", **extra}


@pytest.mark.parametrize("nodelist,hosts", [
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("gpu-a,n[8-11]", ["gpu-a", "n8", "n9", "n10", "n11"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("c[009-010],login.cluster", ["c009", "c010", "login.cluster"]),
    ("single", ["single"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_first_host_without_scontrol(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    assert first_host("node[07-08,11]") == "node07"


def test_slurm_variables_become_torchrun_variables(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    env = slurm_launch_env(srun_env(1, 4))
    assert env == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node07",
                   "MASTER_PORT": "29500"}
    # the step's own task count and node list win over the job's; MASTER_ADDR / PORT given by hand win
    step = srun_env(0, 8, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="node[11-12]")
    assert slurm_launch_env(step)["WORLD_SIZE"] == "2" and slurm_launch_env(step)["MASTER_ADDR"] == "node11"
    mine = slurm_launch_env(srun_env(0, 2, MASTER_ADDR="10.0.0.5", MASTER_PORT="1234"))
    assert (mine["MASTER_ADDR"], mine["MASTER_PORT"]) == ("10.0.0.5", "1234")
    # a single task: world size 1, the local host
    one = slurm_launch_env({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"})
    assert one["WORLD_SIZE"] == "1" and one["MASTER_ADDR"] == "127.0.0.1"
    assert slurm_launch_env({**srun_env(0, 2), "RANK": "0"}) is None  # torchrun inside srun wins
    assert slurm_launch_env({}) is None
    with pytest.raises(TransDiffError, match="MASTER_ADDR"):
        slurm_launch_env({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"})


def test_the_cli_adopts_srun_variables(monkeypatch):
    monkeypatch.setattr(os, "environ", {**os.environ, **srun_env(0, 2, MASTER_ADDR="127.0.0.1")})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    result = CliRunner().invoke(app, ["sample", "--ckpt", "/nonexistent/ckpt"])
    assert result.exit_code == 2  # the command ran (and refused the path) ...
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "2", "0")
    assert distributed.under_torchrun()  # ... as a worker of a 2-process group
    # a single task is left alone: `--gpus N` still relaunches through torchrun
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})
    os.environ["SLURM_NTASKS"] = "1"
    assert not distributed.adopt_slurm_launch() and not distributed.under_torchrun()


def test_srun_tasks_join_one_process_group(tmp_path):
    code = ("import torch, torch.distributed as dist\n"
            "from transdiff_cli.core.distributed import adopt_slurm_launch, cleanup, init_distributed\n"
            "assert adopt_slurm_launch()\n"
            "info = init_distributed(torch.device('cpu'))\n"
            "x = torch.tensor([info.rank + 1.0]); dist.all_reduce(x)\n"
            "print(info.rank, info.world_size, info.local_rank, dist.get_backend(), int(x.item()))\n"
            "cleanup(info)\n")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **srun_env(r, 2, SLURM_JOB_NODELIST="localhost", MASTER_PORT=port),
                                   "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert [out.split() for out, _ in outs] == [["0", "2", "0", "gloo", "3"], ["1", "2", "1", "gloo", "3"]]


def test_failed_worker_exit_code_passes_through(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.exit(3)\n")
    code = run_torchrun(["--nproc_per_node=1", f"--master_port={free_port()}", str(script)])
    assert code == 3
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert run_torchrun(["--nproc_per_node=1", f"--master_port={free_port()}", str(script)]) == 128 + 15
