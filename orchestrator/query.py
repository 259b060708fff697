"""A user's SQL over a sweep's tables: confined to those tables, cut at a row limit, and run in a
child process that is stopped once it uses more memory than it may.

polars SQL has table functions (`read_csv('/etc/passwd')`, `read_parquet`, `generate_series`, ...)
and no switch to turn them off, so a query may name in its FROM clauses (polars' own parser
lists them, through quoting, comments and nesting) only relations that are not table functions:
the sweep's tables and the query's own CTEs. The result is `head(limit + 1)` of the lazy plan,
which polars pushes into scans and joins where it can; what it cannot bound (a sort over a cross
join) runs in a child process that is killed past `max_memory_bytes` of resident memory.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil

from orchestrator.errors import SpecError
from trainables.messages import shown

DEFAULT_LIMIT = 1000
_POLL_S = 0.02  # memory is sampled this often; a child grows at most a few hundred MB in between

# Runs in a fresh interpreter that imports only polars (`-I`: no user site, no current directory).
_CHILD = """
import sys
import polars as pl
try:
    pl.LazyFrame.deserialize(sys.argv[1]).collect(engine="streaming").write_ipc(sys.argv[2])
except Exception as err:
    sys.stderr.write(f"{type(err).__name__}: {err}")
    sys.exit(3)
"""


@dataclass(frozen=True)
class QueryResult:
    frame: pl.DataFrame  # at most `limit` rows
    truncated: bool  # the query has more rows than `limit`


def check_sql(sql: str) -> None:
    """SpecError if `sql` does not parse or reads through a table function (naming it)."""
    try:
        relations = _parser().table_identifiers(sql, include_schema=True, unique=True)
    except Exception as err:  # polars raises several SQL error types; all are bad input here
        raise SpecError([f"query: {_first_paragraph(err)}"], "query") from None
    functions = [name for name in relations if _is_table_function(name)]
    if functions:
        raise SpecError([f"query: table function {shown(name)} is not allowed; a query reads only the sweep's "
                         "tables (and its own WITH clauses)" for name in functions], "query")


def run_query(frames: Mapping[str, pl.LazyFrame], sql: str, *, limit: int, max_memory_bytes: int) -> QueryResult:
    """The first `limit` rows of `sql` over `frames` (name -> table). SpecError for a refused
    query, a polars error, or one that needs more than `max_memory_bytes`."""
    if limit < 1:
        raise SpecError([f"--limit: expected a positive number of rows (got {shown(limit)})"], "query")
    check_sql(sql)
    plan = pl.SQLContext(frames).execute(sql)
    try:
        plan.collect_schema()  # unknown tables and columns surface here, before any work
    except Exception as err:
        raise SpecError([f"query: {_first_paragraph(err)}"], "query") from None
    with tempfile.TemporaryDirectory(prefix="impsweep-query-") as tmp:
        plan_file, result_file, err_file = (Path(tmp) / name for name in ("plan", "result.arrow", "stderr"))
        plan.head(limit + 1).serialize(plan_file)
        _collect_in_child(plan_file, result_file, err_file, max_memory_bytes=max_memory_bytes)
        frame = pl.read_ipc(result_file)
    return QueryResult(frame.head(limit), truncated=frame.height > limit)


def default_max_memory_bytes() -> int:
    """Half of this machine's memory: a runaway query stops before the machine swaps or kills."""
    return psutil.virtual_memory().total // 2


def _collect_in_child(plan_file: Path, result_file: Path, err_file: Path, *, max_memory_bytes: int) -> None:
    with err_file.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, str(plan_file), str(result_file)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        over = _watch(proc, max_memory_bytes)
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C) or over its memory: end it now
            proc.kill()
            proc.wait()
    message = err_file.read_text(errors="replace")
    if over or "memory allocation of" in message:  # the allocator aborts when memory is refused
        raise SpecError([f"query: stopped after using more than {max_memory_bytes / 2**30:.2f} GB of memory "
                         "(--max-memory-gb); filter or aggregate before joining, and join on keys rather "
                         "than with a cross join"], "query")
    if proc.returncode != 0:
        raise SpecError([f"query: {_first_paragraph(message) or f'the query process ended with {proc.returncode}'}"],
                        "query")


def _watch(proc: subprocess.Popen, max_memory_bytes: int) -> bool:
    """Wait for `proc`; True (and leave it running) as soon as its resident memory passes the cap."""
    try:
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            if watched.memory_info().rss > max_memory_bytes:
                return True
            time.sleep(_POLL_S)
    except psutil.NoSuchProcess:  # it ended between two looks
        proc.wait()
    return False


def _parser():
    """polars' SQL parser (the compiled module moved in polars 2)."""
    try:
        from polars._plr import PySQLContext
    except ImportError:
        from polars.polars import PySQLContext
    return PySQLContext


def _is_table_function(relation: str) -> bool:
    """Whether polars would call `relation` (its last dotted part) as a table function: asked of
    polars itself with no arguments, which every table function refuses before reading."""
    name = relation.rsplit(".", 1)[-1]
    try:
        pl.SQLContext().execute(f'SELECT * FROM "{name.replace(chr(34), chr(34) * 2)}"()').collect_schema()
    except Exception as err:
        return "is not a supported table function" not in str(err)
    return True  # an argument-less table function: refused all the same


def _first_paragraph(err: object) -> str:
    """polars errors append the resolved plan after a blank line; the first paragraph says it."""
    return str(err).strip().split("\n\n")[0].strip()
