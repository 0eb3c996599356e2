"""docker/: the app image, the compose file, Prometheus and Grafana, checked without Docker.

Nothing here builds or starts a container. The files are read and checked against each other
and against the code they run: the metric names in the dashboard are those that
``streamproc/runtime/instance/observe.py`` exports (read from its source at test time, so renaming a
metric fails here), the app's command line parses with the real ``streamproc run``, the topics
the compose file creates are the topology's sources and sinks, and the sample producer's records
go through the page-views topology under the test driver. ``docker compose config`` runs only
where a Docker engine answers.

PyYAML is not a dependency: the YAML files are read with the small loader below, which knows
the subset they are written in and refuses anything else (anchors, flow mappings, tags, folded
scalars, yes/no booleans). Where PyYAML is importable, both loaders must agree.
"""
from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import random
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
COMPOSE = os.path.join(DOCKER, "compose.yaml")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
PROMETHEUS = os.path.join(DOCKER, "prometheus.yml")
DATASOURCES = os.path.join(DOCKER, "grafana", "provisioning", "datasources", "prometheus.yaml")
DASHBOARD_PROVIDERS = os.path.join(DOCKER, "grafana", "provisioning", "dashboards", "dashboards.yaml")
DASHBOARD = os.path.join(DOCKER, "grafana", "dashboards", "streamproc.json")
PRODUCER = os.path.join(DOCKER, "produce_sample.py")
OBSERVE = os.path.join(ROOT, "streamproc", "runtime", "instance", "observe.py")
YAML_FILES = [COMPOSE, PROMETHEUS, DATASOURCES, DASHBOARD_PROVIDERS]


# ------------------------------------------------------------------------------------ a YAML subset

class YamlSubsetError(ValueError):
    pass


_KEY = re.compile(r'''^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s#'"\-\[{][^#]*?|-[^\s][^#]*?)\s*:(?:\s+|$)''')
_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n"}


def _strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (a ``#`` after a blank, outside quotes)."""
    quote, i = None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1                      # skip the escaped character
            elif ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or text[i - 1] in " [,"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
        i += 1
    return text.rstrip()


def _scalar(text: str, where: str):
    text = text.strip()
    if not text:
        return None
    if text[0] == '"':
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string {text!r}")
        return json.loads(text)
    if text[0] == "'":
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"{where}: unterminated string {text!r}")
        return text[1:-1].replace("''", "'")
    if text[0] in "&*!{>|%@`":
        raise YamlSubsetError(f"{where}: {text!r} is outside the YAML subset these files use")
    if text[0] == "[":
        return _flow_sequence(text, where)
    if text in ("null", "Null", "NULL", "~"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text.lower() in _AMBIGUOUS:
        raise YamlSubsetError(f"{where}: plain {text!r} means a boolean to some YAML readers: quote it")
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if re.match(r"^[-+]?0[0-9]+$", text):
        raise YamlSubsetError(f"{where}: {text!r} (octal to some YAML readers): quote it")
    return text


def _flow_sequence(text: str, where: str) -> list:
    if not text.endswith("]"):
        raise YamlSubsetError(f"{where}: a flow sequence must end the line: {text!r}")
    body, items, cur, quote, i = text[1:-1], [], "", None, 0
    while i < len(body):
        ch = body[i]
        if quote:
            cur += ch
            if ch == "\\" and quote == '"':
                cur += body[i + 1]
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur += ch
        elif ch in "[]{}":
            raise YamlSubsetError(f"{where}: nested flow collections are outside the subset: {text!r}")
        elif ch == ",":
            items.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if quote:
        raise YamlSubsetError(f"{where}: unterminated string in {text!r}")
    if cur.strip() or items:
        items.append(cur)
    if any(not s.strip() for s in items):
        raise YamlSubsetError(f"{where}: empty item in {text!r}")
    return [_scalar(s, where) for s in items]


class _Loader:
    def __init__(self, text: str, name: str):
        self.name = name
        self.raw = text.split("\n")
        # [indent, content] per line; content None for blank and comment-only lines
        self.lines = []
        for n, line in enumerate(self.raw, 1):
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise YamlSubsetError(f"{name}:{n}: tab in indentation")
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped in ("---",):
                self.lines.append([0, None])
            elif stripped.startswith("%") or stripped == "...":
                raise YamlSubsetError(f"{name}:{n}: directives and document ends are outside the subset")
            else:
                self.lines.append([len(line) - len(line.lstrip(" ")), _strip_comment(stripped)])

    def where(self, i: int) -> str:
        return f"{self.name}:{i + 1}"

    def skip(self, i: int) -> int:
        while i < len(self.lines) and self.lines[i][1] is None:
            i += 1
        return i

    def load(self):
        i = self.skip(0)
        if i == len(self.lines):
            return None
        value, i = self.block(i, self.lines[i][0])
        i = self.skip(i)
        if i < len(self.lines):
            raise YamlSubsetError(f"{self.where(i)}: unexpected indentation")
        return value

    def block(self, i: int, indent: int):
        content = self.lines[i][1]
        if content == "-" or content.startswith("- "):
            return self.sequence(i, indent)
        if _KEY.match(content):
            return self.mapping(i, indent)
        raise YamlSubsetError(f"{self.where(i)}: expected `key:` or `- item`, got {content!r}")

    def mapping(self, i: int, indent: int):
        out: dict = {}
        while True:
            i = self.skip(i)
            if i == len(self.lines) or self.lines[i][0] < indent:
                return out, i
            ind, content = self.lines[i]
            if ind > indent:
                raise YamlSubsetError(f"{self.where(i)}: unexpected indentation")
            m = _KEY.match(content)
            if not m:
                if content == "-" or content.startswith("- "):
                    return out, i          # a sequence at the parent's indent ends this mapping
                raise YamlSubsetError(f"{self.where(i)}: expected `key: value`, got {content!r}")
            key = _scalar(m.group(1), self.where(i))
            if key in out:
                raise YamlSubsetError(f"{self.where(i)}: duplicate key {key!r}")
            rest = content[m.end():].strip()
            out[key], i = self.value(i, indent, rest, nested_seq_ok=True)

    def sequence(self, i: int, indent: int):
        out: list = []
        while True:
            i = self.skip(i)
            if i == len(self.lines) or self.lines[i][0] < indent:
                return out, i
            ind, content = self.lines[i]
            if ind > indent:
                raise YamlSubsetError(f"{self.where(i)}: unexpected indentation")
            if not (content == "-" or content.startswith("- ")):
                return out, i
            rest = content[1:].strip()
            if _KEY.match(rest):
                # `- key: value ...`: a mapping whose indent is where `key` starts
                self.lines[i] = [ind + len(content) - len(content[1:].lstrip()), rest]
                item, i = self.mapping(i, self.lines[i][0])
            else:
                item, i = self.value(i, indent, rest, nested_seq_ok=False)
            out.append(item)

    def value(self, i: int, indent: int, rest: str, nested_seq_ok: bool):
        if rest in ("|", "|-"):
            return self.literal(i, indent, strip=rest == "|-")
        if rest:
            return _scalar(rest, self.where(i)), i + 1
        j = self.skip(i + 1)
        if j < len(self.lines):
            ind, content = self.lines[j]
            if ind > indent:
                return self.block(j, ind)
            if nested_seq_ok and ind == indent and (content == "-" or content.startswith("- ")):
                return self.sequence(j, ind)
        return None, i + 1

    def literal(self, i: int, indent: int, strip: bool):
        body, j, block_indent = [], i + 1, None
        while j < len(self.raw):
            line = self.raw[j]
            if line.strip():
                ind = len(line) - len(line.lstrip(" "))
                if ind <= indent:
                    break
                if block_indent is None:
                    block_indent = ind
                if ind < block_indent:
                    raise YamlSubsetError(f"{self.where(j)}: literal block less indented than its first line")
                body.append(line[block_indent:])
            else:
                body.append("")
            j += 1
        while body and not body[-1]:
            body.pop()
            j -= 1
        text = "\n".join(body)
        return (text if strip or not text else text + "\n"), j


def load_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return _Loader(text, os.path.relpath(path, ROOT)).load()


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} given {argv.count(name)} times in {argv}"
    return argv[argv.index(name) + 1]


def _mounts(service: dict) -> dict:
    """``{container path: host path (relative to docker/) or volume name}``."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        assert len(parts) in (2, 3), v
        out[parts[1]] = parts[0]
    return out


def _host_path(rel: str) -> str:
    return os.path.normpath(os.path.join(DOCKER, rel))


def exported_metrics() -> set[str]:
    """Sample names that ``observe.py`` exports, read from its source.

    ``counter(name, ...)`` / ``CounterMetricFamily(name, ...)`` expose ``name_total``,
    ``gauge``/``GaugeMetricFamily`` ``name``, ``HistogramMetricFamily`` ``name_bucket``,
    ``name_sum`` and ``name_count`` (prometheus-client's text format)."""
    with open(OBSERVE, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    suffixes = {"counter": ["_total"], "CounterMetricFamily": ["_total"], "gauge": [""],
                "GaugeMetricFamily": [""], "HistogramMetricFamily": ["_bucket", "_sum", "_count"],
                "SummaryMetricFamily": ["_sum", "_count", ""]}
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        first = node.args[0]
        if fn in suffixes and isinstance(first, ast.Constant) and isinstance(first.value, str):
            base = first.value.removesuffix("_total") if suffixes[fn] == ["_total"] else first.value
            names.update(base + s for s in suffixes[fn])
    return names


def _exprs(dashboard: dict):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target, target["expr"]


# ------------------------------------------------------------------------------------ YAML

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: os.path.relpath(p, DOCKER))
def test_yaml_files_load(path):
    data = load_yaml(path)
    assert isinstance(data, dict) and data
    try:
        import yaml
    except ImportError:
        return
    with open(path, encoding="utf-8") as f:
        assert yaml.safe_load(f) == data, "the subset loader and PyYAML read this file differently"


def test_yaml_subset_loader():
    text = (
        "# comment\n"
        "a: 1\n"
        "b: \"x: y # not a comment\"  # comment\n"
        "c:\n"
        "  - one\n"
        "  - k: v\n"
        "    l: [\"p\", 'q''s', 3]\n"
        "  - |\n"
        "    line 1\n"
        "      # kept\n"
        "\n"
        "    line 2\n"
        "d:\n"
        "e: http://h:9090\n"
        "f:\n"
        "- x:/y:ro\n"
        "g: \"esc \\\" # q\"  # c\n"
    )
    assert _Loader(text, "t").load() == {
        "a": 1, "b": "x: y # not a comment",
        "c": ["one", {"k": "v", "l": ["p", "q's", 3]}, "line 1\n  # kept\n\nline 2\n"],
        "d": None, "e": "http://h:9090", "f": ["x:/y:ro"],
        "g": 'esc " # q'}
    for bad in ("a: &x 1\n", "a: {b: 1}\n", "a: yes\n", "a: 1\na: 2\n", "a: >\n  x\n", "a:\n  b: 1\n   c: 2\n"):
        with pytest.raises(YamlSubsetError):
            _Loader(bad, "t").load()


# ------------------------------------------------------------------------------------ compose

def test_compose_services(services):
    for name in ("kafka", "topics", "app", "producer", "prometheus", "grafana"):
        assert name in services, f"compose.yaml has no service {name!r}"
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"service {name} has neither image nor build"
        image = svc.get("image", "")
        if "/" in image:                   # pulled images are pinned
            assert ":" in image and not image.endswith(":latest"), f"service {name}: pin a tag, not {image!r}"


def test_kafka_is_apache_kafka_in_kraft_mode(compose, services):
    kafka = services["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert re.fullmatch(r"[34]\.\d+\.\d+", tag), f"pick a 3.x/4.x release tag, not {tag!r}"
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env), "KRaft: no ZooKeeper settings"
    node = env["KAFKA_NODE_ID"]
    listeners = dict(l.split("://", 1) for l in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = dict(l.split("://", 1) for l in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{node}@kafka:{listeners[controller].rsplit(':', 1)[1]}"], voters
    inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised[inter] == "kafka:9092", "inside compose, clients reach Kafka at kafka:9092"
    assert listeners[inter].rsplit(":", 1)[1] == "9092"
    # the image formats its storage with CLUSTER_ID: a base64url UUID
    cluster_id = env["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    # one broker: exactly-once needs a transaction coordinator, so no internal topic may ask for 3 replicas
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(key) == "1", f"{key} must be 1 on a single node"
    # published ports are advertised listeners reachable from the host
    for port in kafka.get("ports", []):
        host_port = str(port).split(":")[0]
        assert f"localhost:{host_port}" in advertised.values(), f"port {port} is not advertised as localhost"
    assert _mounts(kafka).get(env["KAFKA_LOG_DIRS"]) in compose["volumes"], "Kafka's log dir is a named volume"
    health = kafka["healthcheck"]
    assert "kafka:9092" in " ".join(health["test"]) or "localhost:9092" in " ".join(health["test"])


def _topology_plan(path: str, monkeypatch):
    from streamproc.loader import load_topology
    from streamproc.plan import compile_topology

    monkeypatch.chdir(ROOT)                 # as in the image: WORKDIR /app holds topologies/ and schemas/
    return compile_topology(load_topology(path))


def test_topics_service_creates_the_topologys_topics(services, monkeypatch):
    topics = services["topics"]
    assert topics["image"] == services["kafka"]["image"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart") == "no"
    script = " ".join(_argv(topics.get("entrypoint", [])) + _argv(topics["command"]))
    created = {}
    for line in script.splitlines():
        argv = shlex.split(line)
        if argv and argv[0] == "/opt/kafka/bin/kafka-topics.sh" and "--create" in argv:
            assert _option(argv, "--bootstrap-server") == "kafka:9092"
            created[_option(argv, "--topic")] = int(_option(argv, "--partitions"))
            assert "--if-not-exists" in argv, "the one-shot service must succeed when run again"
    assert created.get("page-views") == 4
    assert "page-views-per-user-1m" in created
    app_argv = _argv(services["app"]["command"])
    plan = _topology_plan(app_argv[0], monkeypatch)
    for topic in plan.source_topics + plan.sink_topics:
        assert topic in created, f"the topology reads or writes {topic!r}, which compose does not create"
    for name in ("app", "producer"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_app_service(compose, services):
    app = services["app"]
    assert os.path.normpath(os.path.join(DOCKER, app["build"]["context"])) == ROOT
    assert os.path.join(ROOT, app["build"]["dockerfile"]) == DOCKERFILE
    argv = _argv(app["command"])
    assert os.path.isfile(os.path.join(ROOT, argv[0])), f"{argv[0]} is not in the repository (COPY topologies/)"
    assert argv[0] == "topologies/page_views.py"
    assert _option(argv, "--bootstrap-servers") == "kafka:9092"
    assert int(_option(argv, "--workers")) == 2
    int(_option(argv, "--metrics-port"))
    assert _mounts(app).get("/app/state") in compose["volumes"], "state on a named volume"
    # the options exist on the real `streamproc run` (ENTRYPOINT) and parse
    import typer.main

    from streamproc.cli import app as cli

    run = typer.main.get_command(cli).commands["run"]
    ctx = run.make_context("run", list(argv))
    assert ctx.params["metrics_port"] == int(_option(argv, "--metrics-port"))
    assert ctx.params["workers"] == 2 and ctx.params["bootstrap_servers"] == "kafka:9092"


def test_prometheus_scrapes_the_apps_metrics_port(services):
    port = int(_option(_argv(services["app"]["command"]), "--metrics-port"))
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = _mounts(prom)
    assert _host_path(mounts["/etc/prometheus/prometheus.yml"]) == PROMETHEUS
    config = load_yaml(PROMETHEUS)
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    assert f"app:{port}" in targets, f"prometheus.yml scrapes {targets}, the app serves metrics on {port}"
    assert "app" in services


def test_grafana_provisioning_matches_the_compose_mounts(services):
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert _host_path(provisioning) == os.path.join(DOCKER, "grafana", "provisioning")
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    assert path in mounts, f"the dashboard provider reads {path}, which compose does not mount"
    assert _host_path(mounts[path]) == os.path.dirname(DASHBOARD)
    home = _env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert os.path.dirname(home) == path and os.path.basename(home) == os.path.basename(DASHBOARD)
    [ds] = load_yaml(DATASOURCES)["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services


# ------------------------------------------------------------------------------------ dashboard

def test_exported_metric_names_are_found():
    names = exported_metrics()
    for name in ("streamproc_records_consumed_total", "streamproc_consumer_lag",
                 "streamproc_checkpoint_duration_seconds_bucket"):
        assert name in names, f"reading observe.py found {sorted(names)}"
    assert len(names) >= 15


def test_dashboard(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ds_uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    exported = exported_metrics()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries", panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": ds_uid}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
    for panel, target, expr in _exprs(dashboard):
        assert target["datasource"]["uid"] == ds_uid, panel["title"]
        used = set(re.findall(r"\bstreamproc_[a-zA-Z0-9_]+", expr))
        assert used, f"panel {panel['title']!r}: {expr!r} uses no streamproc metric"
        unknown = used - exported
        assert not unknown, (f"panel {panel['title']!r} queries {sorted(unknown)}, which "
                             f"streamproc/runtime/instance/observe.py does not export")
        assert expr.count("(") == expr.count(")"), expr


def test_dashboard_panels_cover_the_issue(dashboard):
    exprs = " | ".join(e for _, _, e in _exprs(dashboard))
    for pattern in (r"rate\(streamproc_records_consumed_total\[",
                    r"rate\(streamproc_records_produced_total\[",
                    r"sum by \(topic\) \(streamproc_consumer_lag\)",
                    r"sum by \(reason\) \(rate\(streamproc_records_dropped_total\[",
                    r"histogram_quantile\(0\.5, [^|]*streamproc_checkpoint_duration_seconds_bucket",
                    r"histogram_quantile\(0\.99, [^|]*streamproc_checkpoint_duration_seconds_bucket",
                    r"streamproc_restore_remaining_records",
                    r"streamproc_worker_restarts_total"):
        assert re.search(pattern, exprs), f"no panel queries {pattern}"


# ------------------------------------------------------------------------------------ Dockerfile

def _dockerfile() -> list[tuple[str, str]]:
    with open(DOCKERFILE, encoding="utf-8") as f:
        text = f.read()
    out, pending = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or (not line and not pending):
            continue                        # comments, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_dockerfile():
    instructions = _dockerfile()
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert words.count("FROM") == 1
    users = [a for w, a in instructions if w == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after the last RUN"
    entry = [a for w, a in instructions if w == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["streamproc", "run"]]
    cmd = [json.loads(a) for w, a in instructions if w == "CMD"]
    assert cmd == [["topologies/page_views.py"]]
    assert ("WORKDIR", "/app") in instructions
    copies = [shlex.split(a) for w, a in instructions if w == "COPY"]
    copied = {}
    for argv in copies:
        argv = [a for a in argv if not a.startswith("--")]
        *sources, dest = argv
        for src in sources:
            assert os.path.exists(os.path.join(ROOT, src)), f"COPY {src}: not in the build context"
            copied[src.rstrip("/")] = dest
    for needed in ("pyproject.toml", "streamproc", "topologies", "schemas"):
        assert needed in copied, f"the image needs {needed}"
    assert copied["topologies"].rstrip("/") == "/app/topologies" and copied["schemas"].rstrip("/") == "/app/schemas"
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "pip install --no-cache-dir" in runs
    assert not re.search(r"\b(apt-get|apt|apk)\b", runs), "no system packages: the wheels bundle librdkafka and RocksDB"
    assert "/app/state" in runs and re.search(r"chown \S+ /app/state", runs)
    volumes = [a for w, a in instructions if w == "VOLUME"]
    assert volumes and "/app/state" in json.loads(volumes[0])


def test_producer_service_uses_the_image_and_script(services):
    producer = services["producer"]
    assert producer.get("image") == services["app"].get("image")
    assert producer.get("build") == services["app"].get("build")
    entry = _argv(producer["entrypoint"])
    assert entry[0] == "python"
    copied = {shlex.split(a)[-1]: shlex.split(a)[0] for w, a in _dockerfile() if w == "COPY"}
    assert copied.get(entry[1]) == "docker/produce_sample.py", "the producer script must be copied into the image"


# ------------------------------------------------------------------------------------ sample producer

def _producer_module():
    spec = importlib.util.spec_from_file_location("streamproc_docker_produce_sample", PRODUCER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_producer_feeds_the_page_views_topology(services, monkeypatch):
    sample = _producer_module()
    args = sample._args(_argv(services["producer"]["command"]))
    assert args.bootstrap_servers == "kafka:9092" and args.topic == "page-views"
    assert 0 < args.late_fraction < 0.5 and 1 <= args.rate <= 20

    from streamproc import serdes
    from streamproc.loader import load_topology
    from streamproc.testing import TopologyTestDriver

    monkeypatch.chdir(ROOT)
    avro = serdes.Avro(args.schema)
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 10**9, 1000 // int(args.rate)))
    views = sample.page_views(random.Random(7), lambda: next(clock), args.late_fraction)
    records = [next(views) for _ in range(2_000)]                  # 400 s of event time at 5/s
    for key, view in records[:50]:
        assert key.startswith("session-")
        assert avro.deserialize(avro.serialize(view)) == view
    with TopologyTestDriver(load_topology(os.path.join(ROOT, "topologies", "page_views.py")),
                            partitions={"page-views": 4}) as driver:
        for start in range(0, len(records), 10):
            driver.pipe_many("page-views", [(k, v, v["ts"]) for k, v in records[start:start + 10]])
        results = driver.read_output("page-views-per-user-1m")
        metrics = driver.metrics()
    assert len(results) > 20, "windows close and emit per-user results"
    assert metrics["late_records"] > 0, "some sample records arrive after their window closed"
    assert metrics["late_records"] < len(records) * 0.2


# ------------------------------------------------------------------------------------ docker compose

def _docker_engine() -> str | None:
    """Why ``docker compose config`` cannot run here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not on PATH"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker info failed: {e}"
    if info.returncode != 0:
        return f"no Docker engine answers (docker info: {(info.stderr or info.stdout).strip().splitlines()[-1:]})"
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def test_docker_compose_config():
    reason = _docker_engine()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(["docker", "compose", "-f", COMPOSE, "config", "--quiet"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
