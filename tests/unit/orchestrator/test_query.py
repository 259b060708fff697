"""`impsweep query`: confined to the sweep's tables, cut at --limit, stopped past its memory."""
from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from orchestrator.cli import DEMO_QUERY, main
from orchestrator.query import check_sql, run_query
from orchestrator.specs import SpecError
from trainables import layout

N_LEVELS = 2500
SECRET = "SECRET-MARKER-7f3a"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep file whose workdir holds a `levels` table of N_LEVELS rows, and beside it a CSV
    file no query may read."""
    root = tmp_path_factory.mktemp("query")
    table = root / "w" / layout.catalog_table_file("levels")
    table.parent.mkdir(parents=True)
    pl.DataFrame({"checkpoint_id": [f"c0-s0/L{i:04d}" for i in range(N_LEVELS)], "level": range(N_LEVELS),
                  "test_acc": [0.5] * N_LEVELS}).write_parquet(table)
    (root / "secret.csv").write_text(f"a\n{SECRET}\n")
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "q", "workdir": str(root / "w"), "model": "lenet_300_100",
                                    "dataset": "digits"}))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("sql, function", [
    ("SELECT * FROM read_csv('{f}')", "read_csv"),
    ("SELECT * FROM READ_CSV('{f}')", "READ_CSV"),
    ('SELECT * FROM "read_csv"(\'{f}\')', "read_csv"),
    ("SELECT * FROM `read_csv`('{f}')", "read_csv"),
    ("SELECT * FROM read_csv /* a comment */ (\n'{f}'\n)", "read_csv"),
    ("SELECT * FROM read_csv\n-- a comment\n('{f}')", "read_csv"),
    ("SELECT * FROM levels WHERE checkpoint_id IN (SELECT a FROM read_csv('{f}'))", "read_csv"),
    ("SELECT (SELECT MAX(a) FROM read_csv('{f}')) AS m FROM levels", "read_csv"),
    ("WITH q AS (SELECT * FROM (SELECT * FROM read_csv('{f}'))) SELECT * FROM q", "read_csv"),
    ("SELECT checkpoint_id FROM levels UNION ALL SELECT a FROM read_csv('{f}')", "read_csv"),
    ("SELECT * FROM levels l JOIN read_csv('{f}') r ON l.checkpoint_id = r.a", "read_csv"),
    ("SELECT * FROM levels WHERE EXISTS (SELECT 1 FROM read_csv('{f}'))", "read_csv"),
    ("SELECT * FROM levels ORDER BY (SELECT COUNT(*) FROM read_csv('{f}'))", "read_csv"),
    ("WITH read_csv AS (SELECT 1 AS a) SELECT * FROM read_csv('{f}')", "read_csv"),
    ("SELECT * FROM s.read_csv('{f}')", "s.read_csv"),
    ("SELECT * FROM read_parquet('{f}')", "read_parquet"),
    ("SELECT * FROM read_json('{f}')", "read_json"),
    ("SELECT * FROM read_ndjson('{f}')", "read_ndjson"),
    ("SELECT * FROM read_ipc('{f}')", "read_ipc"),
    ("SELECT * FROM generate_series(1, 1000000000000) AS g(v)", "generate_series"),
])
def test_table_functions_are_refused_however_written(sweep, sql, function):
    with pytest.raises(SpecError) as info:
        check_sql(sql.format(f=sweep.parent / "secret.csv"))
    assert info.value.errors == [f"query: table function '{function}' is not allowed; a query reads only "
                                 "the sweep's tables (and its own WITH clauses)"]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('{f}')",
    "SELECT * FROM levels, LATERAL read_csv('{f}')",  # not a listed relation: polars refuses it
    "SELECT * FROM TABLE(read_csv('{f}'))",
    "SELECT * FROM '{f}'",
])
def test_impsweep_query_reads_no_other_file(sweep, capsys, sql):
    before = _listing(sweep.parent)
    assert main(["query", str(sweep), sql.format(f=sweep.parent / "secret.csv"), "--format", "csv"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and err.startswith("impsweep: query: 1 error(s)")
    assert _listing(sweep.parent) == before


def test_queries_over_the_sweeps_tables_pass_the_check():
    for sql in [DEMO_QUERY, "WITH best AS (SELECT level, MAX(test_acc) AS a FROM levels GROUP BY level) "
                "SELECT * FROM best b JOIN levels l ON l.level = b.level WHERE l.level IN (SELECT 1)",
                "SELECT * FROM UNNEST([1, 2]) AS u(v)", "SELECT * FROM similarity s, layers AS range"]:
        check_sql(sql)


def test_the_limit_cuts_the_table_and_says_so(sweep, capsys):
    assert main(["query", str(sweep), "SELECT level FROM levels ORDER BY level DESC", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    assert "shape: (3, 1)" in out and "2499" in out and "2496" not in out
    assert err == "impsweep: first 3 rows; pass --limit to see more\n"
    assert main(["query", str(sweep), "SELECT COUNT(*) AS n FROM levels", "--limit", "1"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_files_are_cut_at_the_default_limit_too(sweep, tmp_path, capsys, fmt):
    output = tmp_path / f"out.{fmt}"
    assert main(["query", str(sweep), "SELECT * FROM levels", "--format", fmt, "--output", str(output)]) == 0
    if fmt == "csv":
        rows = output.read_text().splitlines()[1:]
    elif fmt == "json":
        rows = json.loads(output.read_text())
    else:
        rows = pl.read_parquet(output).rows()
    assert len(rows) == 1000
    assert capsys.readouterr().err == "impsweep: first 1000 rows; pass --limit to see more\n"


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit: expected a positive number of rows (got 0)"),
    (["--limit", "-5"], "--limit: expected a positive number of rows (got -5)"),
    (["--max-memory-gb", "0"], "--max-memory-gb: expected a positive number of GB (got 0.0)"),
    (["--format", "parquet"], "--format parquet needs --output FILE"),
    (["--format", "csv", "--output", "{tmp}"], "--output: '{tmp}' is a folder; expected a file to write"),
    (["--format", "json", "--output", "{tmp}/missing/out.json"],
     "--output: the folder of '{tmp}/missing/out.json' does not exist"),
])
def test_bad_options_exit_2_and_write_nothing(sweep, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["query", str(sweep), "SELECT * FROM levels", *args]) == 2
    assert f"  - {message.format(tmp=tmp_path)}\n" in capsys.readouterr().err
    assert _listing(tmp_path) == []


CUBE = "FROM t a, t b, t c"  # 1500**3 = 3.4 billion rows, 81 GB as three int64 columns


def test_the_limit_is_pushed_into_the_plan():
    frames = {"t": pl.LazyFrame({"x": range(1500)})}
    start = time.perf_counter()
    result = run_query(frames, f"SELECT a.x AS ax, b.x AS bx, c.x AS cx {CUBE}", limit=4,
                       max_memory_bytes=300 * 2**20)
    assert result.frame.height == 4 and result.truncated
    assert time.perf_counter() - start < 10


def test_a_runaway_query_stops_with_a_clear_message():
    frames = {"t": pl.LazyFrame({"x": range(1500)})}
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        run_query(frames, f"SELECT DISTINCT a.x * 2250000 + b.x * 1500 + c.x AS k {CUBE}", limit=4,
                  max_memory_bytes=300 * 2**20)
    assert info.value.errors == ["query: stopped after using more than 0.29 GB of memory (--max-memory-gb); "
                                 "filter or aggregate before joining, and join on keys rather than with a cross join"]
    assert time.perf_counter() - start < 10
