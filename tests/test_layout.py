"""The package's shape: no import circles (lazy imports inside functions count too), no import
climbs a layer (the order is written down in docs/architecture.md#layers), no command module imports
another, nothing below the commands imports typer, rich or gradio, and gradio is imported only when
`transdiff demo` runs."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "transdiff_cli"


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module (of any package) `path` imports, at any depth of the file."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_import_graph_has_no_circles():
    mods = modules()
    graph = {m: {t for t in imports(m, p) if t in mods and t != m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph[u]):
            if state.get(v) == 1 and not v.startswith(u + "."):
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]) if v in stack else f"{u} -> {v}")
            elif v not in state:
                visit(v, stack + [v])
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing nothing from its modules can't close a circle; all others count
    assert not cycles, cycles


# Lowest first. A module may import its own layer and the layers below it, never one above.
# Names are relative to transdiff_cli; "" is the package itself (its __init__ exposes the pipeline).
LAYERS = [
    ("foundation", ["core", "core.errors", "core.fs", "core.reporting", "core.validate", "core.distributed",
                    "core.flow"]),
    ("model", ["core.model"]),
    ("device, io", ["core.device", "core.io"]),
    ("data", ["core.data"]),
    ("sampling", ["core.sampling"]),
    ("eval", ["core.eval"]),
    ("share", ["core.share"]),
    ("training", ["core.training"]),
    ("environment", ["core.environment"]),
    ("pipeline", ["pipeline", "", "figures"]),
    ("commands", ["commands", "demo"]),  # demo: `transdiff demo`'s page, imported by its command
    ("cli", ["cli", "__main__"]),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming `module` (every module must have one)."""
    name = module.removeprefix("transdiff_cli").removeprefix(".")
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of LAYERS"
    return rank


def test_no_import_climbs_a_layer():
    mods = modules()
    climbs = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                    for m, p in mods.items() for t in imports(m, p)
                    if t in mods and layer_of(t) > layer_of(m))
    assert not climbs, climbs


def test_layer_rule_catches_a_climb_and_the_docs_state_the_order():
    assert layer_of("transdiff_cli.core.model.transdiff") < layer_of("transdiff_cli.core.sampling.samplers")
    assert layer_of("transdiff_cli.core.flow") < layer_of("transdiff_cli.core.model.transdiff")
    assert layer_of("transdiff_cli.core") < layer_of("transdiff_cli.core.model")  # the longest prefix wins
    order = " < ".join(name for name, _ in LAYERS)
    assert order in (PKG.parent / "docs" / "architecture.md").read_text(), order


def test_no_command_imports_another_command():
    """Each `commands/<name>.py` is one command and reads on its own: what commands share lives in the
    `_` modules beside them (`_common`, `_sampling_options`, `_train_options`), never in a command."""
    commands = {m: p for m, p in modules().items()
                if m.startswith("transdiff_cli.commands.") and not m.rsplit(".", 1)[1].startswith("_")}
    assert {"transdiff_cli.commands.sample", "transdiff_cli.commands.fid"} <= set(commands)
    found = sorted(f"{m} imports {t}" for m, p in commands.items() for t in imports(m, p) if t in commands and t != m)
    assert not found, found


def test_no_terminal_libraries_below_the_commands():
    mods = modules()
    core = {m: p for m, p in mods.items() if m.startswith("transdiff_cli.core") or m == "transdiff_cli.pipeline"}
    ui = ("typer", "rich", "gradio")
    offenders = {m: sorted(t for t in imports(m, p) if t.split(".")[0] in ui) for m, p in core.items()}
    assert not {m: t for m, t in offenders.items() if t}


def test_gradio_is_imported_only_by_the_demo_page_and_lazily():
    """Only `transdiff_cli.demo` imports gradio, and nothing imports that page at module level (the
    CLI starts without gradio; `transdiff demo` imports it when it runs)."""
    mods = modules()
    users = sorted(m for m, p in mods.items() if any(t.split(".")[0] == "gradio" for t in imports(m, p)))
    assert users == ["transdiff_cli.demo"]
    eager = []
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.parse(p.read_text()).body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] + [node.module or ""])
                names = {base.rstrip(".")} | {f"{base}.{a.name}".replace("..", ".") for a in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module or ""}
            else:
                continue
            if names & {"transdiff_cli.demo", "gradio"} and m != "transdiff_cli.demo":
                eager.append(m)
    assert not eager


def test_core_messages_name_parameters_not_flags():
    """Below the commands, messages name parameters (`sampling_steps`); the CLI maps them to flags."""
    import io
    import re
    import tokenize

    flag = re.compile(r"--[a-z]")
    argv = re.compile(r"--(nproc_per_node|nnodes|node_rank|master_addr|master_port|revision)")  # other programs
    found = []
    for m, p in modules().items():
        if not (m.startswith("transdiff_cli.core") or m == "transdiff_cli.pipeline"):
            continue
        for t in tokenize.generate_tokens(io.StringIO(p.read_text()).readline):
            doc = t.string.lstrip("rfbuRFBU").startswith(('"""', "'''"))  # docstrings may show CLI usage
            if t.type == tokenize.STRING and not doc and flag.search(t.string) and not argv.search(t.line):
                found.append(f"{p.name}:{t.start[0]}")
    assert not found


def test_parameter_names_become_flags_on_the_command_line(tmp_path):
    import pytest
    from typer.testing import CliRunner

    from transdiff_cli.cli import app
    from transdiff_cli.core.errors import TransDiffError
    from transdiff_cli.core.model.config import ModelConfig
    from transdiff_cli.core.sampling.settings import sample_settings

    with pytest.raises(TransDiffError, match="`sampling_steps` must be at least 1"):  # the API's spelling
        sample_settings(ModelConfig(num_classes=2, latent_channels=1, latent_size=4, patch_size=2), sampling_steps=0)
    from conftest import make_tiny

    ck = make_tiny(tmp_path / "ck")
    r = CliRunner().invoke(app, ["sample", "--ckpt", str(ck), "--sampling-steps", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--sampling-steps must be at least 1" in r.output and "`" not in r.output


def test_test_files_share_helpers_only_through_conftest():
    """No test module imports another (helpers and fixtures live in conftest.py), and test files are
    named by the behaviour they check, not by the issue that brought them."""
    tests = Path(__file__).resolve().parent
    names = {p.stem for p in tests.glob("test_*.py")}
    for p in tests.glob("*.py"):
        found = imports(p.stem, p)
        assert not {t.split(".")[0] for t in found} & names, p.name
        assert "issue" not in p.stem, p.name


def test_click_is_not_imported():
    """typer carries its own click; the separate `click` package is not a dependency, so a bare
    install would fail to start if any module imported it."""
    for name, path in modules().items():
        assert not {t for t in imports(name, path) if t == "click" or t.startswith("click.")}, name
