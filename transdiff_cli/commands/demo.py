"""`transdiff demo`: serve the web page of `transdiff_cli/demo.py` (Gradio, the `demo` extra)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import ModuleType

import typer

from ..core.errors import TransDiffError
from . import _sampling_options as so
from ._common import console, help_text, user_errors

HELP = """Serve a web page to try a checkpoint: generate (every MRAR round as a strip), fuse two classes,
decode from the first k semantic features, and download each image with a settings.json and the
`transdiff sample` command that gives the same pixels.

Without CKPT the newest run under runs/ is served (straight after `transdiff train`). The page is
local (--host 127.0.0.1); on a GPU box, reach it through an SSH tunnel (ssh -L 7860:localhost:7860
HOST) rather than --host 0.0.0.0 or --share. Ctrl-C stops the server (exit code 130) and removes
its temporary folder. Needs the demo extra: pip install -e ".\\[demo]".

Example:

    transdiff demo runs/digits-tiny --port 7860

    transdiff demo ck.pth --vae kl16:kl16.ckpt --device cuda
"""

EXTRA = 'pip install -e ".[demo]"'


def load_page() -> ModuleType:
    """The page module, imported only now: Gradio costs seconds to import and is an optional extra."""
    try:
        from .. import demo as page
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("gradio", "gradio_client"):
            raise
        raise TransDiffError(f"`transdiff demo` needs Gradio, which is not installed: {EXTRA}") from None
    return page


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does: the work folder is removed


def register(app: typer.Typer) -> None:
    @app.command("demo", help=help_text(HELP))
    @user_errors
    def demo(
        ckpt: str = typer.Argument(None, help="run folder, checkpoint folder, exported folder, published .pth or "
                                   "hf://OWNER/REPO/FILE (default: the newest run under runs/)", show_default=False),
        vae: so.Vae = None,
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
        port: int = typer.Option(7860, "--port", min=1, max=65535, help="port to listen on"),
        share: bool = typer.Option(False, "--share", help="also open a public Gradio share link (needs internet)"),
        precision: so.Precision = "auto",
        device: so.Device = None,
        weights: so.Weights = "ema",
    ) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="transdiff-demo-"))
        previous = signal.signal(signal.SIGTERM, interrupt)
        environ = dict(os.environ)
        try:
            # read when Gradio is imported: its files go into our folder (removed on exit), and it calls
            # no server of its own
            os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
            os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
            page = load_page()
            from ..core.io.checkpoint import newest_run_checkpoint
            from ..pipeline import TransDiffPipeline

            source = str(newest_run_checkpoint("runs") if ckpt is None else ckpt)
            pipe = TransDiffPipeline.from_pretrained(source, vae=vae, device=device, precision=precision,
                                                     weights=weights)
            info = page.Source.of(pipe, source, vae, weights)
            console.print(f"serving {info.checkpoint} ({info.device}, {info.precision})", highlight=False)
            page.serve(page.build(pipe, info, workdir), host=host, port=port, share=share,
                       ready=lambda url: console.print(f"open {url} (Ctrl-C to stop)", highlight=False))
        finally:
            signal.signal(signal.SIGTERM, previous)
            os.environ.clear()
            os.environ.update(environ)
            shutil.rmtree(workdir, ignore_errors=True)
