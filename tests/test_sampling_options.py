"""One `SamplingOptions` from the edge to the settings: the CLI and the API resolve the same
settings with the same provenance, and the API checks its arguments' types and ranges first."""

import json

import pytest
import torch
from conftest import make_tiny
from typer.testing import CliRunner

from transdiff_cli import TransDiffPipeline
from transdiff_cli.cli import app
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.sampling.options import SamplingOptions
from transdiff_cli.core.sampling.settings import sample_settings

runner = CliRunner()


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("opts") / "ck")


@pytest.fixture(scope="module")
def pipe(ck):
    return TransDiffPipeline.from_pretrained(ck, device="cpu", precision="fp32")


def dry_run(ck, *args):
    r = runner.invoke(app, ["sample", "--ckpt", str(ck), "--dry-run", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_api_and_cli_give_the_same_settings_and_provenance(ck, pipe):
    plan = dry_run(ck)
    api = pipe.settings().to_dict()
    assert api.pop("sources") == plan["provenance"]
    assert plan["provenance"]["sampler"] == "tool default" and plan["sampler"] == "em"
    assert all(plan[k] == v for k, v in api.items())
    plan = dry_run(ck, "--sampler", "heun", "--sampling-steps", 4, "--cfg-interval", "0.2,0.8", "-P", "grid=shifted")
    options = SamplingOptions.build(sampler="heun", sampling_steps=4, cfg_interval=(0.2, 0.8),
                                    sampler_params={"grid": "shifted"})
    api = pipe.settings(options).to_dict()
    assert api.pop("sources") == plan["provenance"] and plan["provenance"]["sampler"] == "flag"
    assert plan["provenance"]["shift"] == "sampler default" and (plan["nfe"], plan["rows"]) == (7, 7 + 4)
    assert all(plan[k] == v for k, v in api.items())


@pytest.mark.parametrize("call,kind,name", [
    (lambda p: p(sampling_steps=2.5, progress=False), TypeError, "sampling_steps"),
    (lambda p: p(num_per_class="2", progress=False), TypeError, "num_per_class"),
    (lambda p: p(seed="0", progress=False), TypeError, "`seed` must be an int"),
    (lambda p: p(seed=-1, progress=False), ValueError, "seed"),
    (lambda p: p(cfg="x", progress=False), ValueError, "cfg"),
    (lambda p: p(sampler=3, progress=False), TypeError, "sampler"),
    (lambda p: p(sampling_steps=10**9, progress=False), ValueError, "at most 10000"),
    (lambda p: p.decode([[1, 2, 3]]), TypeError, "features"),
    (lambda p: p.decode(torch.zeros(2, 3)), ValueError, "features"),
    (lambda p: p.settings(rounds="2"), TypeError, "rounds"),
    (lambda p: TransDiffPipeline.from_pretrained(5), TypeError, "source"),
])
def test_api_checks_arguments_before_work(pipe, call, kind, name):
    with pytest.raises(kind, match=name):
        call(pipe)


def test_sampling_steps_bound_is_one_line(ck, tmp_path):
    r = runner.invoke(app, ["sample", "--ckpt", str(ck), "--sampling-steps", "1000000000",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "--sampling-steps 1000000000 is out of range: at most 10000" in r.output
    with pytest.raises(ValueError, match="at most 10000"):
        sample_settings(pipe_config(ck), sampling_steps=10_001)


def pipe_config(ck):
    from transdiff_cli.core.io.checkpoint import inspect_checkpoint

    return inspect_checkpoint(ck).config


def test_sample_json_and_output_report_nfe(ck, tmp_path):
    r = runner.invoke(app, ["sample", "--ckpt", str(ck), "--class", "1", "--num", "2", "--sampler", "heun",
                            "--sampling-steps", "3", "--cfg-interval", "0,0.5", "--precision", "fp32",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "NFE 5 per image (7 network rows per image, 14 for 2 image(s))" in r.output
    info = json.loads((tmp_path / "o" / "samples.json").read_text())["settings"]
    assert (info["nfe"], info["rows"], info["cfg_interval"]) == (5, 7, [0.0, 0.5])


def test_sweep_axes_cover_samplers_and_their_parameters():
    from transdiff_cli.core.eval.sweep import parse_sweeps, point_options, sweep_points

    axes = parse_sweeps(["sampler=ode,heun", "nfe=4,8"])
    opts = SamplingOptions.build(cfg_interval="0.1,0.9", sampler_params={"grid": "shifted"})
    got = [point_options(opts, p) for p in sweep_points(axes)]
    assert [(o.sampler, o.sampling_steps) for o in got] == [("ode", 4), ("ode", 8), ("heun", 2), ("heun", 4)]
    assert all(o.params == {"grid": "shifted"} and o.cfg_interval == "0.1,0.9" for o in got)
    assert parse_sweeps(["shift=1,3", "cfg_interval=0:1,0.2:0.8"]) == [("shift", [1.0, 3.0]),
                                                                      ("cfg_interval", ["0:1", "0.2:0.8"])]
    for bad, msg in [(["sampler=em,rk4"], "choose from"), (["nfe=2", "sampling_steps=2"], "one of them")]:
        with pytest.raises(TransDiffError, match=msg):
            parse_sweeps(bad)


def test_per_round_steps_on_the_command_line(tmp_path):
    mrar = make_tiny(tmp_path / "mrar", mrar=True)
    plan = dry_run(mrar, "--sampling-steps", "2,2,3,5", "--sampler", "ode", "--cfg", "1")
    assert plan["sampling_steps"] == [2, 2, 3, 5] and (plan["nfe"], plan["rows"]) == (12, 12)
    r = runner.invoke(app, ["sample", "--ckpt", str(mrar), "--dry-run", "--sampling-steps", "2,3"])
    assert r.exit_code == 2 and "give one or 4 (one per MRAR round)" in r.output
