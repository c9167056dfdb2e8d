"""`transdiff demo`: the page's command line gives the page's pixels, bad input is a message, a real
browser (headless chromium through Playwright) generates and fuses, and Ctrl-C leaves nothing behind.

The browser test serves a tiny random checkpoint; TRANSDIFF_DEMO_CKPT serves another (a trained
digits run for the docs' picture), and TRANSDIFF_DEMO_SCREENSHOT names where the page's picture is
also saved (docs/demo.png).
"""

import importlib.util
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, make_tiny, png
from PIL import Image

import transdiff_cli
from transdiff_cli import TransDiffPipeline
from transdiff_cli.core.data.classes import class_label

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_S = 180  # a busy 2-core machine imports torch and gradio slowly (idle: ~10 s)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def need(what: str) -> None:
    """Skip without the demo's dependencies, except in CI, which installs them (.ci/browser-deps.sh)."""
    why = f"needs {what} (.ci/browser-deps.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode != "L" else image)


# --------------------------------------------------------------------------- without a browser
def test_missing_gradio_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from transdiff_cli.cli import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if not installed
    monkeypatch.delitem(sys.modules, "transdiff_cli.demo", raising=False)
    monkeypatch.delattr(transdiff_cli, "demo", raising=False)  # `from .. import demo` would find it there
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = CliRunner().invoke(app, ["demo", str(tmp_path / "nothing")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ['error: `transdiff demo` needs Gradio, which is not installed: '
                                             'pip install -e ".[demo]"']
    assert not list(tmp_path.iterdir())  # its work folder is removed


@pytest.fixture(scope="module")
def page():
    try:
        from transdiff_cli import demo
    except ModuleNotFoundError:
        need("gradio (the demo extra)")

    return demo


@pytest.fixture(scope="module")
def mrar(tmp_path_factory):
    ck = make_tiny(tmp_path_factory.mktemp("demo") / "mrar", mrar=True)
    return ck, TransDiffPipeline.from_pretrained(ck, device="cpu", precision="fp32")


def test_cli_command_gives_the_page_pixels(page, mrar, tmp_path, monkeypatch):
    ck, pipe = mrar
    source = page.Source.of(pipe, ck, None, "ema")
    assert source.precision == "fp32" and source.device == "cpu"
    defaults = page.resolved(pipe)
    request = page.make_request(pipe, defaults, "digit-3", "mrar", 3, "1.5", 3, defaults.sampler, 1.0, 0.7, 11, 3)
    assert request.options == {"rounds": 3, "scale_1": 0.7}  # only what differs from the checkpoint
    src = request.settings.sources  # provenance: what the page changed, the rest the checkpoint's
    assert src["rounds"] == src["scale_1"] == "flag" and src["cfg"] == src["scale_0"] == "checkpoint"
    assert src["sampler"] != "flag"
    shown = tmp_path / "page"
    shown.mkdir()
    got = page.generate(pipe, source, request, shown)
    doc = json.loads(got.settings_json.read_text())
    assert doc["command"] == got.command and doc["seed"] == 11 and doc["settings"]["rounds"] == 3
    argv = shlex.split(got.command)
    assert argv[:2] == ["transdiff", "sample"] and argv[argv.index("--out") + 1] == "samples"
    monkeypatch.chdir(tmp_path)
    invoke(argv[1:])  # the command exactly as shown, from a folder of its own
    cli = tmp_path / "samples"
    assert [p.name for p in got.pngs] == sorted(p.name for p in cli.glob("0*.png")) and len(got.pngs) == 3
    for p in got.pngs:
        assert np.array_equal(png(p), png(cli / p.name)), p.name
    for p in got.strips:  # every MRAR round, as `sample --save-rounds` draws it
        assert np.array_equal(png(p), png(cli / "rounds" / p.name)), p.name
    assert np.array_equal(png(got.grid), png(cli / "grid.png"))
    rounds = png(got.rounds)  # a row per image, a column per round
    assert rounds.shape[0] > rounds.shape[1] * 3 / 4 and not np.array_equal(png(got.strips[0]), png(got.strips[1]))


def test_bad_inputs_are_messages_on_the_page(page, mrar):
    import gradio as gr

    _, pipe = mrar
    defaults = page.resolved(pipe)
    ok = dict(class_value="7", mode="mrar", rounds=4, cfg="1.5", steps=3, sampler="em", scale_0=1, scale_1=1,
              seed=0, num=1)
    check = page.page_errors(lambda **kw: page.make_request(pipe, defaults, **{**ok, **kw}))
    assert check().label == 7 and check(class_value="digit-7").label == 7 and check(class_value="7: digit-7").label == 7
    for bad, words in [({"class_value": "tiger cat"}, "class"), ({"class_value": ""}, "choose a class"),
                       ({"class_value": "12"}, "out of range"), ({"steps": 0}, "sampling steps 0 is out of range"),
                       ({"steps": 1001}, "1 to 1000"), ({"steps": None}, "sampling steps is empty"),
                       ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"steps": float("inf")}, "sampling steps"),
                       ({"steps": "many"}, "not a number"), ({"num": 65}, "images"), ({"cfg": "strong"}, "cfg"),
                       ({"cfg": "1,2"}, "cfg"), ({"rounds": 5}, "rounds"), ({"sampler": "heun-9"}, "sampler"),
                       ({"scale_0": float("nan")}, "scale_0")]:
        with pytest.raises(gr.Error) as e:
            check(**bad)
        assert words in e.value.message and "Traceback" not in e.value.message, (bad, e.value.message)


def test_a_busy_port_is_one_error(page):
    import gradio as gr

    from transdiff_cli.core.errors import TransDiffError

    with gr.Blocks() as blocks:
        gr.Markdown("a page")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransDiffError, match=f"cannot listen on 127.0.0.1:{port} .*choose another `port`"):
            page.serve(blocks, host="127.0.0.1", port=port, share=False, ready=print)


# --------------------------------------------------------------------------- the server, in a real browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`transdiff demo` as a user starts it, in a folder of its own, with its own TMPDIR."""
    if importlib.util.find_spec("gradio") is None:
        need("gradio (the demo extra)")
    root = tmp_path_factory.mktemp("serve")
    ck = os.environ.get("TRANSDIFF_DEMO_CKPT") or str(make_tiny(root / "tiny"))
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    port = free_port()
    # torch's compile cache is shared by every transdiff command (made when the CLI imports timm): keep it
    # out of the TMPDIR that must end empty
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(root / "torchinductor")}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "transdiff_cli", "demo", ck, "--port", str(port), "--precision",
                             "fp32", "--device", "cpu"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the demo did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield {"proc": proc, "url": url, "ckpt": ck, "cwd": cwd, "tmp": tmp, "log": root / "server.log"}
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or CHROMIUM is None:
        need("playwright (the test extra) and Debian's chromium")
    return sync_playwright


def shown_image(page, selector: str, request) -> tuple[str, np.ndarray]:
    src = page.locator(selector).first.get_attribute("src")
    body = request.get(src).body()
    return src, pixels(Image.open(io.BytesIO(body)))


@pytest.mark.browser
def test_page_in_a_browser(server, tmp_path):
    sync_playwright = browser()
    pipe = TransDiffPipeline.from_pretrained(server["ckpt"], device="cpu", precision="fp32")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            ui = chromium.new_page(viewport={"width": 1280, "height": 1000})
            ui.set_default_timeout(30_000)
            ui.goto(server["url"])
            # choose class 7 by searching its name ("digit-7"; "7" in a trained digits run), and seed 5
            name = class_label(7, pipe.config.num_classes, pipe.class_names)
            ui.locator("#class input").fill(name)
            ui.get_by_role("option", name=f"7: {name}", exact=True).click()
            ui.locator("#seed input").fill("5")
            ui.locator("#num input").fill("8")
            ui.locator("#generate").click()
            ui.wait_for_selector("#images img[src*='00007_class7']")
            api = pipe([7], num_per_class=8, seed=5, progress=False)  # the page's defaults: the checkpoint's
            for i in range(8):
                _, got = shown_image(ui, f"#images img[src*='0000{i}_class7']", ui.request)
                assert np.array_equal(got, pixels(api.images[i])), i
            command = ui.locator("#command textarea").input_value()
            assert command.startswith("transdiff sample --ckpt ") and "--class index:7 --num 8 --seed 5" in command
            ui.wait_for_timeout(300)  # the gallery's fade-in
            shot = tmp_path / "demo.png"
            ui.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] == 1280
            if os.environ.get("TRANSDIFF_DEMO_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["TRANSDIFF_DEMO_SCREENSHOT"])

            # fuse: the first result, then the ratio slider dragged to its left end changes the fused image
            ui.get_by_role("tab", name="Fuse").click()
            ui.locator("#fuse").click()
            ui.wait_for_selector("#fuse-image-fused img")
            first_src, first = shown_image(ui, "#fuse-image-fused img", ui.request)
            box = ui.locator("#ratio input[type=range]").bounding_box()
            ui.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            ui.mouse.down()
            ui.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2, steps=5)
            ui.mouse.up()
            ui.wait_for_function("s => document.querySelector('#fuse-image-fused img')?.src !== s", arg=first_src)
            _, moved = shown_image(ui, "#fuse-image-fused img", ui.request)
            assert not np.array_equal(first, moved)

            # a bad input shows a message on the page
            ui.get_by_role("tab", name="Generate").click()
            ui.locator("#steps input").fill("0")
            ui.locator("#generate").click()
            assert "out of range" in ui.locator(".toast-body").first.inner_text()
        finally:
            chromium.close()


def test_ctrl_c_exits_130_and_leaves_nothing(server):
    """Runs after the browser test (the same server): SIGINT stops it with 130, its work folder (with
    Gradio's temp dir) is gone and the folder it ran in holds nothing new (no lock, no .gradio)."""
    proc = server["proc"]
    assert proc.poll() is None, server["log"].read_text()[-2000:]
    (work,) = server["tmp"].iterdir()
    assert work.name.startswith("transdiff-demo-") and (work / "gradio").is_dir()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, server["log"].read_text()[-2000:]
    assert list(server["tmp"].iterdir()) == []
    assert list(server["cwd"].iterdir()) == []
    assert "Traceback" not in server["log"].read_text()
