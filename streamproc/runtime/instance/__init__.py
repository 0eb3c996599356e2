"""One `streamproc run`: topic preparation (`app`), the supervisor of the worker processes (`supervisor`), logs
(`logs`), metrics and the status line (`observe`), the state-dir lock and process id (`load`). See
docs/design.md."""
