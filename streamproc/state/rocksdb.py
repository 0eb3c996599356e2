"""``RocksDBBackend``: a task's stores on local disk (DESIGN section 5).

Layout of one task directory ``<state-dir>/<app-id>/<task-id>/``::

    LOCK          TaskDirLock: flock + "pid host" of the process using the directory
    rocksdb/      one RocksDB database (rocksdict, raw bytes mode)
        column family <store>     one per store; keys and values in the internal codec (state.codec)
        column family __index__:<store>    the time index of a windowed store (kinds window, session,
                                  sliding; see state.backend), written in the same WriteBatch as the
                                  store by write() and restore_batch(), never in a changelog:
                  kind window:    start(8) + key[:-8] -> b""   the store key is key[:-8] + start(8):
                                  its last 8 bytes are the window start, so the index entry is
                                  the key rotated, derived from the raw key without decoding
                  session/sliding b"t" + due(8) + key -> b""   due = the value's first element (its
                                                               due time), read from the raw msgpack
                                                               bytes (of the replaced value too, to
                                                               delete the entry it had)
                                  (times: 8 bytes big-endian, sign bit flipped: byte order = time order)
        column family __meta__    b"m:<name>"  -> value    task metadata (get_meta/write: stream_time,
                                                           changelog_offsets {store: offset}, ...)
                                  b"sys:format_version"    -> value int (FORMAT_VERSION)
                                  b"sys:kind:<store>"      -> value str (key encoding of the store)
                                  b"sys:fingerprint:<store>", b"sys:description:<store>" -> value str
                                  (every "value" above is codec.encode_value bytes)

``index_range(store, after, upto)`` is one bounded range scan of the time index: the windows
(or group keys) due in ``(after, upto]``, so an operator finds what closes without reading the
store, and a task is built without reading its stores at all.

Live keys (``live_keys``, the ``streamproc_store_keys`` metric) are counted exactly, not estimated:
RocksDB's ``estimate-num-keys`` counts every put still in a memtable (a key updated 1000 times
counts 1000 times) and deletes as entries, so it says thousands for a dozen hot keys. A store's
first ``live_keys`` counts its keys with a key-only scan (in chunks of :data:`COUNT_CHUNK`, over
several calls for a large store, so the loop never stalls); from then on every ``write`` adds
the keys it creates and subtracts the keys it deletes. Whether a written key existed is known
from the reads the operators made since the last write (``get``/``get_many`` remember it) or
from the stored values a session/sliding store's write reads anyway; only the remaining keys
cost one multi-get. A restore (``restore_batch``) makes the store count again. Only store
families are counted: never the time index, never the metadata.

``write(changes, meta)`` puts every store's changes and the metadata into ONE RocksDB
WriteBatch with the WAL on: the data and the changelog offsets it reflects are durable
together or not at all, so local state never runs ahead of (or behind) the offsets it claims.

Opening checks the format version and each store's fingerprint (the definition of the
operator that wrote it); a mismatch is a :class:`StateError` that names the store, shows
the old and new definitions and how to reset - stores are never silently mixed.

RocksDB options (see :func:`_cf_options` / :func:`_db_options`) are tuned for many small
per-task databases in one worker process, bounded memory, and fast bulk restore:

* memory: one block cache (128 MiB) shared by every database of the process, with the
  memtables charged to it through one shared WriteBufferManager (64 MiB), and index and
  filter blocks kept *in* that cache, so a worker's RocksDB memory stays flat however large
  its state grows; ``configure_memory()`` changes the budget before the first open;
* writes: 32 MiB memtables (x3) per store: a restore of ~1M records flushes a couple of
  times instead of tens; atomic_flush so all stores and ``__meta__`` flush together, and a
  64 MiB cap on the WAL so the tiny ``__meta__`` family never pins old WAL files;
* WAL on, not fsynced per write (``sync=False``): a write survives a
  process crash (the WAL is in the OS page cache). After a machine crash, point-in-time WAL
  recovery yields an earlier consistent checkpoint (data and offsets still match) and the
  restore replays the changelog tail. ``sync=True`` fsyncs each write batch instead;
* except for a restore's writes (``restore_columns``): they skip the WAL, as a bulk load does
  (the changelog is their log). Each is still one WriteBatch with the offsets it reflects, and
  RocksDB's own flushes (``atomic_flush``) persist every family at the same point, so a crash
  loses a suffix of them, offsets included, and the restore resumes from the offsets that
  survived. Before the next logged write (and on close) they are flushed, the stores and time
  indexes before ``__meta__``: a logged write never lands on state missing restored records,
  and offsets on disk are never ahead of the data;
* reads are point lookups (one multi-get per operator batch), many of them for keys not
  there yet (a new window): 10-bit bloom filters in the SST files and a memtable bloom
  filter answer those without touching data blocks; 16 KiB blocks. Time index families are
  only ever range-scanned: no bloom filters there;
* lz4 compression (cheap on 2 cores; small msgpack states compress well), dynamic level sizes,
  2 background jobs, small info LOG files.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from collections import deque
from itertools import repeat
from operator import itemgetter

from rocksdict import (AccessType, BlockBasedOptions, Cache, DBCompressionType, DBRecoveryMode, Options,
                       Rdict, ReadOptions, WriteBatch, WriteBufferManager, WriteOptions)

from ..errors import StateError, StreamprocError
from ..kinds import StoreKind
from .backend import DELETED, DUE_KINDS, INDEXED_KINDS, MIN_TIME, Backend
from .definition import RESET_HINT, changed_definition
from .codec import (KEY_FORMAT, KINDS, VALUE_FORMAT, WINDOWED_KINDS, decode_key, decode_value, decode_values,
                    encode_value, key_decoder, key_encoder, window_range)
from . import layout
from .lock import TaskDirLock

log = logging.getLogger("streamproc.state")

__all__ = ["RocksDBBackend", "FORMAT_VERSION", "META_CF", "DB_DIR", "describe_store", "task_dir",
           "configure_memory"]

FORMAT_VERSION = 3          # 1: pickled values (refused: run `streamproc reset`); 2: state.codec;
                            # 3: + time indexes of windowed stores (2 is refused: it has none)
META_CF = "__meta__"
INDEX_CF_PREFIX = "__index__:"      # ":" is never in a store name (the plan allows [A-Za-z0-9._-])
DB_DIR = "rocksdb"
_SYS_VERSION = b"sys:format_version"
_KV = StoreKind.KV.value            # a store's kind, as stored and shown, when nothing says otherwise

#: Keys the first count of a store reads per ``live_keys`` call (~25 ms): a large store is counted over
#: several calls (see the module doc).
COUNT_CHUNK = 250_000
#: Reads remembered per store between two writes (to know whether a written key existed) at most.
_SEEN_MAX = 1_000_000


def _sys_key(what: str, store: str) -> bytes:
    return f"sys:{what}:{store}".encode()


def _meta_key(name: str) -> bytes:
    return b"m:" + name.encode()


def _index_cf(store: str) -> str:
    return INDEX_CF_PREFIX + store


_first_byte = itemgetter(0)
_U64 = struct.Struct(">Q")
_FLIP = 1 << 63
_MAX_TIME = (1 << 63) - 1
_BE = {0xcd: 2, 0xce: 4, 0xcf: 8}          # msgpack uint16/32/64
_BE_SIGNED = {0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}


def _time8(t: int) -> bytes:
    """8 bytes whose byte order is the order of the int64 ``t``."""
    return _U64.pack(t + _FLIP)


def _raw_due(vb: bytes) -> int:
    """The first element of an encoded list value when it is an int64 (a session/sliding due time),
    read from the msgpack bytes without decoding the rest; ``MIN_TIME`` otherwise."""
    try:
        if vb[0] != VALUE_FORMAT:
            return MIN_TIME
        h = vb[1]
        if 0x91 <= h <= 0x9f:                               # fixarray, not empty
            p = 2
        elif h == 0xdc and vb[2:4] != b"\x00\x00":         # array16
            p = 4
        elif h == 0xdd and vb[2:6] != b"\x00\x00\x00\x00":  # array32
            p = 6
        else:
            return MIN_TIME
        b = vb[p]
        if b <= 0x7f:
            return b
        if b >= 0xe0:
            return b - 0x100
        if b == 0xcc:
            return vb[p + 1]
        n = _BE.get(b)
        if n is not None:
            if len(vb) < p + 1 + n:
                return MIN_TIME
            t = int.from_bytes(vb[p + 1:p + 1 + n], "big")
            return t if t <= _MAX_TIME else MIN_TIME
        n = _BE_SIGNED.get(b)
        if n is not None and len(vb) >= p + 1 + n:
            return int.from_bytes(vb[p + 1:p + 1 + n], "big", signed=True)
    except IndexError:
        pass
    return MIN_TIME


def _due8(vb: bytes) -> bytes:
    """``_time8(_raw_due(vb))``, with a fast path for what operators write: a short list led by an
    epoch-millisecond due time (msgpack uint64 below 2^63: flipping the sign bit is setting bit 63)."""
    if len(vb) > 10 and vb[2] == 0xcf and vb[3] < 0x80 and 0x91 <= vb[1] <= 0x9f and vb[0] == VALUE_FORMAT:
        return bytes((vb[3] | 0x80,)) + vb[4:11]
    return _time8(_raw_due(vb))


def _check_raw_keys(store: str, keys: list, min_len: int) -> None:
    """Restored keys must look like store keys (format byte, long enough): a ``StateError`` naming the first
    that does not (its index among ``keys``). One C-level pass each when they all do."""
    if keys and (min(map(len, keys)) >= min_len and set(map(_first_byte, keys)) == {KEY_FORMAT}):
        return
    for n, kb in enumerate(keys):
        if len(kb) < min_len or kb[0] != KEY_FORMAT:
            raise StateError(f"changelog record {n} of store {store!r} has a key that is not a streamproc "
                             f"store key ({kb[:60]!r}): it cannot be restored")


def _put_all(wb, h, keys, values) -> None:
    """Put ``zip(keys, values)`` into family ``h`` of write batch ``wb``; a None value deletes its key.
    Later entries of a key win (the batch keeps their order)."""
    if None not in values:
        deque(map(wb.put, keys, values, repeat(h)), 0)      # no Python frame per entry
        return
    put, delete = wb.put, wb.delete
    for kb, vb in zip(keys, values):
        if vb is None:
            delete(kb, h)
        else:
            put(kb, vb, h)


class _Index:
    """The time index column family of one store."""

    __slots__ = ("cf", "h", "due")

    def __init__(self, cf, h, due: bool):
        self.cf, self.h, self.due = cf, h, due


class _KeyCount:
    """The live keys of one store: ``n`` counts every key below ``upto`` (``upto`` None: every key, so
    ``n`` is exact); ``seen``: encoded key -> whether it is stored, learnt from reads since the last write."""

    __slots__ = ("n", "upto", "seen")

    def __init__(self):
        self.n = 0
        self.upto: bytes | None = b""
        self.seen: dict = {}


def task_dir(state_dir: str, app_id: str, task_id: str) -> str:
    """``<state-dir>/<app-id>/<task-id>``: where a task's backend lives (``state.layout``)."""
    return layout.task_dir(state_dir, app_id, task_id)


# ------------------------------------------------------------------------------------- options
_mem_lock = threading.Lock()
_mem = {"cache_bytes": 128 << 20, "write_buffer_bytes": 64 << 20, "cache": None, "wbm": None}


def configure_memory(block_cache_bytes: int | None = None, write_buffer_bytes: int | None = None) -> None:
    """Set the process-wide RocksDB memory budget (before the first backend opens).

    ``block_cache_bytes``: the cache shared by every task database, memtables included;
    ``write_buffer_bytes``: memtable total across all databases (charged to that cache).
    """
    with _mem_lock:
        if _mem["cache"] is not None:
            raise StateError("configure_memory() must be called before the first RocksDB backend is opened")
        if block_cache_bytes is not None:
            _mem["cache_bytes"] = int(block_cache_bytes)
        if write_buffer_bytes is not None:
            _mem["write_buffer_bytes"] = int(write_buffer_bytes)


def _shared():
    with _mem_lock:
        if _mem["cache"] is None:
            _mem["cache"] = Cache(_mem["cache_bytes"])
            _mem["wbm"] = WriteBufferManager.new_write_buffer_manager_with_cache(
                _mem["write_buffer_bytes"], False, _mem["cache"])
        return _mem["cache"], _mem["wbm"]


def _cf_options(*, data: bool = True, index: bool = False) -> Options:
    """Options of a store family (``data``), a time index family (``index``: only ever range-scanned, so
    no bloom filters, which would cost a hash and a cache miss per write and cache space) or ``__meta__``."""
    cache, wbm = _shared()
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.create_missing_column_families(True)
    o.set_write_buffer_manager(wbm)
    if data:
        o.set_write_buffer_size(32 << 20)
        o.set_max_write_buffer_number(3)
        if not index:
            o.set_memtable_whole_key_filtering(True)
            o.set_memtable_prefix_bloom_ratio(0.05)
    else:                                    # __meta__: a handful of small keys
        o.set_write_buffer_size(1 << 20)
    o.set_compression_type(DBCompressionType.lz4())
    o.set_level_compaction_dynamic_level_bytes(True)
    t = BlockBasedOptions()
    t.set_block_cache(cache)
    t.set_block_size(16 << 10)
    if not index:
        t.set_bloom_filter(10, False)
    t.set_cache_index_and_filter_blocks(True)
    t.set_pin_l0_filter_and_index_blocks_in_cache(True)
    o.set_block_based_table_factory(t)
    return o


def _db_options() -> Options:
    o = _cf_options(data=False)              # also the "default" family's options (unused)
    o.set_max_background_jobs(2)
    o.set_atomic_flush(True)                 # restore_columns() relies on it (see the module doc)
    o.set_max_total_wal_size(64 << 20)
    o.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    o.set_max_open_files(256)
    o.set_keep_log_file_num(2)
    o.set_max_log_file_size(1 << 20)
    o.set_stats_dump_period_sec(0)
    return o


# ------------------------------------------------------------------------------------- descriptions
def describe_store(spec) -> str:
    """A human-readable definition of store ``spec`` (for changed-definition messages): the plan's
    description, else its kind and window."""
    own = getattr(spec, "description", None)
    if own:
        return own
    w = getattr(spec, "window", None)
    return f"{spec.kind} store; " + (w.describe() if w is not None else "table (no window)")


# ------------------------------------------------------------------------------------- backend
class RocksDBBackend(Backend):
    """Every store of one task in one RocksDB database under ``path`` (the task directory).

    ``stores``: the task's ``StoreSpec``s (kind, fingerprint) or plain store names (kind taken
    from the database, else ``"kv"``; no fingerprint check unless ``fingerprints`` says so).
    ``fingerprints`` / ``descriptions``: ``{store: ...}``, override or complete the specs.
    ``lock_timeout``: seconds to wait for another process to release the task directory.
    ``sync``: fsync every write batch (default: WAL written, not fsynced; see the module doc).
    ``read_only``: open without the lock for inspection (``streamproc state``) while a worker
    may be running; sees the state as of the open; writes are refused. ``secondary``: a directory
    of its own for a RocksDB *secondary* instance that follows the running worker's database
    (``catch_up()`` sees its newest committed writes): the interactive queries' read path.
    """

    def __init__(self, path, stores: list | tuple = (), *, fingerprints: dict[str, str] | None = None,
                 descriptions: dict[str, str] | None = None, lock_timeout: float = 0.0, sync: bool = False,
                 read_only: bool = False, secondary: str | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.db_path = os.path.join(self.path, DB_DIR)
        self.secondary = secondary
        read_only = read_only or secondary is not None
        self.read_only = read_only
        self._db = None
        self._lock = None
        self._count: dict[str, _KeyCount] = {}        # store -> live key count (see the module doc)
        self._wopt = WriteOptions()
        self._wopt.sync = bool(sync)
        self._wopt_restore = WriteOptions()          # restore_columns(): no WAL (see the module doc)
        self._wopt_restore.disable_wal = True
        self._unlogged = False                       # restored writes not flushed yet
        kinds, fps, descs = self._normalize(stores, fingerprints, descriptions)
        if not read_only:
            self._lock = TaskDirLock(self.path).acquire(timeout=lock_timeout)
        try:
            self._open(kinds, fps, descs)
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_task(cls, path, subtopology, **kwargs) -> "RocksDBBackend":
        """Open the backend of a task of ``subtopology``: its stores, fingerprints and readable definitions."""
        return cls(path, list(subtopology.stores), **kwargs)

    # ------------------------------------------------------------------ open
    @staticmethod
    def _normalize(stores, fingerprints, descriptions):
        kinds: dict[str, str | None] = {}
        fps: dict[str, str] = {}
        descs: dict[str, str] = {}
        for s in stores:
            if isinstance(s, str):
                kinds[s] = None
            else:
                kinds[s.name] = s.kind
                if getattr(s, "fingerprint", None):
                    fps[s.name] = s.fingerprint
                descs[s.name] = describe_store(s)
        for name in (fingerprints or {}):
            kinds.setdefault(name, None)
        fps.update(fingerprints or {})
        descs.update(descriptions or {})
        for name, kind in kinds.items():
            if name == META_CF or name.startswith(INDEX_CF_PREFIX):
                raise StateError(f"a store cannot be named {name!r}: the state backend uses that name")
            if kind is not None and kind not in KINDS:
                raise StateError(f"store {name!r} has unknown kind {kind!r} (known: {', '.join(KINDS)})")
        return kinds, fps, descs

    def _open(self, kinds, fps, descs) -> None:
        """Open the database with the column families of ``kinds`` (store -> kind or None), check its format
        version and each store's kind and fingerprint, record those of new stores, open the time indexes."""
        names = self._family_names(kinds)
        self._connect(names)
        raw = self._read_meta_family(self._cf.get(META_CF))
        self._meta = {k[2:].decode(): v for k, v in raw.items() if k.startswith(b"m:")}
        self._sys = {k: v for k, v in raw.items() if k.startswith(b"sys:")}
        setup = self._check_version(names)
        self._kind: dict[str, str] = {}        # store -> kind, a plain str as stored (sys:kind:<store>)
        for n in names:
            if n != META_CF and not n.startswith(INDEX_CF_PREFIX):
                self._kind[n] = self._sys.get(_sys_key("kind", n)) or _KV
        problems = []
        for name, kind in kinds.items():
            problem = self._check_store(name, kind, fps.get(name), descs.get(name, ""), setup)
            if problem is not None:
                problems.append(problem)
        if problems:
            raise StateError("\n".join(problems))
        if setup and not self.read_only:
            self._write_setup(setup)
        self._open_stores(kinds)

    def _family_names(self, kinds) -> list[str]:
        """The column families to open: those the database has, plus (writable) the metadata, each store of
        ``kinds`` and the time index of each indexed one."""
        exists = os.path.exists(os.path.join(self.db_path, "CURRENT"))
        if self.read_only and not exists:
            raise StateError(f"there is no local state in {self.path} (no RocksDB database in {self.db_path})")
        try:
            existing = [c for c in Rdict.list_cf(self.db_path, Options(raw_mode=True))] if exists else []
        except Exception as e:  # noqa: BLE001 - rocksdict raises plain Exception
            raise StateError(f"cannot read the local state in {self.db_path}: {e}; {RESET_HINT}") from None
        if self.read_only:
            return [c for c in existing if c != "default"]
        return list(dict.fromkeys([c for c in existing if c != "default"] + [META_CF] + list(kinds)
                                  + [_index_cf(n) for n, k in kinds.items() if k in INDEXED_KINDS]))

    def _connect(self, names: list[str]) -> None:
        """Open the database (read-write, read-only or as a secondary) with the column families ``names``."""
        cfs = {n: _cf_options(data=n != META_CF, index=n.startswith(INDEX_CF_PREFIX)) for n in names}
        if self.secondary is not None:       # follows a running worker's database (catch_up)
            os.makedirs(self.secondary, exist_ok=True)
            access = AccessType.secondary(self.secondary)
        else:
            access = AccessType.read_only(False) if self.read_only else AccessType.read_write()
        try:
            self._db = Rdict(self.db_path, options=_db_options(), column_families=cfs, access_type=access)
        except Exception as e:  # noqa: BLE001
            raise StateError(f"cannot open the local state in {self.db_path}: {e}; {RESET_HINT}") from None
        self._cf: dict[str, Rdict] = {n: self._db.get_column_family(n) for n in names}
        self._h = {n: self._db.get_column_family_handle(n) for n in names}

    def _check_version(self, names: list[str]) -> dict:
        """Refuse state of another format version; new state (no version, no data) gets this one: the
        ``{sys key: value}`` to record."""
        version = self._sys.get(_SYS_VERSION)
        if version is None:
            stored = [n for n in names if n != META_CF and next(iter(self._cf[n].keys()), None) is not None]
            if stored:
                raise StateError(
                    f"the local state in {self.path} has data (stores {', '.join(stored)}) but no streamproc format "
                    f"version: it was not written by streamproc or is damaged; {RESET_HINT}")
            return {_SYS_VERSION: FORMAT_VERSION}
        if version != FORMAT_VERSION:
            raise StateError(
                f"the local state in {self.path} has format version {version}, this streamproc reads format "
                f"version {FORMAT_VERSION}; {RESET_HINT}")
        return {}

    def _check_store(self, name: str, kind, fp: str | None, desc: str, setup: dict) -> str | None:
        """Check store ``name`` against its stored kind and fingerprint: the problem (a changed definition),
        or None. What a new store (or one without a fingerprint yet) records goes into ``setup``."""
        stored_kind = self._sys.get(_sys_key("kind", name))
        if kind is not None and stored_kind is not None and stored_kind != kind:
            return self._mismatch(name, f"a {stored_kind} store", f"a {kind} store", None, None)
        if stored_kind is None:
            self._kind[name] = str(kind or _KV)
            setup[_sys_key("kind", name)] = self._kind[name]
        if fp is None:
            return None
        old = self._sys.get(_sys_key("fingerprint", name))
        if old is None:
            setup[_sys_key("fingerprint", name)] = fp
            setup[_sys_key("description", name)] = desc
        elif old != fp:
            return self._mismatch(name, self._sys.get(_sys_key("description", name)) or "?", desc or "?", old, fp)
        return None

    def _write_setup(self, setup: dict) -> None:
        """Record ``setup`` (``{sys key: value}``: format version, new stores' kinds and fingerprints)."""
        wb = WriteBatch(raw_mode=True)
        h = self._h[META_CF]
        for k, v in setup.items():
            wb.put(k, encode_value(v), h)
        self._db.write(wb)
        self._sys.update(setup)

    def _open_stores(self, kinds) -> None:
        """Key codecs and time indexes of every store in the database; stores not in ``kinds`` are stale."""
        self.stale_stores = sorted(n for n in self._kind if n not in kinds)
        if self.stale_stores and kinds:
            log.info("local state %s holds stores the topology no longer has: %s", self.path,
                     ", ".join(self.stale_stores))
        self._enc = {n: key_encoder(k) for n, k in self._kind.items()}
        self._dec = {n: key_decoder(k) for n, k in self._kind.items()}
        self._ix: dict[str, _Index] = {}
        for n, k in self._kind.items():
            if k in INDEXED_KINDS:
                self._open_index(n, k)

    def _open_index(self, store: str, kind: str) -> None:
        """The time index of ``store``; one missing (never the case for state of this format, whose
        writes always kept it) is created and filled from the store."""
        name = _index_cf(store)
        if name not in self._cf:
            if self.read_only:
                return
            self._cf[name] = self._db.create_column_family(name, _cf_options(index=True))
            self._h[name] = self._db.get_column_family_handle(name)
            ix = self._ix[store] = _Index(self._cf[name], self._h[name], kind in DUE_KINDS)
            self._fill_index(store, ix)
            return
        self._ix[store] = _Index(self._cf[name], self._h[name], kind in DUE_KINDS)

    def _fill_index(self, store: str, ix: _Index) -> None:
        cf = self._cf.get(store)
        if cf is None:
            return
        batch: list = []
        for kb, vb in cf.items():
            batch.append((kb, vb))
            if len(batch) >= 10_000:
                self._write_index_only(store, ix, batch)
                batch = []
        if batch:
            self._write_index_only(store, ix, batch)

    def _write_index_only(self, store, ix, records) -> None:
        wb = WriteBatch(raw_mode=True)
        if ix.due:
            self._due_records(wb, None, ix, records)
        else:
            for kb, _ in records:
                wb.put(kb[-8:] + kb[:-8], b"", ix.h)
        self._write_logged(wb)

    def _read_meta_family(self, meta_cf) -> dict:
        """``{raw key: value}`` of the metadata family; state of an older format is refused."""
        raw = {}
        if meta_cf is None:
            return raw
        for k, v in meta_cf.items():
            if v[:1] == b"\x80":              # format 1 stored pickles: never unpickle, refuse
                raise StateError(
                    f"the local state in {self.path} was written by an older streamproc (format 1, pickle), "
                    f"which this version does not read; {RESET_HINT}")
            try:
                raw[k] = decode_value(v)
            except StreamprocError as e:
                raise StateError(f"the local state in {self.path} has damaged metadata ({k[:40]!r}: {e}); "
                                 f"{RESET_HINT}") from None
        return raw

    def _mismatch(self, store, old_desc, new_desc, old_fp, new_fp) -> str:
        return changed_definition(store, self.path, old_desc, new_desc, old_fp, new_fp)

    # ------------------------------------------------------------------ reads
    def _readable(self) -> None:
        if self._db is None:
            raise StateError(f"the state backend of {self.path} is closed")

    def get(self, store, key):
        self._readable()
        cf = self._cf.get(store)
        if cf is None or store == META_CF:
            return None
        kb = self._enc[store](key)
        v = cf.get(kb)
        c = self._count.get(store) if self._count else None
        if c is not None and len(c.seen) < _SEEN_MAX:
            c.seen[kb] = v is not None
        return None if v is None else decode_value(v)

    def get_many(self, store, keys):
        self._readable()
        cf = self._cf.get(store)
        if cf is None or store == META_CF:
            return [None] * len(keys)
        if not keys:
            return []
        enc = self._enc[store]
        kbs = [enc(k) for k in keys]
        found = cf.get(kbs)                              # one multi-get
        c = self._count.get(store) if self._count else None
        if c is not None and len(c.seen) < _SEEN_MAX:
            c.seen.update(zip(kbs, [v is not None for v in found]))
        return decode_values(found)

    def items(self, store):
        return list(self.iter_items(store))

    def iter_items(self, store, lower: bytes | None = None, upper: bytes | None = None):
        """``(key, value)`` of ``store`` in key order, optionally within the encoded key range ``[lower, upper)``."""
        for _, k, v in self.iter_raw_items(store, lower, upper):
            yield k, v

    def iter_raw_items(self, store, lower: bytes | None = None, upper: bytes | None = None):
        """``(encoded key, key, value)`` like :meth:`iter_items` (the encoded key orders entries across tasks)."""
        self._readable()
        cf = self._cf.get(store)
        if cf is None or store == META_CF:
            return
        dec = self._dec[store]
        ropt = None
        if upper is not None:
            ropt = ReadOptions()
            ropt.set_iterate_upper_bound(upper)
        for k, v in cf.items(from_key=lower, read_opt=ropt):
            yield k, dec(k), decode_value(v)

    def keys(self, store) -> list:
        """Every key of ``store`` (values are not decoded: cheaper than ``items`` for rebuilding indexes)."""
        self._readable()
        cf = self._cf.get(store)
        if cf is None or store == META_CF:
            return []
        dec = self._dec[store]
        return [dec(k) for k in cf.keys()]

    def windows(self, store, group_key, start_from: int | None = None, start_to: int | None = None) -> list:
        """``[((group_key, start), value)]`` of a windowed store, ``start_from <= start < start_to``, by start.

        One range scan: all windows of a key are adjacent on disk. (Backend view: a Store's
        write cache is not overlaid.)
        """
        if self._kind.get(store) not in WINDOWED_KINDS:
            raise StateError(f"store {store!r} is not a windowed store (kind {self._kind.get(store)!r})")
        lower, upper = window_range(group_key, start_from, start_to)
        return list(self.iter_items(store, lower, upper))

    def declare_index(self, store, kind):
        return kind in INDEXED_KINDS and self._kind.get(store) == kind and store in self._ix

    def index_range(self, store, after, upto):
        """Keys of ``store`` whose time (window start; due time) is in ``(after, upto]``, in time order:
        one range scan of the store's time index (see the module doc)."""
        self._readable()
        ix = self._ix.get(store)
        if ix is None:
            raise StateError(f"store {store!r} has no time index (kind {self._kind.get(store)!r})")
        if after is not None and after >= upto:
            return []
        prefix = b"t" if ix.due else b""
        lower = prefix + _time8(after + 1) if after is not None else (prefix or None)
        upper = prefix + _time8(upto + 1) if upto < _MAX_TIME else None
        ropt = ReadOptions()
        if lower is not None:
            ropt.set_iterate_lower_bound(lower)
        if upper is not None:
            ropt.set_iterate_upper_bound(upper)
        if ix.due:
            dec = decode_key
            return [dec(ik[9:]) for ik in ix.cf.keys(from_key=lower, read_opt=ropt)]
        dec = self._dec[store]
        return [dec(ik[8:] + ik[:8]) for ik in ix.cf.keys(from_key=lower, read_opt=ropt)]

    def index_max(self, store):
        self._readable()
        ix = self._ix.get(store)
        if ix is None:
            raise StateError(f"store {store!r} has no time index (kind {self._kind.get(store)!r})")
        last = next(iter(ix.cf.keys(backwards=True)), None)
        if last is None:
            return None
        p = 1 if ix.due else 0
        return _U64.unpack_from(last, p)[0] - _FLIP

    def get_meta(self, name, default=None):
        return self._meta.get(name, default)

    def kind(self, store) -> str | None:
        return self._kind.get(store)

    def fingerprint(self, store) -> str | None:
        return self._sys.get(_sys_key("fingerprint", store))

    def description(self, store) -> str | None:
        return self._sys.get(_sys_key("description", store))

    @property
    def store_names(self) -> list[str]:
        return sorted(self._kind)

    # ------------------------------------------------------------------ writes
    def _writable(self) -> None:
        if self._db is None:
            raise StateError(f"the state backend of {self.path} is closed")
        if self.read_only:
            raise StateError(f"the state in {self.path} was opened read-only")

    def catch_up(self) -> None:
        """A secondary instance (``secondary=``): see what the worker owning the database committed since."""
        if self.secondary is None:
            raise StateError("catch_up() is for a backend opened with secondary=")
        self._db.try_catch_up_with_primary()

    def live_keys(self, store):
        """The keys ``store`` holds, exactly (see the module doc); None while a large store's first count is
        still under way (each call counts up to :data:`COUNT_CHUNK` more keys) or for an unknown store."""
        cf = self._cf.get(store)
        if cf is None or self._db is None or store == META_CF or store.startswith(INDEX_CF_PREFIX):
            return None
        if self.read_only:          # nothing keeps a count up to date here: count what is there now
            return sum(1 for _ in cf.keys())
        c = self._count.get(store)
        if c is None:
            c = self._count[store] = _KeyCount()
        if c.upto is not None:
            n, last = 0, None
            for last in cf.keys(from_key=c.upto or None):
                n += 1
                if n >= COUNT_CHUNK:
                    break
            c.n += n
            c.upto = last + b"\x00" if n >= COUNT_CHUNK else None    # the next key after ``last``
        return c.n if c.upto is None else None

    def _count_changes(self, store: str, c: _KeyCount, kbs: list, values) -> int:
        """How the live key count of ``store`` changes when the changes ``zip(kbs, values)`` (``DELETED``
        or a value; at most one per key) are written; called before the write, on the state it replaces."""
        upto = c.upto
        seen = c.seen
        if upto is not None:         # keys from ``upto`` on are counted by the scan, as they are then
            pairs = [(kb, v) for kb, v in zip(kbs, values) if kb < upto]
            kbs = [kb for kb, _ in pairs]
            values = [v for _, v in pairs]
        unknown = [kb for kb in kbs if kb not in seen]
        if unknown:
            found = self._cf[store].get(unknown)                # one multi-get
            seen.update(zip(unknown, [v is not None for v in found]))
        delta = 0
        for kb, v in zip(kbs, values):
            if v is DELETED:
                if seen[kb]:
                    delta -= 1
            elif not seen[kb]:
                delta += 1
        return delta

    def _store_handle(self, store: str):
        h = self._h.get(store)
        if h is None:
            if store == META_CF or store.startswith(INDEX_CF_PREFIX):
                raise StateError(f"{store!r} is not a store")
            # a store this backend was not opened with: a plain kv store, as a MemoryBackend would take it
            cf = self._db.create_column_family(store, _cf_options())
            self._cf[store] = cf
            h = self._h[store] = self._db.get_column_family_handle(store)
            self._kind[store] = _KV
            self._enc[store] = key_encoder(_KV)
            self._dec[store] = key_decoder(_KV)
            wb = WriteBatch(raw_mode=True)
            wb.put(_sys_key("kind", store), encode_value(_KV), self._h[META_CF])
            self._write_logged(wb)
            self._sys[_sys_key("kind", store)] = _KV
        return h

    def write(self, changes, meta):
        self._writable()
        wb = WriteBatch(raw_mode=True)
        dumps = encode_value
        counts = self._count
        deltas = []                              # (counter, change of its live keys), applied once written
        for store, kv in changes.items():
            if not kv:
                continue
            h = self._store_handle(store)
            enc = self._enc[store]
            put, delete = wb.put, wb.delete
            ix = self._ix.get(store)
            c = counts.get(store) if counts else None
            if ix is None:
                kbs = [enc(k) for k in kv]
                for kb, v in zip(kbs, kv.values()):
                    if v is DELETED:
                        delete(kb, h)
                    else:
                        put(kb, dumps(v), h)
            elif not ix.due:                     # window store: the index entry is the key rotated
                ih = ix.h
                kbs = [enc(k) for k in kv]
                for kb, v in zip(kbs, kv.values()):
                    if v is DELETED:
                        delete(kb, h)
                        delete(kb[-8:] + kb[:-8], ih)
                    else:
                        put(kb, dumps(v), h)
                        put(kb[-8:] + kb[:-8], b"", ih)
            else:
                kbs = [enc(k) for k in kv]
                self._due_records(wb, h, ix, [(kb, None if v is DELETED else dumps(v))
                                              for kb, v in zip(kbs, kv.values())], self._cf[store], c)
            if c is not None:
                deltas.append((c, self._count_changes(store, c, kbs, kv.values())))
        self._put_meta(wb, meta)
        try:
            self._write_logged(wb)
        except BaseException:
            self._count.clear()                  # not written: count again from what is stored
            raise
        for c in counts.values():                # what was read described the state before this write
            c.seen = {}
        for c, d in deltas:
            c.n += d
        if meta:
            self._meta.update(meta)

    def _due_records(self, wb, h, ix: _Index, records, cf=None, count: _KeyCount | None = None) -> None:
        """Put raw ``records`` [(key, value or None)] of a session/sliding store (handle ``h``, family ``cf``)
        into ``wb`` with their due-time index entries; ``h`` None: the index entries only (the records
        are stored already). Later records of a key win. The index entry a record replaces is found
        from the due time of the value it replaces (one multi-get of the stored values), which also tells
        ``count`` (the store's live key count, if kept) which keys exist."""
        distinct = list(dict.fromkeys(kb for kb, _ in records))
        if h is None:
            cur = dict.fromkeys(distinct)
        else:
            olds = cf.get(distinct)
            cur = {kb: None if ov is None else _due8(ov) for kb, ov in zip(distinct, olds)}
            if count is not None:
                count.seen.update(zip(distinct, [ov is not None for ov in olds]))
        ih = ix.h
        put, delete = wb.put, wb.delete
        for kb, vb in records:
            old = cur[kb]
            if vb is None:
                if h is not None:
                    delete(kb, h)
                if old is not None:
                    delete(b"t" + old + kb, ih)
                    cur[kb] = None
                continue
            if h is not None:
                put(kb, vb, h)
            t = _due8(vb)
            if t != old:
                if old is not None:
                    delete(b"t" + old + kb, ih)
                put(b"t" + t + kb, b"", ih)
                cur[kb] = t

    def _put_meta(self, wb, meta) -> None:
        if meta:
            h = self._h[META_CF]
            for name, v in meta.items():
                wb.put(_meta_key(name), encode_value(v), h)

    def bulk_restore(self, store: str, records, meta: dict | None = None) -> int:
        """Apply changelog records ``[(key_bytes, value_bytes_or_None), ...]`` to ``store`` in one batch.

        Keys and values are the changelog's bytes, which are the stored bytes (the same codec):
        they are copied as they are, so the caller must have checked that they decode (the
        restore loop does). None deletes; later records of a key win. ``meta`` (e.g. the changelog
        offsets reached, the stream time) is written in the same atomic batch. Reserved changelog
        records (the metadata record) are the caller's: leave them out. Returns the count.
        """
        return self.restore_batch({store: records}, meta)

    def restore_batch(self, records_by_store: dict, meta: dict | None = None) -> int:
        """:meth:`bulk_restore` for several stores at once: ``{store: [(key_bytes, value_bytes_or_None)]}``
        and ``meta``, all in ONE write batch. Returns the number of records applied."""
        return self.restore_columns({store: ([kb for kb, _ in records], [vb for _, vb in records])
                                     for store, records in records_by_store.items()}, meta)

    def restore_columns(self, columns_by_store: dict, meta: dict | None = None) -> int:
        """:meth:`restore_batch` with each store's records as two columns: ``{store: (keys, values)}``
        (lists of bytes; a None value deletes its key). What the restore loop hands over."""
        self._writable()
        wb = WriteBatch(raw_mode=True)
        total = 0
        for store, (keys, values) in columns_by_store.items():
            self._count.pop(store, None)          # restored: counted again by the next live_keys
            h = self._store_handle(store)
            if not keys:
                continue
            ix = self._ix.get(store)
            _check_raw_keys(store, keys, 10 if ix is not None and not ix.due else 2)
            if ix is None:
                _put_all(wb, h, keys, values)
            elif not ix.due:          # the index entry is the raw key rotated: no decoding
                _put_all(wb, h, keys, values)
                _put_all(wb, ix.h, [kb[-8:] + kb[:-8] for kb in keys],
                         [None if vb is None else b"" for vb in values] if None in values else [b""] * len(keys))
            else:
                self._due_records(wb, h, ix, list(zip(keys, values)), self._cf[store])
            total += len(keys)
        self._put_meta(wb, meta)
        self._unlogged = True
        self._db.write(wb, self._wopt_restore)
        if meta:
            self._meta.update(meta)
        return total

    def _write_logged(self, wb) -> None:
        """Write ``wb`` with the WAL on: restored writes (which skip it) are flushed first, so a write the
        WAL recovers after a crash never lands on state missing restored records before it."""
        if self._unlogged:
            self._flush_all()
        self._db.write(wb, self._wopt)

    def _flush_all(self) -> None:
        """Flush every family's memtable to SST files: the stores and time indexes first, ``__meta__`` (the
        changelog offsets) last, so at any moment of a crash the offsets on disk are never ahead of the
        data (a flush of one family is atomic, not a flush of several: RocksDB's own flushes, with
        atomic_flush, are)."""
        for name, cf in self._cf.items():
            if name != META_CF:
                cf.flush(True)
        self._cf[META_CF].flush(True)
        self._unlogged = False

    def _drop_families(self, store: str) -> bool:
        """Drop the column families of ``store`` (and of its time index); whether it had a time index."""
        cf = self._cf.pop(store)
        self._h.pop(store)
        self._count.pop(store, None)
        cf.close()
        del cf
        self._db.drop_column_family(store)
        if self._ix.pop(store, None) is None:
            return False
        name = _index_cf(store)
        icf = self._cf.pop(name)
        self._h.pop(name)
        icf.close()
        del icf
        self._db.drop_column_family(name)
        return True

    def clear_store(self, store: str) -> None:
        """Delete every record of ``store`` and of its time index, keeping the store (its kind and recorded
        definition), e.g. before a replay refills it. Its changelog offset is the caller's."""
        self._writable()
        if store not in self._cf or store == META_CF or store.startswith(INDEX_CF_PREFIX):
            return
        indexed = self._drop_families(store)
        self._cf[store] = self._db.create_column_family(store, _cf_options())
        self._h[store] = self._db.get_column_family_handle(store)
        if indexed:
            name = _index_cf(store)
            self._cf[name] = self._db.create_column_family(name, _cf_options(index=True))
            self._h[name] = self._db.get_column_family_handle(name)
            self._ix[store] = _Index(self._cf[name], self._h[name], self._kind[store] in DUE_KINDS)

    def drop_store(self, store: str) -> None:
        """Delete a store and its records (e.g. one the topology no longer has)."""
        self._writable()
        if store not in self._cf or store == META_CF:
            return
        self._drop_families(store)
        wb = WriteBatch(raw_mode=True)
        h = self._h[META_CF]
        for what in ("kind", "fingerprint", "description"):
            wb.delete(_sys_key(what, store), h)
            self._sys.pop(_sys_key(what, store), None)
        self._write_logged(wb)
        for d in (self._kind, self._enc, self._dec):
            d.pop(store, None)

    def flush(self) -> None:
        """Flush memtables to SST files (needed for durability only after a restore, whose writes skip the
        WAL; the next logged write or close does it anyway)."""
        self._writable()
        self._flush_all()

    def close(self) -> None:
        try:
            if self._db is not None and getattr(self, "_unlogged", False):
                self._flush_all()                    # restored writes skip the WAL: persist them now
        finally:
            self._close()

    def _close(self) -> None:
        db, self._db = self._db, None
        try:
            if db is not None:
                # every handle keeps the database alive: drop them all before closing
                cfs = list(getattr(self, "_cf", {}).values())
                self._cf, self._h, self._ix, self._count = {}, {}, {}, {}
                while cfs:
                    cfs.pop().close()
                db.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "RocksDBBackend":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"RocksDBBackend({self.path!r}, stores={self.store_names}, open={self._db is not None})"
