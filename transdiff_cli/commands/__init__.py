"""Thin CLI subcommands: parse options, resolve paths and devices, call `transdiff_cli.core`."""
