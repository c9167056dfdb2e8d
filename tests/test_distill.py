"""`transdiff distill`: the objective's targets, exact resume, the frozen encoder, and a student
checkpoint whose own defaults (sampler, steps, cfg) are what `sample` and the API use."""

import json

import pytest
import torch
from conftest import invoke, make_tiny
from safetensors.torch import load_file
from typer.testing import CliRunner

from transdiff_cli import TransDiffPipeline
from transdiff_cli.cli import app
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.io.checkpoint import load_checkpoint
from transdiff_cli.core.reporting import SilentReporter
from transdiff_cli.core.training import distill as d
from transdiff_cli.core.training.teacher_pool import teacher_states
from transdiff_cli.core.training.train_run import RunRequest

STEPS = 4  # optimizer steps of the test runs
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def request(teacher, run, *, steps=STEPS, student_steps=2, cfg=None, **train) -> d.DistillRequest:
    opts = dict(batch_size=16, max_steps=steps, ckpt_every=2, log_every=1, grid_classes=2, grid_per_class=1, **train)
    run_req = RunRequest(run_dir=str(run), device="cpu", progress=False, reporter=SilentReporter(),
                         train_overrides=opts)
    return d.DistillRequest(run_req, str(teacher), student_steps=student_steps, teacher_steps=4, cfg=cfg,
                            pool_size=32)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("teacher") / "ck")  # cfg 1.5, 3 EM steps by default


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    result = d.run_distill(request(teacher, run))
    assert result.step == STEPS and not result.stopped_early
    return run


def test_teacher_is_its_own_student_when_the_grids_agree(teacher):
    """Without guidance and with one student step per teacher step, the target of every segment is
    the teacher's own velocity there: the loss of the initial student is zero."""
    model = load_checkpoint(teacher).model.float().eval()
    labels = torch.tensor([0, 3, 7])
    noise = torch.randn(3, model.config.num_tokens, model.config.token_dim, generator=torch.Generator().manual_seed(0))
    states = teacher_states(model, labels, noise, (1.0,), 4, 4)
    assert states.shape == (3, 1, 5, model.config.num_tokens, model.config.token_dim)
    assert torch.equal(states[:, 0, 0], noise)
    loss = d.TrajectoryMatching(model, 4)(states, labels)
    assert loss.item() < 1e-10
    guided = teacher_states(model, labels, noise, (3.0,), 4, 4)  # guidance changes the targets
    assert d.TrajectoryMatching(model, 4)(guided, labels).item() > 1e-7
    coarse = teacher_states(model, labels, noise, (3.0,), 4, 2)  # every second state of the fine run
    assert torch.allclose(coarse[:, 0], guided[:, 0, ::2])


def test_student_defaults_are_used_by_sample_and_the_api(student, tmp_path):
    ck = load_checkpoint(student)
    assert (ck.config.sampler, ck.config.sampling_steps, ck.config.cfg) == ("ode", 2, 1.0)
    assert ck.meta["distill"]["cfg"] == [1.5] and ck.meta["distill"]["student_steps"] == 2
    out = tmp_path / "s"
    invoke(["sample", "--ckpt", student, "--class", "3", "--num", 2, "--out", out, "--precision", "fp32"])
    doc = json.loads((out / "samples.json").read_text())["settings"]
    assert (doc["sampler"], doc["sampling_steps"], doc["cfg"]) == ("ode", 2, [1.0])
    assert doc["sources"]["sampler"] == doc["sources"]["sampling_steps"] == "checkpoint"
    pipe = TransDiffPipeline.from_pretrained(student, device="cpu", precision="fp32")
    s = pipe.settings()
    assert (s.sampler, s.sampling_steps, s.cfg) == ("ode", 2, [1.0]) and s.sources["sampler"] == "checkpoint"
    assert pipe.settings(sampler="em").sampler == "em"  # a user's choice still wins
    assert len(pipe(3, num_per_class=2, progress=False).images) == 2


def test_frozen_encoder_and_trained_decoder(teacher, student):
    ema_teacher = load_file(str(teacher / "ema.safetensors"))
    final = load_checkpoint(student).path
    for name in ("model.safetensors", "ema.safetensors"):
        got = load_file(str(final / name))
        assert got.keys() == ema_teacher.keys()
        frozen = [k for k in got if not k.startswith("decoder.")]
        assert frozen and all(torch.equal(got[k], ema_teacher[k]) for k in frozen)
        assert any(not torch.equal(got[k], ema_teacher[k]) for k in got if k.startswith("decoder."))


def test_interrupted_distill_resumes_to_the_uninterrupted_result(teacher, student, tmp_path, monkeypatch):
    run = tmp_path / "run"
    log = d.DistillTrainer._log

    def stop_at_2(self, *args, **kwargs):  # as if SIGINT arrived during step 2
        reason = log(self, *args, **kwargs)
        return "SIGINT" if self.step == 2 else reason

    monkeypatch.setattr(d.DistillTrainer, "_log", stop_at_2)
    first = d.run_distill(request(teacher, run))
    assert first.stopped_early and first.step == 2
    monkeypatch.setattr(d.DistillTrainer, "_log", log)
    pool = run / "teacher_pool" / "chunk_00000.safetensors"
    mtime = pool.stat().st_mtime_ns
    second = d.run_distill(request(teacher, run))  # the same request: resumes
    assert second.step == STEPS and pool.stat().st_mtime_ns == mtime  # the pool is reused, not redrawn
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(student / "checkpoints" / f"step_{STEPS:07d}" / name))
        b = load_file(str(run / "checkpoints" / f"step_{STEPS:07d}" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    with pytest.raises(TransDiffError, match="distill config"):  # other guidance: not this run
        d.run_distill(request(teacher, run, cfg="2"))


def test_bad_requests(teacher, student, tmp_path):
    with pytest.raises(TransDiffError, match="multiple of `student_steps`"):
        d.run_distill(request(teacher, tmp_path / "a", student_steps=3))
    with pytest.raises(TransDiffError, match="already a distilled student"):
        d.run_distill(request(student, tmp_path / "b"))
    r = runner.invoke(app, ["distill", "--from", str(teacher), "--run-dir", str(tmp_path / "c"), "--student-steps",
                            "3", "--teacher-steps", "4", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "--student-steps" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # refused before anything is written


def test_configs_without_a_sampler_are_unchanged():
    """Run folders and checkpoints written before the `sampler` field existed still match (resume)."""
    from transdiff_cli.core.model.config import ModelConfig

    assert "sampler" not in ModelConfig().to_dict()
    student = d.student_config(ModelConfig(), 4)
    assert student.to_dict()["sampler"] == "ode" and ModelConfig.from_dict(student.to_dict()) == student
