"""The ``streamproc`` command line (typer).

Every command turns a ``StreamprocError`` into one paragraph on stderr and an exit code:
2 for a bad topology (file, import, validation), 1 for everything else. No traceback walls.
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Optional

import typer
from rich.console import Console

from ..errors import StreamprocError, TopologyError, TopologyLoadError

app = typer.Typer(
    name="streamproc",
    help="Stateful stream processing on Apache Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True, highlight=False)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level (default: warnings only)."),
):
    """Stateful stream processing on Apache Kafka."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )


def _guarded(fn):
    """Run a command; report streamproc errors for people and exit with the right code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TopologyError, TopologyLoadError) as e:
            _err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(2) from None
        except StreamprocError as e:
            _err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def compile_file(spec: str):
    """Load the topology at ``spec`` and compile it (errors name the file)."""
    from ..plan import compile_topology
    from .loader import load_topology, split_spec

    topology = load_topology(spec)
    try:
        return topology, compile_topology(topology)
    except TopologyError as e:
        raise TopologyError(f"{split_spec(spec)[0]}: invalid topology: {e}") from None


@app.command()
@_guarded
def describe(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    format: str = typer.Option("tree", "--format", "-f", help="tree or json"),
):
    """Show the compiled topology: sub-topologies, topics, processors and stores."""
    from ..plan.describe import render_tree, to_dict
    from .loader import split_spec

    if format not in ("tree", "json"):
        raise TopologyError(f"--format must be 'tree' or 'json', got {format!r}")
    _, plan = compile_file(topology)
    if format == "json":
        typer.echo(json.dumps(to_dict(plan), indent=2))
    else:
        Console(highlight=False).print(render_tree(plan, split_spec(topology)[0]))


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
