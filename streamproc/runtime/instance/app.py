"""``run_app(plan, options)``: check the topics, create the internal ones, run the workers.

Topics
    * sources must exist (``create_topics=True`` creates missing ones, development only) and
      the inputs of each stateful sub-topology must have equal partition counts;
    * sinks must exist (or are created with ``create_topics``);
    * ``<app-id>-<name>-repartition``: as many partitions as the upstream sub-topology has
      tasks (its largest input), ``cleanup.policy=delete``, ``retention.ms=-1``: records are
      deleted by the workers once their offsets are committed (``DeleteRecords``, every 30 s);
    * ``<app-id>-<store>-changelog``: as many partitions as the store's sub-topology has tasks
      (partition N holds task N's state), ``cleanup.policy=compact``; windowed stores
      ``compact,delete`` with ``retention.ms`` = how long a window can live
      (``WindowSpec.lifetime``, ``streamproc.windows``: size + grace; sliding: 2 x max difference +
      grace; session: gap + grace; join: before + after + grace; or the store's ``retention`` when
      longer) + :data:`RETENTION_MARGIN_MS`;
    * ``<app-id>-dlq`` when a source uses ``on_error="dead-letter"``.

Then the supervisor starts ``options.workers`` worker processes (see ``supervisor.py``).
SIGINT/SIGTERM stop them cleanly and ``run_app`` returns 0.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading

from ...errors import StreamprocError
from ...kafka.admin import (TopicSpec, create_topics as _create_topics, ensure_internal_topics, make_admin,
                           topic_configs, validate_source_topics, wait_for_broker)
from ...kafka.config import admin_config, consumer_config, restore_consumer_config
from ...kinds import SOURCE_KINDS
from ...plan.partitions import partition_counts
from ...state import layout
from ..options import RunOptions
from .observe import Observer
from ..changelog.definitions import check_changelog_definitions
from .load import StateDirLock, absolute_ref, process_id, topology_ref_of
from .supervisor import Supervisor, WorkerCrashLoop
from ..worker.group import check_assignor

__all__ = ["RunOptions", "run_app", "prepare_topics", "partition_counts", "internal_topic_specs",
           "WorkerCrashLoop", "RETENTION_MARGIN_MS"]

log = logging.getLogger("streamproc.app")

#: Extra changelog retention of windowed stores beyond the longest a window lives (1 day, as in Kafka Streams).
RETENTION_MARGIN_MS = 86_400_000


def run_app(plan, options: RunOptions) -> int:
    """Run ``plan`` (a compiled topology; a ``Topology`` is compiled) until stopped. Returns 0.

    Raises ``StreamprocError`` subclasses with a one-paragraph message: ``BrokerError`` (cluster
    unreachable, topics missing or mis-configured), ``StateError`` (state dir in use),
    ``WorkerCrashLoop`` (a worker crashed 5 times within 60 s; the message is its last error).
    """
    from ...dsl import Topology
    from ...plan import compile_topology

    if isinstance(plan, Topology):
        plan = compile_topology(plan)
    options.validate()
    ref = options.topology or topology_ref_of(plan)
    if ref is None:
        raise StreamprocError(
            f"cannot tell the worker processes where topology {plan.app_id!r} is defined; "
            f"pass RunOptions(topology='path/to/file.py:name')")
    ref = absolute_ref(ref)
    check_assignor(consumer_config(options.bootstrap_servers, plan.app_id, options.client("consumer")))
    lock = StateDirLock(options.state_dir, plan.app_id).acquire()     # held from before the checks below
    try:
        _check_state_dir(plan, options)
        counts = prepare_topics(plan, options)
        pid = process_id(options.state_dir, plan.app_id)
        observer = Observer(plan.app_id, multiprocessing.get_context("spawn"), metrics_port=options.metrics_port,
                            live=options.live_status if options.live_status is not None else sys.stderr.isatty())
        observer.start()
        server = None
        try:
            if options.http_port is not None:
                from ..serve.http import QueryServer

                server = QueryServer(plan, options, counts, observer, pid, port=options.http_port,
                                     advertised_url=options.advertised_url).start()
            sup = Supervisor(ref, plan.app_id, options, pid, observer=observer,
                             edge=bool(plan.connector_sources or plan.connector_sinks))
            restore = _install_signals(sup, on_stop=server.withdraw if server is not None else None)
            try:
                log.info("running %s with %d worker(s), %s, process id %s", plan.app_id, options.workers,
                         options.guarantee, pid)
                return sup.run()
            finally:
                if server is not None:       # while our handlers still turn a second signal into "stop"
                    server.stop()
                    server = None
                restore()
        finally:
            if server is not None:
                server.stop()
            observer.stop()
    finally:
        lock.release()


def _check_state_dir(plan, options: RunOptions) -> None:
    """Before any topic is touched: refuse while a ``streamproc reset`` is unfinished (the marker in the
    state dir, or its topic in the cluster), and refuse state built against another cluster or app; record
    the cluster a state dir is used with (``state.layout``)."""
    shown = options.topology or "<topology>"
    layout.refuse_if_reset_incomplete(options.state_dir, plan.app_id, shown, options.bootstrap_servers)
    md = wait_for_broker(admin_config(options.bootstrap_servers, plan.app_id, options.client("admin")),
                         timeout_s=options.broker_timeout_s)
    layout.refuse_if_reset_incomplete(options.state_dir, plan.app_id, shown, options.bootstrap_servers,
                                      topics=md.topics, cluster_id=md.cluster_id)
    layout.bind_cluster(options.state_dir, plan.app_id, md.cluster_id, options.bootstrap_servers, shown)


def _install_signals(sup: Supervisor, on_stop=None):
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}

    def handler(signum, frame):
        log.info("received %s: stopping", signal.Signals(signum).name)
        sup.stop()
        if on_stop is not None:       # e.g. leave the instance directory before the workers stop
            threading.Thread(target=on_stop, daemon=True).start()

    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.signal(s, handler)

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore


# ------------------------------------------------------------------------------------------------ topics

def window_retention_ms(spec) -> int | None:
    """``retention.ms`` of a store's changelog, or None for a plain (compacted only) table.

    How long a stored window can live without being written again (``WindowSpec.lifetime``: the
    window's own by default, the store's ``retention`` when it keeps closed windows longer,
    ``aggregate(..., retention=)``), plus :data:`RETENTION_MARGIN_MS` (Kafka Streams: the store's
    retention + ``windowstore.changelog.additional.retention.ms``, 1 day). Expired windows are also
    deleted by tombstones."""
    w = spec.window
    if w is None:
        return None
    return w.lifetime(getattr(spec, "retention", None)) + RETENTION_MARGIN_MS


def internal_topic_specs(plan, counts: dict, *, instances: bool = False) -> list[TopicSpec]:
    """The internal topics of ``plan``; ``instances``: also ``<app-id>-instances`` (``--http-port``)."""
    specs = []
    for st in plan.subtopologies:
        n = counts[("task", st.id)]
        for store in st.stores:
            if not store.internal_changelog:     # a table: its source topic is its changelog
                continue
            ret = window_retention_ms(store)
            config = ({"cleanup.policy": "compact"} if ret is None
                      else {"cleanup.policy": "compact,delete", "retention.ms": str(ret)})
            specs.append(TopicSpec(store.changelog, n, config))
    for t in plan.repartition_topics:
        specs.append(TopicSpec(t, counts[t], {"cleanup.policy": "delete", "retention.ms": "-1"}))
    if instances:
        specs.append(TopicSpec(f"{plan.app_id}-instances", 1, {"cleanup.policy": "compact"}))
    for c in plan.connector_sinks:        # partition N holds what task N produced: its backlog pauses task N only
        specs.append(TopicSpec(c.topic, counts[("task", c.subtopology)], {"cleanup.policy": "delete"}))
    if _uses_dlq(plan):
        specs.append(TopicSpec(f"{plan.app_id}-dlq", max(counts[t] for t in plan.source_topics),
                               {"cleanup.policy": "delete"}))
    return specs


def _ensure_ingest_topics(admin, plan, options: RunOptions) -> None:
    """Create the ingest topics of source connectors (DESIGN section 9) before the sources are checked:
    ``partitions=`` of the connector, else as many as the largest other source topic (so a join with a
    Kafka table is co-partitioned), else ``create_topics_partitions``."""
    ingest = plan.connector_sources
    if not ingest:
        return
    others = [t for t in plan.source_topics if t not in {c.topic for c in ingest}]
    counts = validate_source_topics(admin, others) if others else {}
    default = max(counts.values(), default=options.create_topics_partitions)
    created = ensure_internal_topics(admin, [
        TopicSpec(c.topic, c.connector.partitions or default, {"cleanup.policy": "delete"}) for c in ingest])
    if created:
        log.info("created ingest topic(s): %s", ", ".join(created))


def _uses_dlq(plan) -> bool:
    return plan.on_processing_error == "dead-letter" or any(
        n.kind in SOURCE_KINDS and n.params.get("on_error") == "dead-letter"
        for st in plan.subtopologies for n in st.nodes)


def _warn_uncompacted_tables(admin, plan) -> None:
    """A table's topic is its changelog: without compaction a restore reads every update ever made, and
    with time retention alone rows silently disappear from a rebuilt table. Warn, do not refuse."""
    topics = plan.table_topics
    if not topics:
        return
    try:
        configs = topic_configs(admin, topics)
    except StreamprocError as e:
        log.info("cannot read the configs of table topics %s to check compaction: %s", ", ".join(topics), e)
        return
    for t in topics:
        policy = configs.get(t, {}).get("cleanup.policy", "")
        if "compact" not in policy:
            log.warning("topic %r is read as a table but is not compacted (cleanup.policy=%s): a restore reads "
                        "every update it holds, and rows deleted by time retention vanish from a rebuilt table; "
                        "set cleanup.policy=compact", t, policy or "delete")


def prepare_topics(plan, options: RunOptions) -> dict:
    """Validate sources and sinks (creating them with ``create_topics``), create/validate internal topics.

    Returns the partition counts (see :func:`partition_counts`).
    """
    conf = admin_config(options.bootstrap_servers, plan.app_id, options.client("admin"))
    wait_for_broker(conf, timeout_s=options.broker_timeout_s)
    admin = make_admin(options.bootstrap_servers, plan.app_id, options.client("admin"))
    tables = plan.table_topics
    external = list(dict.fromkeys(plan.source_topics + plan.sink_topics))
    if options.create_topics:
        # a table's topic is its changelog: created compacted
        made = _create_topics(admin, tables, options.create_topics_partitions, config={"cleanup.policy": "compact"})
        made += _create_topics(admin, [t for t in external if t not in tables], options.create_topics_partitions)
        if made:
            log.warning("created topic(s) %s with %d partition(s) (--create-topics)", ", ".join(made),
                        options.create_topics_partitions)
    _ensure_ingest_topics(admin, plan, options)
    src_groups = [[t for t in g if t in plan.source_topics] for g in plan.copartition_groups]
    src_counts = validate_source_topics(admin, plan.source_topics, [g for g in src_groups if len(g) > 1])
    egress = {c.topic for c in plan.connector_sinks}
    sinks = [t for t in plan.sink_topics if t not in src_counts and t not in egress]
    if sinks:
        try:
            validate_source_topics(admin, sinks)
        except StreamprocError as e:
            raise type(e)(str(e).replace("source topic", "output topic")) from None
    if plan.global_tables:
        validate_source_topics(admin, [g.source.topic for g in plan.global_tables])
    _warn_uncompacted_tables(admin, plan)
    counts = partition_counts(plan, src_counts)
    # a changed store definition first: a grown window would otherwise surface as a retention problem
    check_changelog_definitions(restore_consumer_config(options.bootstrap_servers, plan.app_id,
                                                        options.client("restore")),
                                [s for s in plan.stores if s.internal_changelog])
    created = ensure_internal_topics(admin, internal_topic_specs(plan, counts,
                                                                 instances=options.http_port is not None))
    if created:
        log.info("created internal topic(s): %s", ", ".join(created))
    return counts
