"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class TransDiffError(Exception):
    """A problem with the user's input (paths, options, checkpoints) rather than a bug."""

    exit_code = 2
