"""``streamproc run`` and ``streamproc broker``."""
from __future__ import annotations

from typing import Optional

import typer

from ..errors import StreamprocError
from ._app import app, compile_file, err, guarded, say, warn_generated_names


def _parse_config(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise StreamprocError(f"--config takes key=value (a librdkafka property), got {p!r}")
        out[k.strip()] = v.strip()
    return out


@app.command()
@guarded
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
                                  help="Local state: stores, process id, cluster record, lock (see "
                                       "streamproc/state/layout.py). Without --bootstrap-servers: "
                                       "<state-dir>/dev-broker, cleared at start."),
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
    state_backend: str = typer.Option(
        "rocksdb", "--state-backend", envvar="STREAMPROC_STATE_BACKEND",
        help="rocksdb (local disk under --state-dir; restarts read only the changelog tail) or memory "
             "(state rebuilt from the changelogs at every start)."),
    restore_timeout: float = typer.Option(
        60.0, "--restore-timeout", envvar="STREAMPROC_RESTORE_TIMEOUT", min=1.0,
        help="Seconds a changelog may yield nothing before its end during a restore before the restore fails "
             "(it never counts as restored early)."),
    no_partitions_warning: float = typer.Option(
        30.0, "--no-partitions-warning", envvar="STREAMPROC_NO_PARTITIONS_WARNING", min=1.0,
        help="Warn (with the consumer group's state) when a worker has had no partitions this many seconds."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", envvar="STREAMPROC_METRICS_PORT",
        help="Serve Prometheus metrics of every worker on http://0.0.0.0:PORT/metrics."),
    http_port: Optional[int] = typer.Option(
        None, "--http-port", envvar="STREAMPROC_HTTP_PORT",
        help="Serve interactive queries (/stores/...), live changes (SSE), /health, /ready, /metrics and a live "
             "page on this port. No authentication: keep it private or behind a proxy."),
    advertised_url: Optional[str] = typer.Option(
        None, "--advertised-url", envvar="STREAMPROC_ADVERTISED_URL",
        help="URL other instances use to reach this one's --http-port (default: http://<hostname>:<port>)."),
    live_cpu_share: float = typer.Option(
        0.25, "--live-cpu-share", envvar="STREAMPROC_LIVE_CPU_SHARE", min=0.01, max=4.0,
        help="Share of one core the live change streams (SSE) may use; beyond it slow clients get fewer, "
             "conflated updates (newest value per key) instead of processing slowing down."),
    log_level: str = typer.Option("info", "--log-level", envvar="STREAMPROC_LOG_LEVEL",
                                  help="debug, info (default: status every 30 s, drop summaries), warning, error."),
    log_format: Optional[str] = typer.Option(
        None, "--log-format", envvar="STREAMPROC_LOG_FORMAT",
        help="text or json (default: text on a terminal, json otherwise); one format for the whole stream."),
    max_runtime: Optional[float] = typer.Option(None, "--max-runtime", help="Stop after this many seconds.",
                                                hidden=True),
):
    """Run a topology on Kafka until Ctrl-C / SIGTERM. Start it on more machines to share the partitions."""
    import logging

    from ..runtime.instance import logs
    from ..runtime.instance.app import RunOptions, run_app

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int) or log_level.lower() not in ("debug", "info", "warning", "error"):
        raise StreamprocError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    if log_format is not None and log_format not in logs.FORMATS:
        raise StreamprocError(f"--log-format must be text or json, got {log_format!r}")
    logs.configure(level, log_format)
    topo, plan = compile_file(topology)
    warn_generated_names(plan)
    options = RunOptions(
        bootstrap_servers=bootstrap_servers or "", workers=workers, guarantee=guarantee, state_dir=state_dir,
        commit_interval_ms=commit_interval, client_config=_parse_config(config), create_topics=create_topics,
        batch_size=batch_size, max_runtime_s=max_runtime, topology=topology, state_backend=state_backend,
        restore_stall_timeout_s=restore_timeout, no_partitions_warning_s=no_partitions_warning,
        metrics_port=metrics_port, http_port=http_port, advertised_url=advertised_url,
        live_cpu_share=live_cpu_share)
    if bootstrap_servers:
        raise typer.Exit(run_app(plan, options))
    from ..kafka.devbroker import DevBroker

    # The development broker forgets everything when it stops, and every one reports the same cluster
    # id: state it built is valid only for the broker that built it. It lives apart from any cluster's
    # (<state-dir>/dev-broker/) and is cleared before each start, so a run on the dev broker never
    # restores a real cluster's state, nor a previous dev broker's.
    options.state_dir = fresh_dev_state_dir(state_dir, plan.app_id)
    with DevBroker() as broker:
        say("WARNING",
            f"no --bootstrap-servers given: running on an embedded DEVELOPMENT broker at {broker.bootstrap}, "
            f"NOT on a Kafka cluster. It keeps everything in MEMORY and loses it on exit; missing topics are "
            f"created. Its state is kept apart from any cluster's, in {options.state_dir} (cleared at every "
            f"start), so {state_dir} is left alone. Use --bootstrap-servers (or STREAMPROC_BOOTSTRAP_SERVERS) "
            f"for real work.")
        options.bootstrap_servers = broker.bootstrap
        options.create_topics = True
        raise typer.Exit(run_app(plan, options))


def fresh_dev_state_dir(state_dir: str, app_id: str) -> str:
    """``<state-dir>/dev-broker``, with the app's directory there emptied (refused while another run
    on the development broker uses it)."""
    from ..runtime.instance.load import StateDirLock
    from ..state import layout

    dev = layout.dev_broker_state_dir(state_dir)
    lock = StateDirLock(dev, app_id).acquire()
    try:
        layout.clear_app_dir(dev, app_id)
    finally:
        lock.release()
    return dev


@app.command()
@guarded
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
        err.print(f"[bold yellow]development broker[/] (memory only: everything is lost on exit) "
                   f"listening at [bold]{b.bootstrap}[/]. Ctrl-C stops it.", soft_wrap=True)
        typer.echo(b.bootstrap)
        while not stop.wait(0.5):
            if not b.running:
                raise StreamprocError(f"the development broker exited; its log: {b.log_tail()}")
    err.print("development broker stopped")
