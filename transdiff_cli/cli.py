"""The `transdiff` command: a Typer app whose subcommands live in `transdiff_cli/commands/`."""

from __future__ import annotations

import typer

from .commands import diversity, encode_latents, fid, finetune_mrar, fuse, sample, train

app = typer.Typer(
    name="transdiff",
    help="Train, sample and evaluate TransDiff: an autoregressive transformer that encodes a "
    "class (and, in MRAR mode, earlier images) into semantic features, and a rectified-flow "
    "diffusion decoder that turns them into images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (encode_latents, train, finetune_mrar, sample, fuse, diversity, fid):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
