"""``streamproc state`` (inspect local stores), ``streamproc reset`` and ``streamproc replay``.

Every path in the state directory comes from ``streamproc.state.layout``.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import orjson
import typer

from ..errors import StateError, StreamprocError
from ..state import layout
from ._app import app, compile_file, err, guarded, say


def _pick_store(plan, store: Optional[str]):
    names = [s.name for s in plan.stores + plan.global_tables]
    if not names:
        raise StreamprocError(f"topology {plan.app_id!r} has no stores")
    if store is None:
        if len(names) > 1:
            raise StreamprocError(f"topology {plan.app_id!r} has several stores ({', '.join(names)}): "
                                  f"pick one with --store, e.g. --store {names[0]}")
        return (plan.stores + plan.global_tables)[0]
    try:
        return plan.store(store)
    except KeyError:
        raise StreamprocError(f"no store named {store!r} (stores: {', '.join(names)})") from None


def _json_default(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return repr(o)


def _dump(obj) -> str:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


@app.command()
@guarded
def state(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Store name (optional with one store)."),
    key: Optional[str] = typer.Option(None, "--key", "-k",
                                      help="Print only this key's current value, as one JSON line."),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
    bootstrap_servers: Optional[str] = typer.Option(
        None, "--bootstrap-servers", "-b", envvar="STREAMPROC_BOOTSTRAP_SERVERS",
        help="Check first that the local state was built against this Kafka cluster (refused otherwise)."),
):
    """Print the contents of a local store (RocksDB state written by `streamproc run`), one JSON line per entry.

    With several stores, name one with --store (the store names: `streamproc describe`)."""
    from ..operators.present import WINDOWED, entry_key

    _, plan = compile_file(topology)
    spec = _pick_store(plan, store)
    layout.refuse_if_reset_incomplete(state_dir, plan.app_id, topology, bootstrap_servers)
    if bootstrap_servers:
        from ..kafka.admin import wait_for_broker
        from ..kafka.config import admin_config

        md = wait_for_broker(admin_config(bootstrap_servers, plan.app_id), timeout_s=30)
        layout.refuse_if_reset_incomplete(state_dir, plan.app_id, topology, bootstrap_servers,
                                          topics=md.topics, cluster_id=md.cluster_id)
        layout.bind_cluster(state_dir, plan.app_id, md.cluster_id, bootstrap_servers, topology, record=False,
                            verb="inspect the app's state")
    if spec in plan.global_tables:
        shown = _global_entries(state_dir, plan, spec)
    else:
        shown = _task_entries(state_dir, plan, spec)
    found = [(entry_key(spec, k), v) for entries in shown for k, v in entries.items()
             if key is None or _matches(entry_key(spec, k), key)]
    if key is not None:
        if not found:
            raise StreamprocError(f"key {key!r} is not in store {spec.name!r}")
        typer.echo(_dump([v for _, v in found] if spec.kind in WINDOWED else found[0][1]))
        return
    for k, v in found:
        typer.echo(_dump({"key": k, "value": v}))


def _task_entries(state_dir: str, plan, spec) -> list[dict]:
    """A store's entries (``operators.present``) in each local task directory of its sub-topology."""
    from ..operators.present import entries
    from ..state.rocksdb import RocksDBBackend

    st = next(s for s in plan.subtopologies if spec in s.stores)
    dirs = [d for d in layout.task_dirs(state_dir, plan.app_id) if d[0] == st.id]
    if not dirs:
        raise StateError(f"no local state for {plan.app_id!r} sub-topology {st.id} under {state_dir!r} "
                         f"(run the app there first, or `streamproc replay` it from the changelog)")
    out = []
    for _, _, path in dirs:
        backend = RocksDBBackend.for_task(path, st, read_only=True)
        try:
            out.append(entries(st, spec, backend.items(spec.name)))
        finally:
            backend.close()
    return out


def _global_entries(state_dir: str, plan, spec) -> list[dict]:
    """A global table's entries as held by the first worker directory that has them (each worker holds all)."""
    from ..operators.present import entries
    from ..state.rocksdb import RocksDBBackend

    dirs = layout.global_dirs(state_dir, plan.app_id)
    if not dirs:
        raise StateError(f"no local state for global table {spec.name!r} of {plan.app_id!r} under {state_dir!r} "
                         f"(run the app there first)")
    backend = RocksDBBackend(dirs[0][2], plan.global_tables, read_only=True)
    try:
        return [entries(None, spec, backend.items(spec.name))]
    finally:
        backend.close()


def _matches(group_key, text: str) -> bool:
    if group_key == text:
        return True
    try:
        return group_key == orjson.loads(text)
    except orjson.JSONDecodeError:
        return False


#: The steps of `reset`, in order; :func:`_reached` is called with each name as the reset passes it.
RESET_STEPS = ("checked", "marked", "marked-in-kafka", "group-deleted", "topics-deleted", "local-deleting",
               "local-deleted", "kafka-marker-deleted")


def _reached(step: str) -> None:
    """Test hook: the reset has just passed ``step`` (tests stop it here, as a kill would)."""


@app.command()
@guarded
def reset(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
    bootstrap_servers: Optional[str] = typer.Option(None, "--bootstrap-servers", "-b",
                                                    envvar="STREAMPROC_BOOTSTRAP_SERVERS"),
    local_only: bool = typer.Option(False, "--local-only",
                                    help="Only delete the local state (the changelog rebuilds it)."),
    config: list[str] = typer.Option(
        [], "--config", "-c", envvar="STREAMPROC_CONFIG",
        help="key=value librdkafka property, as for `run` (its consumer.session.timeout.ms bounds the wait for "
             "lingering group members); repeatable."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Start the app from scratch: delete its local state and, unless --local-only, its internal
    topics (changelogs, repartition, instances) and consumer group, so input is reprocessed from
    the beginning. Stop every instance of the app first.

    All or nothing: it first checks that it can finish (no instance on this state directory, the
    consumer group empty, waiting up to the session timeout for members a clean stop leaves
    behind), and only then deletes. Until it has deleted everything a marker (a file in the state
    directory and the topic <app-id>-reset-incomplete) makes `run` and `replay` refuse to start;
    a reset that was interrupted or failed is finished by running it again."""
    from ..kafka.config import consumer_config
    from ..runtime.options import RunOptions
    from ..runtime.instance.load import StateDirLock
    from ..state.lock import TaskDirLock
    from .run import _parse_config

    _, plan = compile_file(topology)
    app_id = plan.app_id
    if not local_only and not bootstrap_servers:
        raise StreamprocError("reset deletes the app's internal topics and consumer group: give "
                              "--bootstrap-servers (or --local-only to delete only the local state)")
    clients = RunOptions(bootstrap_servers or "", client_config=_parse_config(config))
    existed = os.path.isdir(layout.app_dir(state_dir, app_id))
    lock = StateDirLock(state_dir, app_id).acquire()     # refuses while an instance runs on this state dir
    task_locks: list = []
    try:
        # ---------------------------------------------------------------- checks: nothing is deleted
        for path in [p for *_, p in layout.task_dirs(state_dir, app_id) + layout.global_dirs(state_dir, app_id)]:
            task_locks.append(TaskDirLock(path).acquire())      # e.g. a `replay` in progress: refused
        local = layout.state_dirs(state_dir, app_id)
        prior = layout.read_reset_marker(state_dir, app_id)
        kafka = None
        if not local_only:
            kafka = _ResetKafka(plan, bootstrap_servers, clients.client("admin"), topology, state_dir, prior)
        what = [f"{len(local)} local state director{'y' if len(local) == 1 else 'ies'} under "
                f"{layout.app_dir(state_dir, app_id)}"]
        if kafka is not None:
            what += kafka.what()
        if prior is not None:
            err.print(f"finishing an incomplete reset of {app_id} (marker {layout.reset_marker_path(state_dir, app_id)})")
        if not yes and not typer.confirm(f"Delete {'; '.join(what)}?", default=False):
            raise typer.Exit(1)
        if kafka is not None:
            session_ms = int(consumer_config(bootstrap_servers, app_id, clients.client("consumer"))
                             ["session.timeout.ms"])
            kafka.wait_for_empty_group(session_ms / 1000.0)
        _reached("checked")
        # ---------------------------------------------------------------- marked, then deleted
        _mark_and_delete(state_dir, app_id, topology, bootstrap_servers if not local_only else None, kafka, prior,
                         local)
    finally:
        for tl in task_locks:
            tl.release()
        lock.release(remove=True)             # the lock file goes too: a reset leaves no lock files
        if not existed:
            try:
                os.rmdir(layout.app_dir(state_dir, app_id))
            except OSError:
                pass
    err.print(f"reset {app_id}: deleted {'; '.join(what)}")


def _mark_and_delete(state_dir: str, app_id: str, topology: str, bootstrap_servers: Optional[str], kafka,
                     prior: dict | None, local: list[str]) -> None:
    """The deleting half of `reset` (its checks passed): marked, then deleted step by step, then unmarked.
    ``bootstrap_servers`` and ``kafka`` are None for a --local-only reset."""
    layout.write_reset_marker(state_dir, app_id, {
        "app_id": app_id, "topology": topology, "local_only": kafka is None,
        "bootstrap_servers": bootstrap_servers,
        "cluster_id": kafka.cluster_id if kafka is not None else (prior or {}).get("cluster_id")})
    _reached("marked")
    if kafka is not None:
        kafka.mark()
        _reached("marked-in-kafka")
        kafka.delete_group()              # first: the one step another party can still make fail
        _reached("group-deleted")
        kafka.delete_topics()
        _reached("topics-deleted")
    for i, path in enumerate(local):
        layout.remove_tree(path)
        if i == 0:
            _reached("local-deleting")
    for f in (layout.cluster_record_path(state_dir, app_id),):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    _reached("local-deleted")
    if kafka is not None:
        kafka.unmark()
        _reached("kafka-marker-deleted")
    layout.remove_reset_marker(state_dir, app_id)


class _ResetKafka:
    """The Kafka side of a reset: checked when made, then marked, deleted and unmarked step by step."""

    def __init__(self, plan, bootstrap: str, admin_overrides: dict, topology: str, state_dir: str,
                 prior: dict | None):
        from ..kafka.admin import describe_group, make_admin, wait_for_broker
        from ..kafka.config import admin_config
        from ..runtime.serve.directory import instances_topic

        self.app_id = app_id = plan.app_id
        self.bootstrap = bootstrap
        md = wait_for_broker(admin_config(bootstrap, app_id, admin_overrides), timeout_s=30)
        self.cluster_id = md.cluster_id
        why = layout.cluster_mismatch(state_dir, app_id, md.cluster_id, bootstrap, topology, verb="reset the app")
        if why:
            raise StateError(f"reset refused, nothing deleted: {why}")
        if prior and prior.get("cluster_id") and md.cluster_id and prior["cluster_id"] != md.cluster_id:
            raise StateError(
                f"reset refused, nothing deleted: the unfinished reset recorded in "
                f"{layout.reset_marker_path(state_dir, app_id)} was against Kafka cluster {prior['cluster_id']!r}, "
                f"but {bootstrap} is cluster {md.cluster_id!r}. Finish it against its cluster (its "
                f"--bootstrap-servers), or discard the local state with "
                f"`{layout.reset_command(topology, state_dir, None, local_only=True)}`.")
        self.admin = make_admin(bootstrap, app_id, admin_overrides)
        self.marker_topic = layout.reset_marker_topic(app_id)
        from ..runtime.edge.delivery import delivery_group

        egress = [ct.topic for ct in plan.connector_sinks]
        # a source connector's ingest topic stays: it holds messages the external system no longer has
        self.internal = list(dict.fromkeys(plan.changelog_topics + plan.repartition_topics + egress
                                           + [instances_topic(app_id)]))
        self.delivery_groups = [delivery_group(t) for t in egress]
        self.listed = set(md.topics)
        self.group = describe_group(self.admin, app_id)

    def what(self) -> list[str]:
        doomed = [t for t in self.internal if t in self.listed]
        cluster = f" on cluster {self.cluster_id!r}" if self.cluster_id else ""
        group = "consumer group" if self.group is not None else "consumer group (none now)"
        return [f"topics {', '.join(doomed) or '(none now)'}{cluster}", f"{group} {self.app_id!r} and its offsets"]

    def wait_for_empty_group(self, session_s: float) -> None:
        """Return once the group has no members. Static members stay in the group after a clean stop
        until their session times out: wait for them up to the session timeout (a countdown), then
        refuse - a member still there is an instance that runs."""
        from ..kafka.admin import describe_group

        info = self.group
        if info is None or not info.members:
            return
        limit = session_s + max(3.0, session_s * 0.2)
        shown = "; ".join(m.describe() for m in info.members[:6]) + ("; ..." if len(info.members) > 6 else "")
        say("WARNING", f"consumer group {self.app_id!r} still lists {len(info.members)} member(s): {shown}. "
                       f"After a clean stop static members stay until their session times out: waiting up to "
                       f"{limit:.0f} s for them to go before anything is deleted.")
        deadline = time.monotonic() + limit
        with err.status("", spinner="clock") as status:
            while info is not None and info.members:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                status.update(f"waiting for {len(info.members)} member(s) of consumer group {self.app_id!r} "
                              f"to time out: {left:4.0f} s left")
                time.sleep(min(0.5, left))
                info = describe_group(self.admin, self.app_id)
        if info is not None and info.members:
            shown = "; ".join(m.describe() for m in info.members[:6]) + ("; ..." if len(info.members) > 6 else "")
            raise StreamprocError(
                f"reset refused, nothing deleted: consumer group {self.app_id!r} still has {len(info.members)} "
                f"member(s) after {limit:.0f} s: {shown}. An instance of the app is still running (stop every "
                f"instance first, on every machine), or the instances use a session timeout longer than "
                f"{session_s:g} s (give reset the same --config consumer.session.timeout.ms=... as `run`).")
        self.group = info

    def mark(self) -> None:
        from ..kafka.admin import create_topics

        create_topics(self.admin, [self.marker_topic], 1, config={"cleanup.policy": "compact"})

    def delete_group(self) -> None:
        from ..kafka.admin import delete_group

        delete_group(self.admin, self.app_id)
        for g in self.delivery_groups:      # their offsets point into egress topics about to be re-created
            delete_group(self.admin, g)

    def delete_topics(self) -> None:
        from ..kafka.admin import delete_topics

        delete_topics(self.admin, self.internal)     # whatever of them exists now

    def unmark(self) -> None:
        from ..kafka.admin import delete_topics

        delete_topics(self.admin, [self.marker_topic])


@app.command()
@guarded
def replay(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Only this store (default: every store)."),
    partition: list[int] = typer.Option([], "--partition", "-p",
                                        help="Only this task partition; repeatable (default: every partition "
                                             "of the changelog)."),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
    bootstrap_servers: Optional[str] = typer.Option(None, "--bootstrap-servers", "-b",
                                                    envvar="STREAMPROC_BOOTSTRAP_SERVERS"),
    config: list[str] = typer.Option([], "--config", "-c", envvar="STREAMPROC_CONFIG",
                                     help="key=value librdkafka property for the changelog reader; repeatable."),
):
    """Rebuild local RocksDB stores from their changelog topics without processing any input.

    The selected stores of each task are emptied and refilled from the whole changelog (read
    committed), so the local state then equals what the changelog holds. Refused while a
    worker holds the task directory."""
    from ..kafka.admin import wait_for_broker
    from ..kafka.config import admin_config, restore_consumer_config
    from ..runtime.changelog.restore import Restorer
    from .run import _parse_config

    if not bootstrap_servers:
        raise StreamprocError("replay reads the changelog topics: give --bootstrap-servers "
                              "(or STREAMPROC_BOOTSTRAP_SERVERS)")
    _, plan = compile_file(topology)
    specs = _replay_specs(plan, store)
    by_st = [(st, mine) for st in plan.subtopologies if (mine := [s for s in st.stores if s in specs])]
    # nothing is written before these checks: a reset left unfinished, state of another cluster
    layout.refuse_if_reset_incomplete(state_dir, plan.app_id, topology, bootstrap_servers)
    cluster = wait_for_broker(admin_config(bootstrap_servers, plan.app_id), timeout_s=30)
    layout.refuse_if_reset_incomplete(state_dir, plan.app_id, topology, bootstrap_servers, topics=cluster.topics,
                                      cluster_id=cluster.cluster_id)
    layout.bind_cluster(state_dir, plan.app_id, cluster.cluster_id, bootstrap_servers, topology, record=False,
                        verb="replay the app")
    restorer = Restorer(restore_consumer_config(bootstrap_servers, plan.app_id, _parse_config(config)))
    backends: list = []
    try:
        tasks = _replay_tasks(by_st, restorer.topics(30), partition)
        ends = _table_ends(bootstrap_servers, plan.app_id, tasks)
        layout.bind_cluster(state_dir, plan.app_id, cluster.cluster_id, bootstrap_servers, topology,
                            verb="replay the app")                 # records the cluster the state comes from
        for st, mine, p in tasks:
            backends.append(_emptied(state_dir, plan.app_id, st, mine, p))
            restorer.start((st.id, p), backends[-1], mine, p, ends[(st.id, p)])
        progress, secs = _restore_with_bar(restorer, [(st.id, p) for st, _, p in tasks], plan.app_id)
    finally:
        restorer.close()
        for b in backends:
            b.close()
    typer.echo(_replay_summary(progress, secs, tasks))


def _replay_specs(plan, store: Optional[str]) -> list:
    """The stores to replay: ``store``, or every store of the plan (global tables have nothing to replay)."""
    if store is not None:
        specs = [_pick_store(plan, store)]
        if specs[0] in plan.global_tables:
            raise StreamprocError(f"{specs[0].name!r} is a global table: every worker rebuilds it from topic "
                                  f"{specs[0].changelog!r} when it starts; there is nothing to replay")
        return specs
    if not plan.stores:
        raise StreamprocError(f"topology {plan.app_id!r} has no stores: nothing to replay")
    return list(plan.stores)


def _replay_tasks(by_st: list, md: dict, partitions: list[int]) -> list[tuple]:
    """``(sub-topology, its stores to replay, partition)`` of every task to replay; ``md``: the cluster's
    topics. Refused if a changelog or an asked-for partition of it does not exist."""
    tasks = []
    for st, mine in by_st:
        topic = mine[0].changelog
        if topic not in md or md[topic].error is not None:
            raise StreamprocError(f"changelog topic {topic!r} of store {mine[0].name!r} does not exist "
                                  f"(has the app run against this cluster?)")
        available = sorted(md[topic].partitions)
        parts = sorted(set(partitions)) if partitions else available
        missing = [p for p in parts if p not in available]
        if missing:
            raise StreamprocError(f"changelog {topic!r} has partitions {available[0]}..{available[-1]}, "
                                  f"not {', '.join(map(str, missing))}")
        tasks += [(st, mine, p) for p in parts]
    return tasks


def _table_ends(bootstrap: str, app_id: str, tasks: list) -> dict:
    """``{task key: ends}`` for ``Restorer.start``: a table's restore ends at the app's committed offset of
    its topic (processing resumes there)."""
    from ..kafka.admin import group_offsets, make_admin
    from ..runtime.changelog.restore import table_ends, table_partitions

    tps = [tp for st, mine, p in tasks for tp in table_partitions(mine, p)]
    committed = group_offsets(make_admin(bootstrap, app_id), app_id, tps) if tps else {}
    return {(st.id, p): table_ends(mine, p, committed) for st, mine, p in tasks}


def _emptied(state_dir: str, app_id: str, st, stores: list, partition: int):
    """The task's RocksDB backend with ``stores`` emptied and their changelog offsets forgotten: the
    replay reads each changelog whole. Refused, naming the holder, while a worker runs the task."""
    from ..runtime.changelog.records import META_CHANGELOG_OFFSETS, changelog_offsets
    from ..state.rocksdb import RocksDBBackend

    path = layout.task_dir(state_dir, app_id, layout.task_id(st.id, partition))
    b = RocksDBBackend.for_task(path, st)               # checks the stores' definitions
    try:
        names = {s.name for s in stores}
        # the offsets go first: interrupted in between, the stores are restored whole again (never from
        # an offset that their emptied state does not reflect)
        offsets = {k: v for k, v in changelog_offsets(b).items() if k not in names}
        b.write({}, {META_CHANGELOG_OFFSETS: offsets})
        for name in names:
            b.clear_store(name)
    except BaseException:
        b.close()
        raise
    return b


def _restore_with_bar(restorer, keys: list, app_id: str) -> tuple:
    """Run the restores of ``keys`` to their end under a progress bar; ``(RestoreProgress, seconds)``.

    The bar counts changelog offsets: records, and the offsets that hold none (transaction markers,
    records compacted away); the final line gives the same figure and then the records among them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.monotonic()
    with Progress(TextColumn("replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("changelog offsets {task.fields[rate]}"), TimeRemainingColumn(), console=err,
                  transient=False) as bar_view:
        bar = bar_view.add_task(app_id, total=restorer.progress(keys).offsets_total, rate="")

        def show() -> None:
            now = restorer.progress(keys)
            secs = time.monotonic() - t0
            bar_view.update(bar, completed=now.offsets_read,
                            rate=f"({now.records / secs:,.0f} records/s)" if secs > 0 else "")

        restorer.run(0.2, on_step=show)
        final = restorer.progress(keys)
        bar_view.update(bar, completed=final.offsets_read)
    return final, time.monotonic() - t0


def _replay_summary(progress, secs: float, tasks: list) -> str:
    n, done = progress.records, progress.offsets_read
    n_stores = len({s.name for _, mine, _ in tasks for s in mine})
    rate = n / secs if secs > 0 else 0.0
    other = done - n
    return (f"replayed {done}/{progress.offsets_total} changelog offsets into {n_stores} store(s) of {len(tasks)} "
            f"task(s) in {secs:.2f} s: {n} records ({rate:,.0f} records/s)"
            + (f"; the other {other} offsets hold no record (transaction markers, or compacted away)"
               if other > 0 else ""))
