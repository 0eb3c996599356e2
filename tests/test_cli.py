"""``streamproc describe`` and topology loading (DESIGN.md section 7, issue item 8).

Bad topology files live in tests/topologies/; the line an error must name is marked
there with a comment (``# ERROR-LINE``), so these tests do not hard-code line numbers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamproc.cli import app

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "topologies"
FIXTURES_REL = FIXTURES.relative_to(REPO)       # tests/topologies


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["COLUMNS"] = "200"          # rich wraps at 80 columns otherwise
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    return env


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamproc", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=60)


def marked_line(path: Path, marker: str = "ERROR-LINE") -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if f"# {marker}" in line:
            return i
    raise AssertionError(f"no {marker} marker in {path}")


def assert_clean_error(res, *expected: str) -> str:
    """Exit code 2, one short message on stderr containing ``expected``, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert len(err) < 800, err
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert res.stdout.strip() == ""
    for e in expected:
        assert e in err, (e, err)
    return err


# --------------------------------------------------------------------------- describe, good files


@pytest.fixture(scope="module")
def page_views_json():
    res = run_cli("describe", "topologies/page_views.py", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_describe_json_of_page_views_has_subtopologies_topics_and_store(page_views_json):
    d = page_views_json
    assert d["app_id"] == "page-views"
    assert len(d["subtopologies"]) == 2
    sub0, sub1 = d["subtopologies"]
    topics = d["topics"]
    assert topics["sources"] == ["page-views"]
    assert topics["sinks"] == ["page-views-per-user-1m"]
    (rp,) = topics["repartition"]
    (cl,) = topics["changelog"]
    (store,) = d["stores"]
    assert rp == "page-views-views-by-user-repartition"          # group_by(..., name="views-by-user")
    assert store["name"] == "views-per-user-1m" and store["generated_name"] is False
    assert d["generated_names"] == []
    assert cl == f"page-views-{store['name']}-changelog" == store["changelog"]
    assert store["window"] == "tumbling(size=1m, grace=10s)"
    assert re.fullmatch(r"[0-9a-f]{8,}", store["fingerprint"])
    assert sub0["input_topics"] == ["page-views"] and rp in sub0["sink_topics"]
    assert sub1["input_topics"] == [rp] and sub1["stores"] == [store["name"]]
    kinds0 = [n["kind"] for n in sub0["nodes"]]
    assert kinds0[0] == "source" and "filter" in kinds0 and kinds0[-1] == "repartition_sink"
    assert [n["kind"] for n in sub1["nodes"]] == ["repartition_source", "aggregate", "sink"]
    # every node says where the user defined it
    for sub in d["subtopologies"]:
        for n in sub["nodes"]:
            assert re.search(r"page_views\.py:\d+$", n["defined_at"]), n


def test_describe_tree_of_page_views_names_subtopologies_topics_and_store(page_views_json):
    res = run_cli("describe", "topologies/page_views.py")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert res.stderr.strip() == ""
    store = page_views_json["stores"][0]
    assert "page-views" in out
    assert "Sub-topology 0" in out and "Sub-topology 1" in out
    assert page_views_json["topics"]["repartition"][0] in out
    assert store["changelog"] in out
    assert store["name"] in out
    assert "page-views-per-user-1m" in out
    assert "topologies/page_views.py" in out


@pytest.mark.parametrize("example", ["page_views.py", "user_sessions.py", "moving_average.py"])
def test_every_example_describes_in_process(example, monkeypatch):
    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, ["describe", f"topologies/{example}", "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["stores"] and d["topics"]["changelog"] == [s["changelog"] for s in d["stores"]]


@pytest.mark.parametrize("example", ["page_views.py", "user_sessions.py", "moving_average.py"])
def test_examples_name_every_store_so_describe_does_not_warn(example):
    res = run_cli("describe", f"topologies/{example}")
    assert res.returncode == 0 and "generated name" not in res.stderr + res.stdout, res.stderr


UNNAMED = """
from streamproc import Topology, agg, serdes, windows
t = Topology("unnamed")
s = t.stream("in", key=serdes.String(), value=serdes.Json())
s.group_by(lambda k, v: v["user"]).window(windows.Tumbling("1m")).count().to("out")
s.group_by_key().count(name="stable").to("out2")
"""


def test_describe_marks_and_warns_about_generated_names(tmp_path):
    f = tmp_path / "unnamed.py"
    f.write_text(UNNAMED)
    res = run_cli("describe", str(f), "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    by_name = {s["name"]: s for s in d["stores"]}
    gen = [n for n, s in by_name.items() if s["generated_name"]]
    assert len(gen) == 1 and gen[0].startswith("aggregate-") and by_name["stable"]["generated_name"] is False
    assert {(g["what"], g["name"]) for g in d["generated_names"]} == {
        ("store", gen[0]), ("repartition topic", f"unnamed-{gen[0]}-repartition")}
    # one warning per generated name, naming file:line and the fix
    warnings = [line for line in res.stderr.splitlines() if "generated name" in line]
    assert len(warnings) == 2, res.stderr
    assert all("unnamed.py:5" in w and "name=" in w for w in warnings), res.stderr
    tree = run_cli("describe", str(f), cwd=tmp_path)
    assert "(generated name: add name=)" in tree.stdout


def test_describe_json_in_process_for_a_fixture():
    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "good_counts.py"), "--format", "json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["app_id"] == "good-counts"
    assert d["topics"]["repartition"] == ["good-counts-clicks-per-user-repartition"]
    assert d["topics"]["changelog"] == ["good-counts-clicks-per-user-changelog"]
    assert [s["name"] for s in d["stores"]] == ["clicks-per-user"]


def test_describe_tree_in_process_for_a_fixture():
    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "good_counts.py")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("good-counts", "Sub-topology 0", "Sub-topology 1", "clicks-per-user",
                 "good-counts-clicks-per-user-repartition", "good-counts-clicks-per-user-changelog"):
        assert name in res.stdout


def test_describe_works_from_another_directory_with_an_absolute_path(tmp_path):
    res = run_cli("describe", str(FIXTURES / "good_counts.py"), "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["app_id"] == "good-counts"


def test_describe_page_views_from_another_directory_finds_its_avro_schema(tmp_path):
    res = run_cli("describe", str(REPO / "topologies" / "page_views.py"), "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["topics"]["sources"] == ["page-views"]


def test_an_unknown_format_is_an_error():
    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "good_counts.py"), "--format", "yaml"])
    assert res.exit_code == 2
    assert "yaml" in res.stderr


# --------------------------------------------------------------------------- picking a Topology


def test_path_colon_name_picks_one_of_several_topologies():
    res = run_cli("describe", f"{FIXTURES_REL}/two_topologies.py:second", "--format", "json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["app_id"] == "second-app"
    assert d["topics"]["sources"] == ["second-in"]
    assert [s["name"] for s in d["stores"]] == ["second-counts"]

    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "two_topologies.py") + ":first", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["app_id"] == "first-app"


def test_one_topology_under_two_names_is_not_ambiguous():
    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "aliased_topology.py"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["app_id"] == "aliased"


def test_path_colon_unknown_name_lists_the_names_there_are():
    res = CliRunner().invoke(app, ["describe", str(FIXTURES / "two_topologies.py") + ":third"])
    assert res.exit_code == 2
    assert "third" in res.stderr and "first" in res.stderr and "second" in res.stderr
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- bad files (subprocess)


def test_syntax_error_names_file_and_line():
    f = FIXTURES / "bad_syntax.py"
    err = assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_syntax.py"),
                             f"bad_syntax.py:{marked_line(f)}")
    assert "syntax" in err.lower()


def test_missing_module_names_file_line_and_module():
    f = FIXTURES / "bad_missing_import.py"
    assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_missing_import.py"),
                       f"bad_missing_import.py:{marked_line(f)}", "streamproc_no_such_module_for_tests")


def test_exception_at_import_names_the_line_of_the_raise():
    f = FIXTURES / "bad_raises_at_import.py"
    assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_raises_at_import.py"),
                       f"bad_raises_at_import.py:{marked_line(f)}", "RuntimeError", "settings file is missing")


def test_topology_error_at_import_names_file_and_line():
    f = FIXTURES / "bad_dsl_error.py"
    assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_dsl_error.py"),
                       f"bad_dsl_error.py:{marked_line(f)}", "10x")


def test_file_without_a_topology_is_named():
    err = assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_no_topology.py"), "bad_no_topology.py")
    assert "Topology" in err


def test_two_topologies_suggest_path_colon_name():
    err = assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/two_topologies.py"), "two_topologies.py")
    assert re.search(r"two_topologies\.py:(first|second)\b", err), err
    assert "first" in err and "second" in err


def test_nonexistent_path_is_named():
    assert_clean_error(run_cli("describe", "tests/topologies/does_not_exist.py"), "does_not_exist.py")


def test_topology_invalid_at_plan_time_names_file_and_both_lines():
    f = FIXTURES / "bad_duplicate_stores.py"
    assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_duplicate_stores.py"),
                       "bad_duplicate_stores.py", "'counts'",
                       f"bad_duplicate_stores.py:{marked_line(f, 'FIRST-STORE')}",
                       f"bad_duplicate_stores.py:{marked_line(f, 'SECOND-STORE')}")


def test_topology_without_sources_is_invalid():
    assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_no_sources.py"), "bad_no_sources.py", "no input")


def test_serde_error_at_import_is_a_bad_topology_file():
    f = FIXTURES / "bad_missing_schema.py"
    err = assert_clean_error(run_cli("describe", f"{FIXTURES_REL}/bad_missing_schema.py"),
                             f"bad_missing_schema.py:{marked_line(f)}", "schema.avsc")
    assert err.count("could not handle a record") <= 1


# --------------------------------------------------------------------------- bad files (in process)


@pytest.mark.parametrize("fixture,expected", [
    ("bad_syntax.py", "bad_syntax.py:{line}"),
    ("bad_missing_import.py", "bad_missing_import.py:{line}"),
    ("bad_raises_at_import.py", "bad_raises_at_import.py:{line}"),
    ("bad_dsl_error.py", "bad_dsl_error.py:{line}"),
    ("bad_no_topology.py", "bad_no_topology.py"),
    ("two_topologies.py", "two_topologies.py:"),
    ("bad_duplicate_stores.py", "bad_duplicate_stores.py"),
    ("does_not_exist.py", "does_not_exist.py"),
])
def test_bad_files_in_process_exit_2_with_one_line(fixture, expected):
    path = FIXTURES / fixture
    line = marked_line(path) if "{line}" in expected else None
    res = CliRunner().invoke(app, ["describe", str(path)])
    assert res.exit_code == 2, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert expected.format(line=line) in err
    assert "Traceback" not in res.output


def test_run_warns_once_per_generated_name_before_it_starts(tmp_path):
    f = tmp_path / "unnamed.py"
    f.write_text(UNNAMED)
    # a refused setting stops run before any broker contact: the warnings come first, once each
    res = run_cli("run", str(f), "-b", "127.0.0.1:1", "--state-dir", str(tmp_path / "s"),
                  "--config", "consumer.partition.assignment.strategy=roundrobin", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "generated name" in line]
    assert len(warnings) == 2 and all("unnamed.py:5" in w and "name=" in w for w in warnings), res.stderr
