"""The `transdiff` command: a Typer app whose subcommands live in `transdiff_cli/commands/`."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .commands import (
    demo,
    distill,
    diversity,
    encode_latents,
    env,
    export,
    fid,
    figures,
    finetune_mrar,
    fuse,
    sample,
    train,
)
from .commands._common import register_flags, user_errors
from .core.distributed import adopt_slurm_launch

# flags renamed so that each word has one meaning (docs/architecture.md#words); the old spelling still
# works, unlisted in --help, for the commands that have the new one
RENAMED_FLAGS = {"--steps": "--rounds", "--save-steps": "--save-rounds", "--mrar-steps": "--mrar-rounds"}


def renamed_flags(command: TyperCommand | TyperGroup, args: list[str]) -> list[str]:
    """`args` with each old flag spelt as its new name, where `command` takes the new one."""
    known = {name for param in command.params for name in getattr(param, "opts", [])}
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        flag, eq, value = arg.partition("=")
        new = RENAMED_FLAGS.get(flag)
        if new in known:
            out[i] = new + eq + value
            typer.echo(f"note: {flag} is now {new}", err=True)
    return out


class _Group(TyperGroup):
    def resolve_command(self, ctx: typer.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, renamed_flags(command, rest) if command is not None else rest


app = typer.Typer(
    name="transdiff",
    cls=_Group,
    help="Train, sample and evaluate TransDiff: an autoregressive transformer that encodes a "
    "class (and, in MRAR mode, earlier images) into semantic features, and a rectified-flow "
    "diffusion decoder that turns them into images.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"transdiff {__version__}")
        raise typer.Exit()


@app.callback()
@user_errors
def root(version: bool = typer.Option(False, "--version", "-V", callback=show_version, is_eager=True,
                                      help="print the version and exit")) -> None:
    # a task started by srun joins the process group as torchrun's workers do (before any command
    # picks its device from LOCAL_RANK)
    adopt_slurm_launch()


for module in (encode_latents, train, finetune_mrar, distill, sample, fuse, diversity, fid, export, figures, demo, env):
    module.register(app)
register_flags(typer.main.get_command(app))  # core messages name parameters; errors show the flags


def main() -> None:
    app()


if __name__ == "__main__":
    main()
