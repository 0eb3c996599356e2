"""The ``streamproc`` command line: one module per group of commands, all on one typer app."""
from __future__ import annotations

import sys
from typing import Optional

from . import describe, run, state  # noqa: F401 - importing registers the commands
from ._app import app, compile_file

__all__ = ["app", "main", "compile_file"]


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
