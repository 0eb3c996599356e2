"""Run options and the split of user client configuration between the Kafka clients."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StreamprocError

GUARANTEES = ("exactly-once", "at-least-once")
STATE_BACKENDS = ("rocksdb", "memory")
_PREFIXES = ("consumer.", "producer.", "admin.", "restore.")


@dataclass
class RunOptions:
    """How ``run_app`` runs a topology.

    ``client_config`` holds librdkafka properties for every client; a key prefixed with
    ``consumer.``, ``producer.``, ``admin.`` or ``restore.`` (the changelog restore consumer)
    goes to that client only, prefix removed. ``topology`` is what the worker processes import
    (``path.py``, ``path.py:name`` or ``package.module:name``, the name possibly a zero-argument
    factory); by default it is found from where the Topology was created.
    """

    bootstrap_servers: str
    workers: int = 1
    guarantee: str = "exactly-once"
    state_dir: str = "./state"
    commit_interval_ms: int | None = None        # None: 100 (exactly-once) / 1000 (at-least-once)
    client_config: dict = field(default_factory=dict)
    create_topics: bool = False
    batch_size: int = 1000
    max_runtime_s: float | None = None
    topology: str | None = None
    create_topics_partitions: int = 1             # partitions of sources made by create_topics
    shutdown_timeout_s: float = 30.0
    broker_timeout_s: float = 30.0                # give up on an unreachable cluster after this long
    restore_stall_timeout_s: float = 60.0           # a changelog yielding nothing this long fails the restore
    no_partitions_warning_s: float = 30.0           # warn when a worker has had no partitions this long
    state_backend: str = "rocksdb"                # "rocksdb" (local disk, the default) or "memory"
    metrics_port: int | None = None               # serve Prometheus metrics on this port (all workers)
    live_status: bool | None = None               # live status line; None: when stderr is a terminal
    http_port: int | None = None                  # interactive queries, live changes, health (runtime/http.py)
    advertised_url: str | None = None             # how other instances reach this one (default: hostname:port)
    live_cpu_share: float = 0.25                  # of one core, for the SSE change streams (serve/fanout.py)

    @property
    def eos(self) -> bool:
        return self.guarantee == "exactly-once"

    @property
    def commit_interval_s(self) -> float:
        ms = self.commit_interval_ms
        if ms is None:
            ms = 100 if self.eos else 1000
        return ms / 1000.0

    def validate(self) -> "RunOptions":
        if self.guarantee not in GUARANTEES:
            raise StreamprocError(f"guarantee must be 'exactly-once' or 'at-least-once', got {self.guarantee!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise StreamprocError(f"workers must be a positive integer, got {self.workers!r}")
        if self.commit_interval_ms is not None and self.commit_interval_ms < 0:
            raise StreamprocError(f"commit interval must be >= 0 ms, got {self.commit_interval_ms}")
        if self.batch_size < 1:
            raise StreamprocError(f"batch_size must be positive, got {self.batch_size}")
        if self.state_backend not in STATE_BACKENDS:
            raise StreamprocError(f"state backend must be 'rocksdb' or 'memory', got {self.state_backend!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise StreamprocError(f"metrics port must be 0..65535, got {self.metrics_port}")
        if not self.bootstrap_servers:
            raise StreamprocError("no Kafka bootstrap servers given (e.g. --bootstrap-servers localhost:9092)")
        return self

    def client(self, role: str) -> dict:
        """The user's overrides for one client role: consumer, producer, admin or restore."""
        out = {}
        for k, v in (self.client_config or {}).items():
            if not k.startswith(_PREFIXES):
                out[k] = v
        prefix = role + "."
        for k, v in (self.client_config or {}).items():
            if k.startswith(prefix):
                out[k[len(prefix):]] = v
        return out
