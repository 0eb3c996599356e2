"""The typer app every command registers on, and what commands share.

Every command turns a ``StreamprocError`` into one paragraph on stderr and an exit code:
2 for what restarting cannot fix (``UnrecoverableError``: a bad topology file, a changed store
definition, unusable state, a record that fails under ``on_error="fail"``, a missing or illegally
named topic - ``TopicError``), 1 for everything else (e.g. a broker that cannot be reached: it
may come back). No traceback walls.

Log lines of every command but ``run`` are text (``HH:MM:SS LEVEL logger: message``), like the
paragraphs ``say`` prints; ``run`` chooses its stream's format (``--log-format``) before it
writes anything, and ``say`` follows it (``runtime/instance/logs.py``).
"""
from __future__ import annotations

import functools

import typer
from rich.console import Console

from ..errors import StreamprocError, TopologyError, TopologyLoadError, UnrecoverableError

app = typer.Typer(
    name="streamproc",
    help="Stateful stream processing on Apache Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level (default: warnings only)."),
):
    """Stateful stream processing on Apache Kafka."""
    import logging

    from ..runtime.instance import logs

    logs.forget_format()       # a command's paragraphs are text until `run` picks its --log-format

    logging.basicConfig(       # text, like say()'s paragraphs; `run` replaces it with its --log-format
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )


def guarded(fn):
    """Run a command; report streamproc errors for people and exit with the right code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UnrecoverableError, TopologyLoadError) as e:      # restarting cannot help: exit 2 (TopicError too)
            say("ERROR", str(e))
            raise typer.Exit(2) from None
        except StreamprocError as e:
            say("ERROR", str(e))
            raise typer.Exit(1) from None

    return wrapper


def say(level: str, message: str) -> None:
    """One paragraph on stderr (``error:``/``warning:``), or one JSON line under ``--log-format json``."""
    from ..runtime.instance import logs

    if logs.current_format() == "json":
        import sys

        sys.stderr.write(logs.json_line(level, message, "streamproc.cli") + "\n")
        sys.stderr.flush()
        return
    style = "bold red" if level == "ERROR" else "bold yellow"
    err.print(f"[{style}]{level.lower()}:[/] {message}", soft_wrap=True)


def compile_file(spec: str):
    """Load the topology at ``spec`` and compile it (errors name the file)."""
    from ..plan import compile_topology
    from ..loader import load_topology, split_spec

    topology = load_topology(spec)
    try:
        return topology, compile_topology(topology)
    except TopologyError as e:
        raise TopologyError(f"{split_spec(spec)[0]}: invalid topology: {e}") from None


def warn_generated_names(plan) -> None:
    """One warning per store or repartition topic whose name was generated (DESIGN section 3)."""
    for g in plan.generated_names:
        say("WARNING", g.warning())
