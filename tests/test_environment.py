"""`$TRANSDIFF_PRECISION` forces what `auto` means (flags and arguments win), and `transdiff env`
prints what a bug report needs, offline, as text and as JSON."""

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core import device as device_mod
from transdiff_cli.core.device import autocast_dtype, explain_auto, forced_precision, weights_dtype
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.model import cpu_kernels

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("forced,want", [(None, None), ("fp32", torch.float32), ("bf16", torch.bfloat16),
                                         ("auto", None), ("BFloat16", torch.bfloat16)])
def test_environment_forces_auto_either_way(monkeypatch, native, forced, want):
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: native)
    if forced is None:
        monkeypatch.delenv("TRANSDIFF_PRECISION", raising=False)
    else:
        monkeypatch.setenv("TRANSDIFF_PRECISION", forced)
    hardware = torch.bfloat16 if native else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 warns; not what this test is about
        assert weights_dtype(CPU, "auto") == (want or hardware)
        # training: auto is fp32 autocast (None) on a CPU unless forced
        assert autocast_dtype(CPU, "auto") == (None if want in (None, torch.float32) else want)
        # an explicit precision wins over the environment
        assert weights_dtype(CPU, "fp32") == torch.float32
        assert weights_dtype(CPU, "bf16") == torch.bfloat16
    why = explain_auto(CPU)
    assert why["sampling"] == {torch.float32: "fp32", torch.bfloat16: "bf16"}[want or hardware]
    assert ("TRANSDIFF_PRECISION" in why["why"]) == (want is not None)


def test_bad_environment_value_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSDIFF_PRECISION", "fp8")
    with pytest.raises(TransDiffError, match="TRANSDIFF_PRECISION"):
        forced_precision()
    r = CliRunner().invoke(app, ["env"])
    assert r.exit_code == 2 and "error:" in r.output and "TRANSDIFF_PRECISION" in r.output
    assert "Traceback" not in r.output
    monkeypatch.setenv("TRANSDIFF_PRECISION", "fp16")
    with pytest.raises(TransDiffError, match="needs a GPU"):
        weights_dtype(CPU, "auto")


def test_api_and_cli_follow_the_environment(monkeypatch, tmp_path):
    from conftest import make_tiny

    from transdiff_cli import TransDiffPipeline

    ck = make_tiny(tmp_path / "ck")
    for forced, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        monkeypatch.setenv("TRANSDIFF_PRECISION", forced)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert TransDiffPipeline.from_pretrained(ck, device="cpu").model.class_emb.weight.dtype == dtype
            pinned = TransDiffPipeline.from_pretrained(ck, device="cpu", precision="fp32")
        assert pinned.model.class_emb.weight.dtype == torch.float32


FIELDS = ["python", "packages.torch", "packages.torchvision", "packages.diffusers", "packages.timm",
          "packages.torch-fidelity", "packages.safetensors", "packages.typer", "packages.rich",
          "packages.huggingface_hub", "cuda.cuda", "cuda.cudnn", "cuda.nccl", "cuda.devices", "mps", "cpu.model",
          "cpu.isa.avx2", "cpu.isa.avx512f", "cpu.isa.avx512_bf16", "cpu.isa.amx_bf16", "cpu.torch_capability",
          "cpu.native_bf16", "cpu.fused_linear.fp32", "cpu.fused_linear.bf16", "auto.device", "auto.device_why",
          "auto.precision.sampling", "auto.precision.training", "auto.precision.why", "threads.torch",
          "threads.torch_interop", "threads.cpu_count", "hub.cache", "hub.offline", "reference_cache.folder"]


def test_env_command_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSDIFF_CACHE_DIR", str(tmp_path / "refcache"))
    monkeypatch.delenv("TRANSDIFF_PRECISION", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for field in FIELDS:
        node = doc
        for part in field.split("."):
            assert part in node, field
            node = node[part]
    assert doc["packages"]["torch"] == torch.__version__.split("+")[0]
    assert doc["cpu"]["native_bf16"] == cpu_kernels.native_bf16()
    assert doc["auto"]["precision"]["sampling"] == ("bf16" if weights_dtype(CPU, "auto") == torch.bfloat16 else "fp32")
    assert doc["reference_cache"]["folder"] == str(tmp_path / "refcache")
    text = runner.invoke(app, ["env"])
    assert text.exit_code == 0
    for field in FIELDS:
        assert any(line.split()[0] == field for line in text.stdout.splitlines()), field
    assert device_mod.PRECISION_ENV == "TRANSDIFF_PRECISION"
