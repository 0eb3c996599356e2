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


def _parse_config(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise StreamprocError(f"--config takes key=value (a librdkafka property), got {p!r}")
        out[k.strip()] = v.strip()
    return out


@app.command()
@_guarded
def run(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    bootstrap_servers: Optional[str] = typer.Option(
        None, "--bootstrap-servers", "-b", envvar="STREAMPROC_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers. Without it an embedded, memory-only development broker is started."),
    workers: int = typer.Option(1, "--workers", "-w", envvar="STREAMPROC_WORKERS", min=1,
                                help="Worker processes on this machine (each one consumer + one producer)."),
    guarantee: str = typer.Option("exactly-once", "--guarantee", envvar="STREAMPROC_GUARANTEE",
                                  help="exactly-once (Kafka transactions) or at-least-once."),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR",
                                  help="Local state: stores, process id, lock."),
    commit_interval: Optional[int] = typer.Option(
        None, "--commit-interval", envvar="STREAMPROC_COMMIT_INTERVAL",
        help="Milliseconds between checkpoints (default 100 exactly-once, 1000 at-least-once)."),
    config: list[str] = typer.Option(
        [], "--config", "-c", envvar="STREAMPROC_CONFIG",
        help="key=value librdkafka property for every client (prefix consumer./producer./admin./restore. "
             "for one client); repeatable."),
    create_topics: bool = typer.Option(
        False, "--create-topics", envvar="STREAMPROC_CREATE_TOPICS",
        help="Create missing source/sink topics (development only)."),
    batch_size: int = typer.Option(1000, "--batch-size", envvar="STREAMPROC_BATCH_SIZE", min=1,
                                   help="Records per consume() call."),
    max_runtime: Optional[float] = typer.Option(None, "--max-runtime", help="Stop after this many seconds.",
                                                hidden=True),
):
    """Run a topology on Kafka until Ctrl-C / SIGTERM. Start it on more machines to share the partitions."""
    from ..runtime.app import RunOptions, run_app

    topo, plan = compile_file(topology)
    options = RunOptions(
        bootstrap_servers=bootstrap_servers or "", workers=workers, guarantee=guarantee, state_dir=state_dir,
        commit_interval_ms=commit_interval, client_config=_parse_config(config), create_topics=create_topics,
        batch_size=batch_size, max_runtime_s=max_runtime, topology=topology)
    if bootstrap_servers:
        raise typer.Exit(run_app(plan, options))
    from ..kafka.devbroker import DevBroker

    with DevBroker() as broker:
        _err.print(
            f"[bold yellow]WARNING:[/] no --bootstrap-servers given: started an embedded DEVELOPMENT broker at "
            f"{broker.bootstrap}. It keeps everything in MEMORY and loses it on exit; missing topics are "
            f"created. Use --bootstrap-servers (or STREAMPROC_BOOTSTRAP_SERVERS) for real work.",
            soft_wrap=True)
        options.bootstrap_servers = broker.bootstrap
        options.create_topics = True
        raise typer.Exit(run_app(plan, options))


@app.command()
@_guarded
def broker(
    port: int = typer.Option(9092, "--port", "-p", help="Loopback port to listen on (0: any free port)."),
):
    """Run the embedded development broker (Tansu, memory only) in the foreground until Ctrl-C."""
    import signal
    import threading

    from ..kafka.devbroker import DevBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with DevBroker(port=port or None) as b:
        _err.print(f"[bold yellow]development broker[/] (memory only: everything is lost on exit) "
                   f"listening at [bold]{b.bootstrap}[/]. Ctrl-C stops it.", soft_wrap=True)
        typer.echo(b.bootstrap)
        while not stop.wait(0.5):
            if not b.running:
                raise StreamprocError(f"the development broker exited; its log: {b.log_tail()}")
    _err.print("development broker stopped")


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
