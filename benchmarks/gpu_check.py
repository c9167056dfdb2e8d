"""Exercise every CUDA path once, on one GPU, in a few minutes; write one JSON summary.

Each step is a command the CPU test suite also runs, here with `--device cuda` (and bf16/fp16):
training a tiny model in bf16 autocast with an interrupt and a resume, the MRAR fine-tune, `sample`
1-step and MRAR in bf16 and fp16, `fid --ckpt` with random Inception weights, `fuse`, `diversity`,
the Python API (CUDA against the CPU), a one-process `torchrun` NCCL run and the L-size sampling
benchmark with its matmul-peak ratio. A failing step is recorded and the next one runs.

    bash benchmarks/gpu_check.sh                     # installs the project, then runs this
    python benchmarks/gpu_check.py --out DIR         # summary in DIR/gpu_check.json
    python benchmarks/gpu_check.py --device cpu      # the same steps on a CPU (a dry run of the script)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
TINY = {"model": {"width": 32, "heads": 2, "encoder_depth": 1, "decoder_depth": 1, "buffer_size": 4}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Check:
    def __init__(self, out: Path, device: str):
        self.out, self.device, self.steps, self.stdout = out, device, [], ""
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}

    def run(self, name: str, args: list[str], timeout: int = 300, expect: str | None = None) -> bool:
        """One step: a subprocess, its exit code, time and output tail (and `expect` in its output)."""
        t0 = time.perf_counter()
        args = [str(a) for a in args]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.out)
            ok, tail, self.stdout = r.returncode == 0, (r.stdout + r.stderr)[-1500:], r.stdout
            if ok and expect and expect not in r.stdout + r.stderr:
                ok, tail = False, f"expected {expect!r} in the output\n{tail}"
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {timeout} s"
        except OSError as e:  # the step could not start; record it and go on
            ok, tail = False, f"could not start: {e}"
        self.record(name, ok, time.perf_counter() - t0, " ".join(map(str, args)), tail)
        return ok

    def record(self, name: str, ok: bool, seconds: float, command: str, tail: str = "") -> None:
        self.steps.append({"step": name, "ok": ok, "seconds": round(seconds, 1), "command": command,
                           **({} if ok else {"output_tail": tail})})
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({seconds:.1f} s)", flush=True)

    def cli(self, *args: object) -> list[str]:
        return [sys.executable, "-m", "transdiff_cli", *map(str, args)]


def train_with_resume(c: Check, run: Path, cfg: Path) -> None:
    """bf16 autocast training, interrupted by SIGINT after a few steps, then the same command resumes."""
    args = c.cli("train", "--config", cfg, "--run-dir", run, "--max-steps", 30, "--batch-size", 32, "--log-every", 1,
                 "--ckpt-every", 1000, "--no-progress", "--device", c.device, "--precision", "bf16")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env, cwd=c.out)
    metrics, deadline = run / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=240)
    c.record("train bf16 (interrupted)", proc.returncode in (0, 130), time.perf_counter() - t0,
             " ".join(map(str, args)), err[-1500:])
    c.run("train bf16 (resumed)", args, expect="resuming" if proc.returncode == 130 else None)


def api_check(device: str) -> str:
    """The Python API on the device against the CPU, both fp32: the same image within a few levels."""
    return f"""
import numpy as np
from transdiff_cli import TransDiffPipeline
a = TransDiffPipeline.from_pretrained("run", device="{device}", precision="fp32")(3, seed=0, progress=False)
b = TransDiffPipeline.from_pretrained("run", device="cpu", precision="fp32")(3, seed=0, progress=False)
d = np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(b.images[0], dtype=int)).max()
h = TransDiffPipeline.from_pretrained("run", device="{device}", precision="bf16")([1, 2], seed=0, progress=False)
print("max pixel difference, {device} fp32 vs CPU fp32:", d, "bf16 images:", len(h.images))
assert d <= 8, d
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    p.add_argument("--skip-bench", action="store_true", help="leave out the L-size sampling benchmark")
    args = p.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False here)", file=sys.stderr)
        return 2
    out = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    c = Check(work, args.device)
    dev = args.device
    low = ["bf16", "fp16"] if dev.startswith("cuda") else ["bf16"]  # fp16 needs a GPU
    t_all = time.perf_counter()
    bench_result = None

    env = subprocess.run(c.cli("env", "--json"), capture_output=True, text=True, env=c.env)
    c.record("transdiff env", env.returncode == 0, time.perf_counter() - t_all, "transdiff env --json",
             env.stderr[-1500:])
    cfg = work / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    train_with_resume(c, work / "run", cfg)
    c.run("finetune-mrar bf16", c.cli("finetune-mrar", "--from", "run", "--run-dir", "mrar", "--max-steps", 6,
                                      "--batch-size", 16, "--log-every", 1, "--no-progress", "--device", dev,
                                      "--precision", "bf16"))
    for precision in low:
        c.run(f"sample 1-step {precision}", c.cli("sample", "--ckpt", "run", "--class", "1,2", "--num", 2, "--device",
                                                  dev, "--precision", precision, "--out", f"s1-{precision}"))
        c.run(f"sample MRAR {precision}", c.cli("sample", "--ckpt", "mrar", "--mode", "mrar", "--class", "3",
                                                "--num", 2, "--save-rounds", "--device", dev, "--precision", precision,
                                                "--out", f"sm-{precision}"))
    from conftest import random_inception_weights  # noqa: E402 (the suite's download-free random Inception)

    weights = random_inception_weights(work / "weights-inception-2015-12-05-6726825d.pth")
    c.run("fid --ckpt (random Inception)", c.cli("fid", "--ckpt", "run", "--ref", "digits", "--num-per-class", 2,
                                                 "--class", "0,1", "--inception-weights", weights, "--device", dev,
                                                 "--out", "fid"), timeout=300 if dev.startswith("cuda") else 1200)
    c.run("fid --ckpt (digits features)", c.cli("fid", "--ckpt", "run", "--ref", "digits", "--features", "digits",
                                                "--num-per-class", 2, "--class", "0,1,2", "--device", dev,
                                                "--out", "fid-digits"))
    c.run("fuse", c.cli("fuse", "--ckpt", "run", "--a", 1, "--b", 7, "--device", dev, "--out", "fuse"))
    c.run("diversity 1-step", c.cli("diversity", "run", "--classes", "0,4", "--device", dev, "--json"))
    c.run("diversity MRAR", c.cli("diversity", "mrar", "--mode", "mrar", "--classes", "0,4", "--device", dev,
                                  "--json"))
    c.run("Python API", [sys.executable, "-c", api_check(dev)])
    c.run("torchrun --nproc_per_node 1", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                                          f"--master_port={free_port()}", "-m", "transdiff_cli.cli", "train",
                                          "--config", cfg, "--run-dir", "run-torchrun", "--max-steps", 3,
                                          "--batch-size", 16, "--log-every", 1, "--no-progress", "--device", dev])
    if not args.skip_bench:
        bench = ["--size", "L", "--sampling-steps", "100", "--batch", "64", "--cfg", "1.3", "--precision", "bf16"] \
            if dev.startswith("cuda") else ["--width", "32", "--heads", "2", "--encoder-depth", "1", "--decoder-depth",
                                            "1", "--sampling-steps", "3", "--batch", "2", "--peak-size", "256"]
        ok = c.run("bench_sampling", [sys.executable, str(REPO / "benchmarks" / "bench_sampling.py"), "--device", dev,
                                      "--mode", "1step", *bench], timeout=420)
        if ok:  # its JSON line: s/image, achieved GFLOP/s, the matmul peak and the ratio to it
            bench_result = json.loads(c.stdout.strip().splitlines()[-1])
    summary = {"device": dev, "passed": sum(s["ok"] for s in c.steps), "failed": sum(not s["ok"] for s in c.steps),
               "seconds": round(time.perf_counter() - t_all, 1), "steps": c.steps, "bench_sampling": bench_result,
               "env": json.loads(env.stdout) if env.returncode == 0 else None}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(f"gpu_check: {summary['passed']} passed, {summary['failed']} failed in {summary['seconds']} s "
          f"-> {out / 'gpu_check.json'}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
