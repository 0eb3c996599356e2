"""Every benchmark that matters, in one table against the performance targets (`make bench`).

Each part runs one benchmark script of this directory as its own subprocess (its own process
tree, so CPU figures are that tree's; its output goes to a log file next to the results), reads
the figures it writes with ``--json``, and turns them into rows: what, the figure, its unit, the
target and whether it is met (and by how much it is missed). CPU figures are CPU time of the
whole process tree per input record; ratios come from one run of one benchmark.

  e2e        benchmarks/e2e.py, variants b (hand-written windowed loop), c (`streamproc run`
             at-least-once), d (exactly-once), r (d behind a repartition topic): CPU µs/msg and
             msgs/s of each; CPU d/b <= 1.3 (stretch 1.0), c/d <= 1.0 (at-least-once never costs
             more than exactly-once), r/d <= 1.5; peak RSS of the worker on d <= 150 MB
  restore    benchmarks/restore.py: bulk restore into RocksDB >= 1,000,000 records/s; restore
             from a Kafka changelog (shown); `streamproc replay` of a count store, keys/s of wall
             clock (the CLI as a subprocess) >= 600,000
  joins      benchmarks/joins.py: stream-stream (one match per record) >= 200,000 records/s on
             both backends; stream-table >= 800,000 records/s on memory, >= 400,000 on RocksDB
  queries    benchmarks/queries.py part 2: processing throughput lost while serving 100
             queries/s < 5% (CPU per record added: shown)
  operators  benchmarks/operators.py: records/s of the batch operator and of the naive loop
             (shown, no target)

The Kafka parts start the embedded Tansu development broker each (what the benchmarks do
without ``--bootstrap-servers``); ``--bootstrap-servers host:port`` runs them on a real cluster
instead (everything they create is deleted at the end). The results, with the raw figures of
every benchmark, go to ``--json PATH`` (default ``benchmarks/results/<git short sha>.json``,
``-quick`` appended for ``--quick``; the directory is git-ignored), so that two commits can be
compared: ``--compare A.json B.json`` prints both side by side. The exit status is 1 when a part
failed (a benchmark error, a timeout, wrong join results), not when a target is missed.

    python benchmarks/suite.py                      # ~10-15 minutes on 2 cores
    python benchmarks/suite.py --quick              # smaller sizes, a few minutes: a smoke run
    python benchmarks/suite.py --only e2e,joins --bootstrap-servers kafka:9092
    python benchmarks/suite.py --compare benchmarks/results/abc1234.json benchmarks/results/def5678.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import orjson
from rich.console import Console
from rich.table import Table

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
FORMAT = 1                      # of the results file


# --------------------------------------------------------------------------- targets and rows
class Target(NamedTuple):
    """``value <op> bound``; ``stretch``: a second, harder bound (shown, not required)."""

    op: str                     # "<=", "<" or ">="
    bound: float
    stretch: float | None = None

    def holds(self, value: float, bound: float | None = None) -> bool:
        b = self.bound if bound is None else bound
        return {"<=": value <= b, "<": value < b, ">=": value >= b}[self.op]

    def text(self, unit: str) -> str:
        s = f"{self.op} {_number(self.bound, unit)}"
        return s + (f" (stretch {_number(self.stretch, unit)})" if self.stretch is not None else "")

    def miss(self, value: float, unit: str, bound: float | None = None) -> str:
        """How far ``value`` is from ``bound``: percentage points for a % figure, else relative to the bound."""
        b = self.bound if bound is None else bound
        if unit == "%":
            return f"{abs(value - b):.1f} points"
        return f"{abs(value - b) / b:.0%}" if b else f"{abs(value - b):g}"

    def verdict(self, value: float, unit: str) -> tuple[bool, str]:
        """``(met, text)``: "met", "met, stretch missed by 7%", "missed by 23%"."""
        if not self.holds(value):
            return False, f"missed by {self.miss(value, unit)}"
        if self.stretch is not None and not self.holds(value, self.stretch):
            return True, f"met (stretch missed by {self.miss(value, unit, self.stretch)})"
        return True, "met"


def _number(x: float, unit: str) -> str:
    if unit in ("records/s", "msgs/s", "keys/s"):
        return f"{x:,.0f}"
    if unit == "x":
        return f"{x:.2f}"
    if unit == "MB":
        return f"{x:,.0f}"
    if unit == "%":
        return f"{x:+.1f}" if x < 0 else f"{x:.1f}"
    return f"{x:,.2f}"


def row(part: str, key: str, what: str, value: float | None, unit: str, target: Target | None = None) -> dict:
    """One line of the table (also what the results file keeps): ``id`` is stable across commits, so
    ``--compare`` matches rows by it."""
    met, verdict = (None, "-") if target is None or value is None else target.verdict(value, unit)
    return {"id": f"{part}.{key}", "part": part, "what": what, "value": value, "unit": unit,
            "target": target.text(unit) if target else "", "met": met, "verdict": verdict}


# --------------------------------------------------------------------------- the parts
E2E_VARIANTS = {"b": "hand-written dict-state windowed loop", "c": "streamproc run, at-least-once",
                "d": "streamproc run, exactly-once", "r": "exactly-once, re-keyed through a repartition topic"}


def e2e_rows(res: dict) -> list[dict]:
    v = res["variants"]
    out = []
    for k, label in E2E_VARIANTS.items():
        if k in v:
            out += [row("e2e", f"{k}.cpu", f"({k}) {label}: CPU", v[k]["cpu_us"], "µs/msg"),
                    row("e2e", f"{k}.rate", f"({k}) {label}: throughput", v[k]["rate"], "msgs/s")]

    def ratio(a: str, b: str) -> float | None:
        return v[a]["cpu_us"] / v[b]["cpu_us"] if a in v and b in v and v[b]["cpu_us"] > 0 else None

    out += [row("e2e", "d_b", "CPU (d) / (b): exactly-once against the hand-written loop", ratio("d", "b"), "x",
                Target("<=", 1.3, stretch=1.0)),
            row("e2e", "c_d", "CPU (c) / (d): at-least-once never costs more than exactly-once", ratio("c", "d"),
                "x", Target("<=", 1.0)),
            row("e2e", "r_d", "CPU (r) / (d): re-keying through a repartition topic", ratio("r", "d"), "x",
                Target("<=", 1.5))]
    if "d" in v:
        out += [row("e2e", "d.rss", "(d) peak RSS of the streamproc worker", v["d"]["rss_mb"], "MB",
                    Target("<=", 150)),
                row("e2e", "d.rss_tree", "(d) peak RSS of the whole process tree", v["d"]["rss_tree_mb"], "MB")]
    return out


def restore_rows(res: dict) -> list[dict]:
    out = [row("restore", "bulk", f"restore {res['records']:,} records into RocksDB (bulk_restore, in-process)",
               res["bulk_restore"]["rate"], "records/s", Target(">=", 1_000_000))]
    if res.get("kafka"):
        out.append(row("restore", "kafka", f"restore {res['kafka']['records']:,} records from a Kafka changelog "
                                           f"(Restorer -> RocksDB)", res["kafka"]["rate"], "records/s"))
    rp = res.get("replay")
    if rp:
        out.append(row("restore", "replay", f"`streamproc replay` of {rp['keys']:,} keys ({rp['partitions']} "
                                            f"partitions), wall clock of the CLI", rp["rate"], "keys/s",
                       Target(">=", 600_000)))
    return out


JOIN_ROWS = (("ss", "memory", "stream-stream join, one match per record, memory", 200_000),
             ("ss", "rocksdb", "stream-stream join, one match per record, RocksDB", 200_000),
             ("st", "memory", "stream-table join, memory", 800_000),
             ("st", "rocksdb", "stream-table join, RocksDB", 400_000))


def joins_rows(res: dict) -> list[dict]:
    by = {(c["family"], c["backend"]): c for c in res["cases"] if c["family"] != "base"
          and c["label"] in ("stream-stream inner", "stream-table inner")}
    out = []
    for family, backend, what, bound in JOIN_ROWS:
        c = by.get((family, backend))
        if c is not None:
            out.append(row("joins", f"{family}.{backend}", what + ("" if c["ok"] else " [WRONG RESULTS]"),
                           c["rate"], "records/s", Target(">=", bound)))
    return out


def queries_rows(res: dict) -> list[dict]:
    c = res["cost"]
    return [row("queries", "lost", f"throughput lost while serving {c['qps']} queries/s",
                100 * c["throughput_cost"], "%", Target("<", 5)),
            row("queries", "cpu", f"CPU per record added by {c['qps']} queries/s", 100 * (c["cpu_ratio"] - 1), "%"),
            row("queries", "rate", "throughput without queries (count per key, exactly-once)",
                c["median_off"]["rate"], "records/s")]


def operators_rows(res: dict) -> list[dict]:
    kinds = {"streamproc": ("batch", "batch operator"), "naive dict loop": ("naive", "naive dict loop")}
    out = []
    for r in res["runs"]:
        if r["implementation"] in kinds:
            key, label = kinds[r["implementation"]]
            out.append(row("operators", f"{key}.{r['event_rate']}", f"tumbling count+sum, {label} "
                           f"({r['event_rate']:,} events/s of event time)", r["rate"], "records/s"))
    return out


class Part(NamedTuple):
    script: str
    kafka: bool                                 # takes --bootstrap-servers
    full: list[str]
    quick: list[str]
    rows: Callable[[dict], list[dict]]


#: (full, quick) arguments of each part. Full sizes: ~10-15 minutes in all on 2 busy cores. Quick sizes are
#: rough: at 1M messages a fast e2e variant spends ~1.5 s between its first and last committed offset (sampled
#: every 0.25 s); below ~1M records the queries backlog is done before the instance answers /ready.
PARTS = {
    "e2e": Part("e2e.py", True, ["--messages", "3000000", "--only", "b,c,d,r"],
                ["--messages", "1000000", "--only", "b,c,d,r"], e2e_rows),
    "restore": Part("restore.py", True, ["--records", "1000000", "--repeat", "3", "--no-rss",
                                         "--replay-keys", "1000000"],
                    ["--records", "300000", "--repeat", "1", "--no-rss", "--replay-keys", "300000"], restore_rows),
    "joins": Part("joins.py", False, ["--records", "1000000", "--repeat", "2", "--how", "inner", "--no-baseline"],
                  ["--quick", "--repeat", "1", "--how", "inner", "--no-baseline"], joins_rows),
    "queries": Part("queries.py", True, ["--parts", "cost", "--messages", "2000000", "--rounds", "2"],
                    ["--parts", "cost", "--messages", "1000000", "--rounds", "1"], queries_rows),
    "operators": Part("operators.py", False, ["--records", "1000000", "--repeat", "3"],
                      ["--records", "300000", "--repeat", "1"], operators_rows),
}


# --------------------------------------------------------------------------- running
def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(proc: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGTERM (the benchmarks clean up what they created, which may wait out a session timeout), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_part(name: str, args, log_path: str, console: Console, index: str) -> dict:
    """Run part ``name`` as a subprocess; returns ``{"argv", "seconds", "rc", "error", "result", "log"}``."""
    part = PARTS[name]
    fd, json_path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
    os.close(fd)
    os.unlink(json_path)                        # the benchmark writes it when it gets that far
    argv = [sys.executable, os.path.join(HERE, part.script), *(part.quick if args.quick else part.full)]
    if part.kafka and args.bootstrap_servers:
        argv += ["--bootstrap-servers", args.bootstrap_servers]
    out = {"argv": [os.path.relpath(argv[1], ROOT), *argv[2:]], "seconds": None, "rc": None, "error": None, "result": None, "log": log_path}
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        sink = None if args.verbose else log
        proc = subprocess.Popen(argv + ["--json", json_path], cwd=ROOT, env=env, stdout=sink, stderr=sink,
                                stdin=subprocess.DEVNULL)
        try:
            where = "" if args.verbose else f"  (log: {_rel(log_path)})"
            with console.status(f"{index} {name}: {' '.join(argv[1:])}{where}"):
                out["rc"] = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            out["error"] = f"did not finish within {args.timeout:.0f} s"
        except KeyboardInterrupt:
            _stop(proc)
            raise
    out["seconds"] = time.monotonic() - t0
    try:
        with open(json_path, "rb") as f:
            out["result"] = orjson.loads(f.read())
        os.unlink(json_path)
    except FileNotFoundError:
        pass
    if out["error"] is None and out["rc"] != 0:
        out["error"] = f"exited with {out['rc']}"
    if out["error"] is None and out["result"] is None:
        out["error"] = "wrote no results"
    return out


def rows_of(name: str, run: dict) -> list[dict]:
    """The rows of one part's run; a failed part is one row saying so (with its figures, if it wrote any)."""
    rows = []
    if run["result"] is not None:
        try:
            rows = PARTS[name].rows(run["result"])
        except (KeyError, TypeError, ZeroDivisionError) as e:
            run["error"] = run["error"] or f"unexpected results ({type(e).__name__}: {e})"
    if run["error"]:
        rows.append({"id": f"{name}.error", "part": name, "what": f"{name} FAILED: {run['error']}", "value": None,
                     "unit": "", "target": "", "met": False, "verdict": "failed"})
    return rows


# --------------------------------------------------------------------------- results file
def _git(*argv: str) -> str | None:
    try:
        return subprocess.run(["git", "--no-optional-locks", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> tuple[str, bool]:
    """The short sha of HEAD (``"unknown"`` outside git), and whether tracked files differ from it."""
    sha = _git("rev-parse", "--short", "HEAD") or "unknown"
    return sha, bool(_git("status", "--porcelain", "--untracked-files=no"))


def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _write(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def load(path: str) -> dict:
    with open(path, "rb") as f:
        doc = orjson.loads(f.read())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "rows" not in doc:
        raise SystemExit(f"{path}: not a results file of benchmarks/suite.py (format {FORMAT})")
    return doc


# --------------------------------------------------------------------------- printing
def _styled(met: bool | None, verdict: str) -> str:
    if met is None:
        return f"[dim]{verdict}[/]"
    if not met:
        return f"[red]{verdict}[/]"
    return f"[yellow]{verdict}[/]" if "stretch" in verdict else f"[green]{verdict}[/]"


def _figure(r: dict | None) -> str:
    return "-" if r is None or r["value"] is None else _number(r["value"], r["unit"])


def _describe(doc: dict) -> str:
    return (f"{doc['commit']}{' (uncommitted changes)' if doc['dirty'] else ''}, "
            f"{'quick' if doc['quick'] else 'full'} sizes, {doc['date'][:16].replace('T', ' ')}")


def print_rows(console: Console, doc: dict) -> None:
    table = Table(title=f"streamproc benchmarks: {_describe(doc)}; broker {doc['broker']}; "
                        f"{doc['host']['cpus']} CPUs, load {doc['host']['load'][0]:.1f} at the start",
                  title_justify="left")
    for col, just in (("part", "left"), ("what", "left"), ("figure", "right"), ("unit", "left"),
                      ("target", "left"), ("", "left")):
        table.add_column(col, justify=just)
    last = None
    for r in doc["rows"]:
        if last is not None and r["part"] != last:
            table.add_section()
        table.add_row(r["part"] if r["part"] != last else "", r["what"], _figure(r), r["unit"], r["target"],
                      _styled(r["met"], r["verdict"]))
        last = r["part"]
    console.print(table)


#: units of figures where more is better (for the others - CPU, memory, ratios of CPU, % lost - less is)
HIGHER_IS_BETTER = ("records/s", "msgs/s", "keys/s")


def _change(a: float, b: float, unit: str) -> str:
    """B / A (for a % figure: B - A in points), green when B is better by more than 5% (5 points),
    red when worse by more, dim in between."""
    if unit == "%":
        moved, text = b - a, f"{b - a:+.1f} points"
    elif a:
        moved, text = b / a - 1, f"{b / a:.2f}x"
    else:
        return "-"
    better = moved > 0 if unit in HIGHER_IS_BETTER else moved < 0
    style = "dim" if abs(moved) <= (5 if unit == "%" else 0.05) else ("green" if better else "red")
    return f"[{style}]{text}[/]"


def print_compare(console: Console, a: dict, b: dict, path_a: str, path_b: str) -> None:
    """Both files' rows side by side, matched by row id (rows of one file only are shown with "-")."""
    rb = {r["id"]: r for r in b["rows"]}
    ids = [r["id"] for r in a["rows"]] + [r["id"] for r in b["rows"] if r["id"] not in {x["id"] for x in a["rows"]}]
    ra = {r["id"]: r for r in a["rows"]}
    table = Table(title=f"A = {_rel(path_a)}: {_describe(a)}\nB = {_rel(path_b)}: {_describe(b)}",
                  title_justify="left")
    for col, just in (("what", "left"), ("unit", "left"), ("A", "right"), ("B", "right"), ("B / A", "right"),
                      ("target", "left"), ("A verdict", "left"), ("B verdict", "left")):
        table.add_column(col, justify=just)
    last = None
    for i in ids:
        x, y = ra.get(i), rb.get(i)
        r = y or x
        if last is not None and r["part"] != last:
            table.add_section()
        last = r["part"]
        change = "-"
        if x and y and x["value"] is not None and y["value"] is not None:
            change = _change(x["value"], y["value"], r["unit"])
        table.add_row(f"{r['part']}: {r['what']}", r["unit"], _figure(x), _figure(y), change, r["target"],
                      _styled(x["met"], x["verdict"]) if x else "-", _styled(y["met"], y["verdict"]) if y else "-")
    console.print(table)
    if a.get("quick") != b.get("quick") or a.get("broker") != b.get("broker"):
        console.print("[yellow]note: the two runs used different sizes or brokers[/]")


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes): a smoke run")
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, comma separated ({', '.join(PARTS)})")
    ap.add_argument("--bootstrap-servers", default=None,
                    help="Kafka cluster for the Kafka parts (default: each starts the embedded Tansu broker)")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="results file (default benchmarks/results/<git short sha>[-quick].json)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds one part may take (default 3600, quick 900)")
    ap.add_argument("--verbose", "-v", action="store_true", help="show the benchmarks' own output instead of logging it")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print two results files side by side")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        ap.error(f"--only: unknown part(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")
    if args.timeout is None:
        args.timeout = 900 if args.quick else 3600
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)     # a log or a pipe: no wrapping
    if args.compare:
        print_compare(console, load(args.compare[0]), load(args.compare[1]), *args.compare)
        return 0
    sha, dirty = commit()
    path = args.json or os.path.join(RESULTS, f"{sha}{'-quick' if args.quick else ''}.json")
    logs = os.path.splitext(path)[0]
    doc = {"format": FORMAT, "commit": sha, "dirty": dirty, "quick": args.quick,
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "broker": args.bootstrap_servers or "Tansu (embedded, one per part)",
           "host": {"cpus": os.cpu_count(), "load": list(os.getloadavg()), "python": platform.python_version(),
                    "platform": platform.platform()},
           "parts": {}, "rows": []}
    signal.signal(signal.SIGTERM, _raise_interrupt)       # a SIGTERM stops the running part as Ctrl-C does
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.monotonic()
    try:
        for i, name in enumerate(args.parts, 1):
            run = run_part(name, args, f"{logs}.{name}.log", console, f"[{i}/{len(args.parts)}]")
            doc["parts"][name] = run
            doc["rows"] += rows_of(name, run)
            if run["error"]:
                console.print(f"[red]{name} failed after {run['seconds']:.0f} s: {run['error']}; "
                              f"the end of its log {_rel(run['log'])}:[/]")
                console.print(_tail(run["log"]), markup=False, highlight=False)
            else:
                console.print(f"{name}: done in {run['seconds']:.0f} s")
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    doc["seconds"] = time.monotonic() - t0
    doc["host"]["load_end"] = list(os.getloadavg())
    _write(path, doc)
    print_rows(console, doc)
    console.print(f"{len(args.parts)} part(s) in {doc['seconds'] / 60:.1f} min; results in {_rel(path)} "
                  f"(compare two with: benchmarks/suite.py --compare A.json B.json)")
    return 1 if any(run["error"] for run in doc["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
