"""``streamproc state`` (inspect local stores), ``streamproc reset`` and ``streamproc replay``."""
from __future__ import annotations

import os
import re
import shutil
from typing import Optional

import orjson
import typer

from ..errors import StateError, StreamprocError
from ._app import app, compile_file, err, guarded

_TASK_DIR = re.compile(r"^(\d+)_(\d+)$")
_GLOBAL_DIR = re.compile(r"^global-(\d+)$")


def _dirs(state_dir: str, app_id: str, pattern) -> list[tuple[re.Match, str]]:
    root = os.path.join(state_dir, app_id)
    out = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            m = pattern.match(name)
            if m and os.path.isdir(os.path.join(root, name)):
                out.append((m, os.path.join(root, name)))
    return out


def _task_dirs(state_dir: str, app_id: str) -> list[tuple[int, int, str]]:
    """``(sub-topology id, partition, path)`` of the local task directories."""
    return [(int(m.group(1)), int(m.group(2)), path) for m, path in _dirs(state_dir, app_id, _TASK_DIR)]


def _global_dirs(state_dir: str, app_id: str) -> list[tuple[None, int, str]]:
    """``(None, worker, path)`` of the workers' global-table directories."""
    return [(None, int(m.group(1)), path) for m, path in _dirs(state_dir, app_id, _GLOBAL_DIR)]


def _pick_store(plan, store: Optional[str]):
    names = [s.name for s in plan.stores + plan.global_tables]
    if not names:
        raise StreamprocError(f"topology {plan.app_id!r} has no stores")
    if store is None:
        if len(names) > 1:
            raise StreamprocError(f"topology {plan.app_id!r} has several stores ({', '.join(names)}): "
                                  f"pick one with --store")
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
):
    """Print the contents of a local store (RocksDB state written by `streamproc run`), one JSON line per entry."""
    from ..runtime.task import Task
    from ..state.rocksdb import RocksDBBackend

    _, plan = compile_file(topology)
    spec = _pick_store(plan, store)
    if spec in plan.global_tables:
        snapshots = _global_snapshots(state_dir, plan, spec)
    else:
        st = next(s for s in plan.subtopologies if spec in s.stores)
        dirs = [d for d in _task_dirs(state_dir, plan.app_id) if d[0] == st.id]
        if not dirs:
            raise StateError(f"no local state for {plan.app_id!r} sub-topology {st.id} under {state_dir!r} "
                             f"(run the app there first, or `streamproc replay` it from the changelog)")
        snapshots = []
        for _, partition, path in dirs:
            backend = RocksDBBackend.for_task(path, st, read_only=True)
            try:
                snapshots.append(Task(st, partition, backend).snapshot(spec.name))
            finally:
                backend.close()
    windowed = spec.window is not None and spec.kind != "join"     # keys (group key, window start)
    found = []
    for snapshot in snapshots:
        for skey, value in snapshot.items():
            group_key = skey[0] if windowed else skey
            if key is None or _matches(group_key, key):
                found.append((group_key, value))
    if key is not None:
        if not found:
            raise StreamprocError(f"key {key!r} is not in store {spec.name!r}")
        value = [v for _, v in found] if windowed else found[0][1]
        typer.echo(_dump(value))
        return
    for k, v in found:
        typer.echo(_dump({"key": k, "value": v}))


def _global_snapshots(state_dir: str, plan, spec) -> list[dict]:
    """A global table's rows as held by the first worker directory that has them (each worker holds all)."""
    from ..operators.global_table import GlobalStore
    from ..state.rocksdb import RocksDBBackend

    dirs = _global_dirs(state_dir, plan.app_id)
    if not dirs:
        raise StateError(f"no local state for global table {spec.name!r} of {plan.app_id!r} under {state_dir!r} "
                         f"(run the app there first)")
    backend = RocksDBBackend(dirs[0][2], plan.global_tables, read_only=True)
    try:
        return [GlobalStore(spec, backend).snapshot()]
    finally:
        backend.close()


def _matches(group_key, text: str) -> bool:
    if group_key == text:
        return True
    try:
        return group_key == orjson.loads(text)
    except orjson.JSONDecodeError:
        return False


@app.command()
@guarded
def reset(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
    bootstrap_servers: Optional[str] = typer.Option(None, "--bootstrap-servers", "-b",
                                                    envvar="STREAMPROC_BOOTSTRAP_SERVERS"),
    local_only: bool = typer.Option(False, "--local-only",
                                    help="Only delete the local state (the changelog rebuilds it)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Start the app from scratch: delete its local state and, unless --local-only, its internal
    topics (changelogs, repartition) and consumer group, so input is reprocessed from the beginning.
    Stop every instance of the app first."""
    from ..kafka.admin import make_admin, wait_for_broker
    from ..kafka.config import admin_config
    from ..state.lock import TaskDirLock

    _, plan = compile_file(topology)
    dirs = _task_dirs(state_dir, plan.app_id) + _global_dirs(state_dir, plan.app_id)
    internal = plan.changelog_topics + plan.repartition_topics
    if not local_only and not bootstrap_servers:
        raise StreamprocError("reset deletes the app's internal topics and consumer group: give "
                              "--bootstrap-servers (or --local-only to delete only the local state)")
    what = [f"{len(dirs)} local task director{'y' if len(dirs) == 1 else 'ies'} under "
            f"{os.path.join(state_dir, plan.app_id)}"]
    if not local_only:
        what += [f"topics {', '.join(internal) or '(none)'}", f"consumer group {plan.app_id!r}"]
    if not yes and not typer.confirm(f"Delete {'; '.join(what)}?", default=False):
        raise typer.Exit(1)
    for _, _, path in dirs:
        lock = TaskDirLock(path)
        lock.acquire()          # refuses, naming the holder, while a worker runs
        lock.release()
        shutil.rmtree(path)
    if not local_only:
        wait_for_broker(admin_config(bootstrap_servers, plan.app_id), timeout_s=30)
        admin = make_admin(bootstrap_servers, plan.app_id)
        existing = set(admin.list_topics(timeout=30).topics)
        doomed = [t for t in internal if t in existing]
        for t, fut in (admin.delete_topics(doomed, operation_timeout=30).items() if doomed else []):
            try:
                fut.result(30)
            except Exception as e:  # noqa: BLE001 - reported as one line
                raise StreamprocError(f"could not delete topic {t!r}: {e}") from None
        try:
            for fut in admin.delete_consumer_groups([plan.app_id], request_timeout=30).values():
                fut.result(30)
        except Exception as e:  # noqa: BLE001
            if "GROUP_ID_NOT_FOUND" not in str(e):
                raise StreamprocError(
                    f"could not delete consumer group {plan.app_id!r} ({e}); is an instance still running?"
                ) from None
    err.print(f"reset {plan.app_id}: deleted {'; '.join(what)}")


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
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..kafka.admin import group_offsets, make_admin, wait_for_broker
    from ..kafka.config import admin_config, restore_consumer_config
    from ..runtime._changelog import META_CHANGELOG_OFFSETS, changelog_offsets
    from ..runtime.restore import Restorer
    from ..state.rocksdb import RocksDBBackend, task_dir
    from .run import _parse_config

    if not bootstrap_servers:
        raise StreamprocError("replay reads the changelog topics: give --bootstrap-servers "
                              "(or STREAMPROC_BOOTSTRAP_SERVERS)")
    _, plan = compile_file(topology)
    if store is not None:
        specs = [_pick_store(plan, store)]
        if specs[0] in plan.global_tables:
            raise StreamprocError(f"{specs[0].name!r} is a global table: every worker rebuilds it from topic "
                                  f"{specs[0].changelog!r} when it starts; there is nothing to replay")
    else:
        specs = list(plan.stores)
        if not specs:
            raise StreamprocError(f"topology {plan.app_id!r} has no stores: nothing to replay")
    by_st = []
    for st in plan.subtopologies:
        mine = [s for s in st.stores if s in specs]
        if mine:
            by_st.append((st, mine))
    wait_for_broker(admin_config(bootstrap_servers, plan.app_id), timeout_s=30)
    restorer = Restorer(restore_consumer_config(bootstrap_servers, plan.app_id, _parse_config(config)))
    backends = []
    try:
        md = restorer.topics(30)
        tasks = []
        for st, mine in by_st:
            topic = mine[0].changelog
            if topic not in md or md[topic].error is not None:
                raise StreamprocError(f"changelog topic {topic!r} of store {mine[0].name!r} does not exist "
                                      f"(has the app run against this cluster?)")
            available = sorted(md[topic].partitions)
            parts = sorted(set(partition)) if partition else available
            missing = [p for p in parts if p not in available]
            if missing:
                raise StreamprocError(f"changelog {topic!r} has partitions {available[0]}..{available[-1]}, "
                                      f"not {', '.join(map(str, missing))}")
            tasks += [(st, mine, p) for p in parts]
        # a table's restore ends at the app's committed offset of its topic (processing resumes there)
        tables = [(s.changelog, p) for st, mine, p in tasks for s in mine if s.source is not None]
        committed = group_offsets(make_admin(bootstrap_servers, plan.app_id), plan.app_id, tables) if tables else {}
        # empty the selected stores (and forget their changelog offsets): the replay reads each changelog whole
        for st, mine, p in tasks:
            path = task_dir(state_dir, plan.app_id, f"{st.id}_{p}")
            b = RocksDBBackend.for_task(path, st)           # refuses, naming the holder, while a worker runs
            names = {s.name for s in mine}
            for name in names:
                b.drop_store(name)
            offsets = {k: v for k, v in changelog_offsets(b).items() if k not in names}
            b.write({}, {META_CHANGELOG_OFFSETS: offsets})
            b.close()
            b = RocksDBBackend.for_task(path, st)           # recreates the dropped stores (kind, fingerprint)
            backends.append(b)
            restorer.start((st.id, p), b, mine, p,
                           {s.name: committed[(s.changelog, p)] for s in mine if (s.changelog, p) in committed})
        all_parts = [part for st, _, p in tasks for part in restorer.parts((st.id, p))]
        total = sum(max(0, part.end - part.first) for part in all_parts)
        t0 = time.monotonic()
        with Progress(TextColumn("replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err,
                      transient=False) as progress:
            bar = progress.add_task(plan.app_id, total=total, rate="")
            while restorer.pending:
                restorer.step(0.2)
                done = sum(min(part.position, part.end) - part.first for part in all_parts)
                secs = time.monotonic() - t0
                progress.update(bar, completed=done,
                                rate=f"{restorer.records_restored / secs:,.0f} records/s" if secs > 0 else "")
            progress.update(bar, completed=total)
        secs = time.monotonic() - t0
    finally:
        restorer.close()
        for b in backends:
            b.close()
    n = restorer.records_restored
    n_stores = len({s.name for _, mine, _ in tasks for s in mine})
    rate = n / secs if secs > 0 else 0.0
    typer.echo(f"replayed {n} records into {n_stores} store(s) of {len(tasks)} task(s) in {secs:.2f} s "
               f"({rate:,.0f} records/s)")
