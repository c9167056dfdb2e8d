"""Smoke runs of the performance benchmarks at a toy size: they must keep working and report
self-consistent numbers (the timings themselves belong in benchmarks/RESULTS.md, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# a small matmul for the peak: at the default n = 2048 an emulated-bf16 CPU (no avx512_bf16) needs minutes
TOY = ["--width", "32", "--heads", "2", "--encoder-depth", "1", "--decoder-depth", "1", "--threads", "1",
       "--peak-size", "256"]


def run(script: str, *args: str, toy: bool = True) -> dict:
    base = TOY if toy else ["--threads", "1", "--peak-size", "256"]
    r = subprocess.run([sys.executable, str(BENCH / script), *base, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode,rounds", [("1step", 1), ("mrar", 4)])
def test_bench_sampling(mode, rounds):
    out = run("bench_sampling.py", "--mode", mode, "--batch", "2", "--sampling-steps", "3", "--repeats", "2",
              "--precision", "bf16")
    assert out["network_evaluations"] == 3 * rounds and out["evaluation_batch"] == 4
    assert len(out["times_s"]) == 2 and out["s_per_image"] > 0
    assert out["flops_per_image"] > 0 and out["matmul_peak_gflops"] > 0
    assert out["ratio_to_peak"] == pytest.approx(out["achieved_gflops"] / out["matmul_peak_gflops"], rel=5e-3)


def test_bench_sampling_published_checkpoint(fixtures, manifest):
    out = run("bench_sampling.py", "--ckpt", str(fixtures / "transdiff_mrar.pth"), "--mode", "mrar", "--batch", "2",
              "--sampling-steps", "2", "--repeats", "1", "--precision", "bf16", toy=False)
    assert out["config"]["mrar"] and out["config"]["width"] == manifest["width"]
    assert out["network_evaluations"] == 2 * 4 and out["weights"].endswith("transdiff_mrar.pth")


def test_bench_sampling_memory():
    out = run("bench_sampling.py", "--batch", "1", "--sampling-steps", "2", "--measure-memory")
    assert out["peak_rss_bytes"] >= out["rss_before_model_bytes"] > 0
    assert out["limit_bytes"] == out["weight_bytes"] + 2 * 2**30


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_train(precision):
    # two steps at batch 1: bf16 autocast training is emulated (slow) on CPUs without native bf16
    out = run("bench_train.py", "--batch", "1", "--steps", "2", "--diffusion-batch-mul", "1", "--precision", precision)
    assert out["precision"] == ("bf16-autocast" if precision == "bf16" else "fp32") and len(out["times_s"]) == 2
    assert out["images_per_s"] == pytest.approx(1 / out["s_per_step"], rel=1e-2)
    assert out["cpu_capability"] and isinstance(out["native_bf16"], bool)
    assert out["env"]["auto"]["precision"]["sampling"] in ("fp32", "bf16")  # the `transdiff env` record
    assert out["flops_per_step"] > 0


def test_unavailable_device_is_one_line():
    r = subprocess.run([sys.executable, str(BENCH / "bench_sampling.py"), *TOY, "--device", "cuda:99"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "cuda:99" in r.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_gpu_check_without_a_gpu_is_one_line():
    r = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False here)"]
@pytest.mark.slow
def test_few_step_quick(tmp_path):
    """Toy teacher, MRAR fine-tune and distilled student, every registered sampler, two seeds."""
    out = tmp_path / "fs"
    r = subprocess.run([sys.executable, str(BENCH / "few_step.py"), "--quick", "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    from transdiff_cli.core.sampling.samplers import SAMPLERS

    assert {s["sampler"] for s in doc["summary"]} == set(SAMPLERS)
    assert {s["model"] for s in doc["summary"]} == {"teacher", "mrar", "student"}
    by = {(s["model"], s["sampler"], s["sampling_steps"]): s for s in doc["summary"]}
    assert by[("mrar", "em", 2)]["nfe"] == 2 * 4  # counted: 4 rounds of 2 steps
    assert by[("teacher", "em", 2)]["rows_per_image"] == 2 * 2  # guided: 2 rows per evaluation
    assert by[("student", "ode", 2)]["rows_per_image"] == 2  # guidance distilled in: 1 row
    assert all(s["seeds"] == 2 and s["fid"] > 0 for s in doc["summary"])
    assert set(doc["acceptance"]) >= {"fid_ratio", "passes"} and doc["width256"]
    assert (out / "few_step.png").stat().st_size > 0 and "| teacher | em | 100 |" in (out / "table.md").read_text()
