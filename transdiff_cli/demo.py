"""`transdiff demo`'s web page (Gradio): generate and watch every MRAR round, fuse two classes, decode
from the first k semantic features, and download each image with the settings that reproduce it.

Every image comes from `TransDiffPipeline` (no sampling code here); this module only turns the
page's fields into the pipeline's arguments, checks them, and writes what the page shows into a
folder the command owns (removed when the server stops). Imported only by `transdiff demo`, so the
CLI starts without Gradio.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .core.data.classes import class_label
from .core.data.images import from_uint8, make_grid
from .core.device import PRECISIONS
from .core.errors import TransDiffError
from .core.sampling.eval_settings import FLAG
from .core.sampling.fuse import PATTERNS
from .core.sampling.outputs import GRID_PNG, file_name, strip_file
from .core.sampling.samplers import SAMPLERS
from .core.sampling.settings import SampleSettings, parse_cfg
from .core.validate import check_seed
from .pipeline import TransDiffPipeline

MAX_STEPS = 1000  # sampling steps the page accepts (the authors evaluate with 100)
MAX_IMAGES = 64
BATCH_SIZE = 16  # images per batch; the command shown names it (the same batches give the same pixels)
SETTINGS_JSON = "settings.json"
KEEP_OUTPUTS_S = 3600  # a page's earlier downloads are removed after an hour
# 8x8 digits are shown large and sharp: galleries scale their thumbnails, single images fill their box
CSS = """.pixelated img { image-rendering: pixelated; }
.upscaled img { width: 100%; height: 100%; object-fit: contain; }"""


def absolute(source: str, kind: bool = False) -> str:
    """A local path made absolute (the command shown runs from any folder); `kind`: "kl16:PATH"."""
    head, sep, path = source.partition(":") if kind else ("", "", source)
    return f"{head}{sep}{Path(path).resolve()}" if path and Path(path).exists() else source


@dataclass
class Source:
    """How the pipeline was opened: the CLI options that give its pixels again."""

    checkpoint: str
    vae: str | None
    device: str
    precision: str  # the resolved dtype (fp32, bf16, fp16), never "auto"
    weights: str = "ema"

    @classmethod
    def of(cls, pipe: TransDiffPipeline, checkpoint: str | Path, vae: str | None, weights: str) -> Source:
        device, dtype = pipe.device, next(pipe.model.parameters()).dtype
        precision = next(name for name, dt in PRECISIONS.items() if dt == dtype)
        return cls(absolute(str(pipe.checkpoint.path or checkpoint)), vae and absolute(vae, kind=True), str(device),
                   precision, weights)

    def flags(self) -> list[str]:
        out = ["--ckpt", self.checkpoint]
        if self.vae:
            out += ["--vae", self.vae]
        if self.weights != "ema":
            out += ["--weights", self.weights]
        return out + ["--precision", self.precision, "--device", self.device]


# ----------------------------------------------------------------------------- the page's fields, checked
def class_choices(pipe: TransDiffPipeline) -> list[tuple[str, str]]:
    """(shown, value) per class: "7: digit-7" searchable by index and name, the index as value."""
    n = pipe.config.num_classes
    return [(f"{y}: {class_label(y, n, pipe.class_names)}", str(y)) for y in range(n)]


def pick_class(pipe: TransDiffPipeline, value: Any, what: str = "class") -> int:
    """A class typed or picked on the page: an index, a name, or a shown label ("7: digit-7")."""
    text = "" if value is None else str(value).strip()
    if not text:
        raise TransDiffError(f"choose a {what} (type its index or name)")
    shown = dict(class_choices(pipe))
    return pipe.labels(shown.get(text, text))[0]


def whole(value: Any, name: str, low: int, high: int) -> int:
    """A whole number from a page field (numbers arrive as int or float; ints are kept exact)."""
    if value is None or value == "":
        raise TransDiffError(f"{name} is empty: give a whole number from {low} to {high}")
    try:
        v = value if isinstance(value, int) else float(value)
    except ValueError:
        raise TransDiffError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(v) or v != int(v) or not low <= v <= high:
        raise TransDiffError(f"{name} {value} is out of range: give a whole number from {low} to {high}")
    return int(v)


def number(value: Any, name: str) -> float:
    if value is None or value == "":
        raise TransDiffError(f"{name} is empty: give a number")
    try:
        return float(value)
    except ValueError:
        raise TransDiffError(f"{name} {value!r} is not a number") from None


def parse_scales(text: Any, rounds: int) -> list[float]:
    try:
        return parse_cfg(str(text), rounds)
    except ValueError:
        raise TransDiffError(f"cfg {text!r} is not a number or a comma-separated list of numbers") from None


@dataclass
class Request:
    """One Generate click: the pipeline's arguments, given only where the page differs from the
    checkpoint's defaults (so the provenance shown stays "checkpoint" for the rest)."""

    label: int
    num: int
    seed: int
    options: dict[str, Any]
    settings: SampleSettings  # what the pipeline will use (resolved before sampling, to fail early)


def make_request(pipe: TransDiffPipeline, defaults: SampleSettings, class_value: Any, mode: str, rounds: Any,
                 cfg: Any, steps: Any, sampler: str, scale_0: Any, scale_1: Any, seed: Any, num: Any) -> Request:
    label = pick_class(pipe, class_value)
    options: dict[str, Any] = {}
    if mode != defaults.mode:
        options["mode"] = mode
    if mode == "mrar":
        k = whole(rounds, "rounds", 1, pipe.config.mrar_rounds)
        if k != defaults.rounds:
            options["rounds"] = k
    base = resolved(pipe, **options)  # the checkpoint's settings for this mode and number of rounds
    given = {"cfg": parse_scales(cfg, base.rounds), "sampling_steps": whole(steps, "sampling steps", 1, MAX_STEPS),
             "sampler": sampler, "scale_0": number(scale_0, "scale_0"), "scale_1": number(scale_1, "scale_1")}
    options.update({name: v for name, v in given.items() if v != getattr(base, name)})
    seed_v = check_seed(whole(seed, "seed", 0, 2**63 - 1))
    num_v = whole(num, "number of images", 1, MAX_IMAGES)
    return Request(label, num_v, seed_v, options, resolved(pipe, **options))


def resolved(pipe: TransDiffPipeline, **options: Any) -> SampleSettings:
    """`pipe.settings`, with the sampler's provenance kept when the page leaves it alone."""
    return pipe.settings(**{"sampler": None, **options})


def cli_command(source: Source, request: Request, out: str = "samples") -> list[str]:
    """`transdiff sample` arguments that draw exactly the page's images (every setting spelled out,
    so a later change of the checkpoint's defaults cannot change them)."""
    s = request.settings
    argv = ["transdiff", "sample", *source.flags(), "--class", f"index:{request.label}", "--num", str(request.num),
            "--seed", str(request.seed), "--batch-size", str(BATCH_SIZE), "--mode", s.mode]
    if s.mode == "mrar":
        argv += ["--rounds", str(s.rounds)]
    argv += ["--cfg", ",".join(repr(v) for v in s.cfg), "--sampling-steps", str(s.sampling_steps),
             "--sampler", s.sampler, "--scale-0", repr(s.scale_0), "--scale-1", repr(s.scale_1)]
    if s.rounds > 1:
        argv.append("--save-rounds")
    return argv + ["--out", out]


def provenance(settings: SampleSettings) -> str:
    """A markdown table: each setting, its value and where it came from."""
    src = settings.sources
    rows = [("mode", settings.mode), ("rounds", settings.rounds), ("cfg", ", ".join(f"{c:g}" for c in settings.cfg)),
            ("sampling_steps", settings.sampling_steps), ("sampler", settings.sampler),
            ("scale_0", f"{settings.scale_0:g}"), ("scale_1", f"{settings.scale_1:g}")]
    where = lambda name: "set on this page" if src.get(name) == FLAG else src.get(name, "?")  # noqa: E731
    return "| setting | value | from |\n| --- | --- | --- |\n" + "\n".join(
        f"| {name} | {value} | {where(name)} |" for name, value in rows)


# ----------------------------------------------------------------------------- what the page writes
def as_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, C, H, W) in [-1, 1], exactly (`to_uint8` gives the same bytes back)."""
    arrays = [np.asarray(im) for im in images]
    return from_uint8(np.stack([a[..., None] if a.ndim == 2 else a for a in arrays]))


class Outputs:
    """A fresh folder per result under the command's work folder; folders older than an hour go."""

    def __init__(self, root: Path):
        self.root = root

    def fresh(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.iterdir():
            if old.is_dir() and time.time() - old.stat().st_mtime > KEEP_OUTPUTS_S:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root))


@dataclass
class Generated:
    pngs: list[Path]
    strips: list[Path]  # one per image: its MRAR rounds left to right (`sample --save-rounds`)
    grid: Path
    rounds: Path  # every image's strip in one picture, a row per image
    settings_json: Path
    doc: dict[str, Any]
    command: str


def generate(pipe: TransDiffPipeline, source: Source, request: Request, folder: Path) -> Generated:
    """Sample `request` and write the CLI's files for it: one PNG per image, grid.png, a strip of
    every MRAR round per image (rounds/), and settings.json (the settings, seed and command)."""
    out = pipe([request.label], num_per_class=request.num, seed=request.seed, batch_size=BATCH_SIZE,
               **request.options)
    names = [file_name(i, y) for i, y in enumerate(out.labels)]
    pngs = []
    for im, name in zip(out.images, names):
        im.save(folder / name)
        pngs.append(folder / name)
    grid = folder / GRID_PNG
    make_grid(as_tensor(out.images)).save(grid)  # one class: the CLI's grid (square, no rows per class)
    strips = []
    for i, name in enumerate(names):
        path = strip_file(folder, name)
        path.parent.mkdir(exist_ok=True)
        make_grid(as_tensor([r[i] for r in out.round_images]), nrow=len(out.round_images)).save(path)
        strips.append(path)
    rounds = folder / "rounds.png"
    per_image = [im for i in range(len(names)) for im in (r[i] for r in out.round_images)]
    make_grid(as_tensor(per_image), nrow=len(out.round_images)).save(rounds)
    argv = cli_command(source, request)
    n = pipe.config.num_classes
    doc = {"checkpoint": source.checkpoint, "vae": source.vae, "weights": source.weights, "device": source.device,
           "precision": source.precision, "class": request.label,
           "name": class_label(request.label, n, pipe.class_names), "num_per_class": request.num,
           "seed": request.seed, "batch_size": BATCH_SIZE, "settings": request.settings.to_dict(), "images": names,
           "command": shlex.join(argv)}
    settings_json = folder / SETTINGS_JSON
    settings_json.write_text(json.dumps(doc, indent=1))
    return Generated(pngs, strips, grid, rounds, settings_json, doc, shlex.join(argv))


# ----------------------------------------------------------------------------- the page
def page_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input becomes a message on the page (gr.Error), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (TransDiffError, ValueError, TypeError) as e:
            raise gr.Error(str(e).replace("`", ""), print_exception=False) from None

    return wrapper


def build(pipe: TransDiffPipeline, source: Source, workdir: Path) -> gr.Blocks:
    """The page for `pipe`: Generate, Fuse, Features (each image also offered as a download)."""
    defaults = resolved(pipe)
    outputs = Outputs(workdir / "outputs")
    choices = class_choices(pipe)
    first, second = choices[0][1], choices[min(1, len(choices) - 1)][1]
    mc = pipe.config
    feature_slots = pipe.features([0]).shape[1]

    def class_picker(label: str, value: str, elem_id: str) -> gr.Dropdown:
        return gr.Dropdown(choices, value=value, label=label, filterable=True, allow_custom_value=True,
                           elem_id=elem_id, info="type an index or a name")

    with gr.Blocks(title="TransDiff demo") as page:
        gr.Markdown(f"## TransDiff: `{source.checkpoint}`\n{mc.num_classes} classes, "
                    f"{'MRAR (' + str(mc.mrar_rounds) + ' rounds)' if mc.mrar else '1-step'}, "
                    f"{source.device}, {source.precision}")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    klass = class_picker("class", first, "class")
                    modes = ["1step", "mrar"] if mc.mrar else ["1step"]
                    mode = gr.Radio(modes, value=defaults.mode, label="mode", elem_id="mode")
                    rounds = gr.Slider(1, max(mc.mrar_rounds, 1), value=defaults.rounds, step=1, label="MRAR rounds",
                                       visible=mc.mrar, elem_id="rounds")
                    cfg = gr.Textbox(", ".join(repr(v) for v in defaults.cfg) if len(set(defaults.cfg)) > 1
                                     else repr(defaults.cfg[0]), label="cfg (one scale, or one per MRAR round)",
                                     elem_id="cfg")
                    steps = gr.Number(defaults.sampling_steps, precision=0, label=f"sampling steps (1-{MAX_STEPS})",
                                      elem_id="steps")
                    sampler = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="sampler", elem_id="sampler")
                    with gr.Row():
                        scale_0 = gr.Number(defaults.scale_0, label="scale_0 (drift)", elem_id="scale_0")
                        scale_1 = gr.Number(defaults.scale_1, label="scale_1 (noise)", elem_id="scale_1")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                        num = gr.Number(4, precision=0, label=f"images (1-{MAX_IMAGES})", elem_id="num")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    images = gr.Gallery(label="images", columns=4, format="png", elem_id="images",
                                        elem_classes="pixelated", object_fit="contain", height="auto")
                    strips = gr.Image(label="every MRAR round, left to right (a row per image)", type="filepath",
                                      format="png", elem_id="rounds-strips", elem_classes=["pixelated", "upscaled"],
                                      visible=mc.mrar, interactive=False, height=320)
                    used = gr.Markdown(provenance(defaults), elem_id="provenance")
            with gr.Accordion("Downloads", open=True):
                files = gr.File(label="every image as a PNG, the grid, the MRAR strips and settings.json",
                                file_count="multiple", elem_id="downloads")
                command = gr.Textbox(label="the same pixels from the command line", buttons=["copy"],
                                     elem_id="command", interactive=False)
        sampling = [cfg, steps, sampler, scale_0, scale_1]
        with gr.Tab("Fuse", id="fuse"):
            gr.Markdown("A share of the condition's slots from class A, the rest from class B (paper §4.2.2); "
                        "A, the fusion and B are decoded from one noise, with the Generate tab's sampling settings.")
            with gr.Row():
                fa = class_picker("class A", first, "fuse-a")
                fb = class_picker("class B", second, "fuse-b")
                ratio = gr.Slider(0, 1, value=0.5, step=1 / mc.num_slots if mc.num_slots <= 256 else 0.01,
                                  label="share of slots from A", elem_id="ratio")
                pattern = gr.Dropdown(list(PATTERNS), value="halves", label="pattern", elem_id="pattern")
                fseed = gr.Number(0, precision=0, label="seed", elem_id="fuse-seed")
            fuse_go = gr.Button("Fuse", variant="primary", elem_id="fuse")
            with gr.Row():
                shown = dict(type="pil", format="png", elem_classes=["pixelated", "upscaled"], height=256,
                             interactive=False)
                ia = gr.Image(label="A", elem_id="fuse-image-a", **shown)
                ifused = gr.Image(label="fused", elem_id="fuse-image-fused", **shown)
                ib = gr.Image(label="B", elem_id="fuse-image-b", **shown)
        with gr.Tab("Features", id="features"):
            gr.Markdown("Decode from the first k semantic features only (the decoder cross-attends to those "
                        "slots alone), beside the image from all of them: how much detail do k features carry?")
            with gr.Row():
                fc = class_picker("class", first, "features-class")
                k = gr.Slider(1, feature_slots, value=max(1, feature_slots // 4), step=1,
                              label="decode from the first k features", elem_id="k")
                kseed = gr.Number(0, precision=0, label="seed", elem_id="features-seed")
            k_go = gr.Button("Decode", variant="primary", elem_id="decode")
            with gr.Row():
                ik = gr.Image(label="first k features", elem_id="features-k", **shown)
                iall = gr.Image(label=f"all {feature_slots} features", elem_id="features-all", **shown)

        @page_errors
        def on_generate(class_value, mode_v, rounds_v, cfg_v, steps_v, sampler_v, s0, s1, seed_v, num_v,
                        progress=gr.Progress(track_tqdm=True)):
            request = make_request(pipe, defaults, class_value, mode_v, rounds_v, cfg_v, steps_v, sampler_v, s0, s1,
                                   seed_v, num_v)
            progress(0, desc="sampling")
            g = generate(pipe, source, request, outputs.fresh())
            mrar = request.settings.rounds > 1
            return ([str(p) for p in g.pngs], gr.Image(value=str(g.rounds) if mrar else None, visible=mrar),
                    provenance(request.settings),
                    [str(p) for p in [*g.pngs, g.grid, *(g.strips if mrar else []), g.settings_json]], g.command)

        go.click(on_generate, [klass, mode, rounds, cfg, steps, sampler, scale_0, scale_1, seed, num],
                 [images, strips, used, files, command])
        mode.change(lambda m: gr.Slider(visible=m == "mrar"), mode, rounds)

        def sampling_options(cfg_v, steps_v, sampler_v, s0, s1) -> dict[str, Any]:
            """The Generate tab's settings for one 1-step decode (the first scale of a per-round cfg)."""
            first = str(cfg_v).split(",")[0]
            return {"cfg": parse_scales(first, 1)[0], "sampling_steps": whole(steps_v, "sampling steps", 1, MAX_STEPS),
                    "sampler": sampler_v, "scale_0": number(s0, "scale_0"), "scale_1": number(s1, "scale_1")}

        @page_errors
        def on_fuse(a, b, ratio_v, pattern_v, seed_v, *settings, progress=gr.Progress()):
            progress(0, desc="fusing")
            out = pipe.fuse(pick_class(pipe, a, "class A"), pick_class(pipe, b, "class B"), float(ratio_v),
                            pattern_v, seed=check_seed(whole(seed_v, "seed", 0, 2**63 - 1)),
                            **sampling_options(*settings))
            return tuple(out.images)

        fuse_inputs = [fa, fb, ratio, pattern, fseed, *sampling]
        fuse_go.click(on_fuse, fuse_inputs, [ia, ifused, ib])
        ratio.release(on_fuse, fuse_inputs, [ia, ifused, ib])

        @page_errors
        def on_features(c, k_v, seed_v, *settings, progress=gr.Progress()):
            progress(0, desc="decoding")
            y = pick_class(pipe, c)
            seed_i = check_seed(whole(seed_v, "seed", 0, 2**63 - 1))
            feats = pipe.features([y])
            options = sampling_options(*settings)
            part = pipe.decode(feats, slots=whole(k_v, "k", 1, feature_slots), seed=seed_i, **options)
            full = pipe.decode(feats, seed=seed_i, **options)
            return part.images[0], full.images[0]

        k_inputs = [fc, k, kseed, *sampling]
        k_go.click(on_features, k_inputs, [ik, iall])
        k.release(on_features, k_inputs, [ik, iall])
    return page


def serve(page: gr.Blocks, *, host: str, port: int, share: bool, ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt, re-raised after the server closed)."""
    page.queue(default_concurrency_limit=1)  # one model: requests take turns
    try:
        _, url, share_url = page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                        quiet=True, ssr_mode=False, run_history=False, footer_links=[], css=CSS,
                                        show_error=False)
    except OSError as e:
        if "port" not in str(e).lower():
            raise
        raise TransDiffError(f"cannot listen on {host}:{port} (in use, or not an address of this machine): "
                             "choose another `port` or `host`") from None
    ready(share_url or url)
    try:
        while True:
            time.sleep(0.2)
    finally:
        page.close()
