"""``streamproc describe``."""
from __future__ import annotations

import json

import typer
from rich.console import Console

from ..errors import TopologyError
from ._app import app, compile_file, guarded, warn_generated_names


@app.command()
@guarded
def describe(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    format: str = typer.Option("tree", "--format", "-f", help="tree or json"),
):
    """Show the compiled topology: sub-topologies, topics, processors and stores."""
    from ..plan.describe import render_tree, to_dict
    from ..loader import split_spec

    if format not in ("tree", "json"):
        raise TopologyError(f"--format must be 'tree' or 'json', got {format!r}")
    _, plan = compile_file(topology)
    warn_generated_names(plan)
    if format == "json":
        typer.echo(json.dumps(to_dict(plan), indent=2))
    else:
        Console(highlight=False).print(render_tree(plan, split_spec(topology)[0]))
