"""`python -m transdiff_cli`: the `transdiff` command."""

from .cli import main

if __name__ == "__main__":
    main()
