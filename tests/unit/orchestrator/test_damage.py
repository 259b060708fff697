"""Damage named, and repaired where it can be: a garbled MLflow store stops a command with a
message naming the file and what to do; a garbled table file is named, set aside, and the query
over the rest of the table runs."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from orchestrator.cli import main
from trainables import layout


def _sweep(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "workdir": str(tmp_path / "w"), "model": "lenet_300_100",
                                    "dataset": "digits"}))
    return path


def test_a_garbled_mlflow_store_is_named_with_what_to_do(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    store = (tmp_path / "w") / layout.MLFLOW_DB
    store.parent.mkdir(parents=True)
    store.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    assert main(["status", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"the sweep's MLflow store {store} cannot be read" in err
    assert "move it aside" in err and "records their levels again without training them" in err
    assert "Traceback" not in err


def test_a_garbled_table_file_is_set_aside_and_the_query_runs(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    good, bad = (tmp_path / "w" / layout.similarity_file("pwcca", analysis_id="a1", tile_id=t) for t in ("t1", "t2"))
    good.parent.mkdir(parents=True)
    pl.DataFrame({"analysis_id": ["a1"], "value": [0.5]}).write_parquet(good)
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated by a full disk
    assert main(["query", str(sweep), "SELECT COUNT(*) AS n FROM similarity", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert f"{bad} is not a readable Parquet file" in err and ".corrupt" in err
    assert '"n":1' in out
    assert bad.with_name(bad.name + ".corrupt").exists()
