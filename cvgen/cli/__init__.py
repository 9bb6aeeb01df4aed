"""The `cvgen` command line: one module per command group, each turning the library's errors into
one line."""

from cvgen.cli.main import main

__all__ = ["main"]
