"""One consumer-group member (a worker process): the loop (`loop`), THE checkpoint (`checkpoint`), event time
across partitions (`eventtime`), fetching (`fetch`), producing (`produce`), restore scheduling (`restoring`),
purging (`purge`), group diagnostics (`group`), the process entry point and exit codes (`process`). See
docs/design.md."""
