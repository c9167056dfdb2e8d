"""Property-based checks (Hypothesis, fixed seed, few examples) over the configuration schema and
the files a run reads: every bad value is one TransDiffError line naming its key (exit 2 and one
`error:` line through the CLI), every good value passes, and no metrics row or groups file
raises anything else."""

import json
import math
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from transdiff_cli.cli import app
from transdiff_cli.core.data.mrar_groups import read_groups
from transdiff_cli.core.errors import TransDiffError
from transdiff_cli.core.model.config import ModelConfig
from transdiff_cli.core.schema import MODEL_SCHEMA, TRAIN_SCHEMA, Spec, check_value
from transdiff_cli.core.training.run_dir import RunDir
from transdiff_cli.core.training.run_request import RunRequest, read_user_config

FAST = settings(max_examples=25, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCHEMAS = {"model": MODEL_SCHEMA, "train": TRAIN_SCHEMA}
runner = CliRunner()


def bad_values(spec: Spec) -> st.SearchStrategy:
    """Values a key must refuse: another type, or a number outside its range (or not finite)."""
    wrong_type = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                max_size=1))
    if spec.kind is bool:
        return st.one_of(wrong_type, st.integers(), st.text(max_size=4))
    if spec.kind is str:
        extra = [st.sampled_from(["", "nope", "Constant"])] if spec.choices else []
        return st.one_of(wrong_type, st.integers(), st.floats(allow_nan=False), *extra)
    if spec.kind == "floats":
        return st.one_of(st.integers(), st.text(min_size=1, max_size=4),
                         st.lists(st.floats(max_value=-0.001) | st.just(math.nan), min_size=1, max_size=2))
    numbers = [st.just(math.nan), st.just(math.inf), st.just(-math.inf)] if spec.kind is float else \
        [st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer())]
    if spec.low is not None:
        numbers.append(st.floats(max_value=spec.low - 1e-6, allow_nan=False, allow_infinity=False) if spec.kind is float
                       else st.integers(max_value=int(spec.low) - 1))
    if spec.above is not None:
        numbers.append(st.floats(max_value=spec.above, allow_nan=False, allow_infinity=False))
    if spec.high is not None:
        numbers.append(st.floats(min_value=spec.high * 1.01 + 1, allow_nan=False, allow_infinity=False)
                       if spec.kind is float else st.integers(min_value=int(spec.high) + 1))
    if spec.below is not None:
        numbers.append(st.floats(min_value=spec.below, max_value=1e6, allow_nan=False))
    return st.one_of(wrong_type, st.text(max_size=4), st.booleans(), *numbers,
                     *([] if spec.optional else [st.none()]))


def good_values(spec: Spec) -> st.SearchStrategy:
    if spec.kind is bool:
        return st.booleans()
    if spec.kind is str:
        return st.sampled_from(spec.choices) if spec.choices else st.text(min_size=1, max_size=8)
    if spec.kind == "floats":
        return st.lists(st.floats(min_value=0, max_value=spec.high), max_size=3)
    low = spec.low if spec.low is not None else (spec.above if spec.above is not None else -1e6)
    high = spec.high if spec.high is not None else (spec.below if spec.below is not None else 1e6)
    if spec.kind is int:
        return st.integers(min_value=int(low), max_value=int(min(high, 2**62)))
    return st.floats(min_value=low, max_value=high, exclude_min=spec.above is not None,
                     exclude_max=spec.below is not None, allow_nan=False)


def a_bad_key(section: str) -> st.SearchStrategy:
    keys = sorted(k for k in SCHEMAS[section] if k != "size")
    return st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), bad_values(SCHEMAS[section][k])))


@FAST
@given(section=st.sampled_from(["model", "train"]), data=st.data())
def test_every_bad_yaml_value_is_one_line_naming_key_file_and_line(section, data):
    key, value = data.draw(a_bad_key(section))
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({section: {key: value}}))
        with pytest.raises(TransDiffError) as e:
            read_user_config(RunRequest(config_file=str(cfg)))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key} ") and "cfg.yaml:2" in msg, msg


@FAST
@given(section=st.sampled_from(["model", "train"]), data=st.data())
def test_every_good_value_passes(section, data):
    key = data.draw(st.sampled_from(sorted(SCHEMAS[section])))
    spec = SCHEMAS[section][key]
    value = data.draw(good_values(spec))
    out = check_value(key, value, spec)
    assert out == value or (isinstance(value, float) and out == int(value))


# flags with a number type that typer parses: the schema must refuse what typer lets through
FLAG_KEYS = {"batch_size": "--batch-size", "grad_accum": "--grad-accum", "lr": "--lr", "base_lr": "--base-lr",
             "warmup_steps": "--warmup-steps", "warmup_epochs": "--warmup-epochs", "max_steps": "--max-steps",
             "epochs": "--epochs", "ema_rate": "--ema-rate", "seed": "--seed", "ckpt_every": "--ckpt-every",
             "log_every": "--log-every", "num_workers": "--num-workers", "eval_every": "--eval-every",
             "eval_images": "--eval-images"}


def bad_number(spec: Spec) -> st.SearchStrategy:
    numbers = bad_values(spec).filter(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    return numbers.filter(lambda v: spec.kind is float or isinstance(v, int) or math.isfinite(v) and v.is_integer())


@settings(max_examples=12, derandomize=True, deadline=None)
@given(data=st.data())
def test_bad_flags_give_exit_2_and_one_error_line(data):
    key = data.draw(st.sampled_from(sorted(FLAG_KEYS)))
    value = data.draw(bad_number(TRAIN_SCHEMA[key]))
    with tempfile.TemporaryDirectory() as d:
        result = runner.invoke(app, ["train", "--run-dir", str(Path(d) / "run"), FLAG_KEYS[key], str(value)])
        made = (Path(d) / "run").exists()
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    assert not made


@FAST
@given(width=st.integers(1, 512), heads=st.integers(1, 16))
def test_heads_must_divide_the_width(width, heads):
    if width % heads:
        with pytest.raises(TransDiffError, match="must divide"):
            ModelConfig(width=width, heads=heads)
    else:
        assert ModelConfig(width=width, heads=heads).width == width


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)
rows = st.one_of(json_values, st.fixed_dictionaries({"step": json_values, "loss": json_values}),
                 st.fixed_dictionaries({"step": st.integers(0, 50), "loss": st.floats(allow_nan=False)}))


@settings(max_examples=10, derandomize=True, deadline=None)
@given(lines=st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=20)), max_size=8))
def test_any_metrics_file_reads_truncates_and_plots(lines):
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped rows' warning
        run = RunDir(Path(d))
        run.metrics.write_text("\n".join(lines) + "\n")
        kept = run.read_metrics()
        assert all(isinstance(r["step"], int) and not isinstance(r["step"], bool) for r in kept)
        run.truncate_metrics(10)
        assert all(r["step"] <= 10 for r in run.read_metrics())
        run.plot_loss()


@FAST
@given(content=st.one_of(st.binary(max_size=60),
                         st.lists(rows.map(json.dumps), max_size=3).map(lambda ls: "\n".join(ls).encode())))
def test_any_groups_file_reads_or_is_one_line(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "groups.txt"
        p.write_bytes(content)
        try:
            groups = read_groups(p, 2)
        except TransDiffError as e:
            assert "\n" not in str(e) and str(p) in str(e)
        else:
            assert all(len(g.files) == 2 for g in groups)
