"""The record read at scale: server-side filters find exactly what reading every run and
filtering in Python found; parent runs created in a batch are those created one by one."""
from __future__ import annotations

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.catalog import _finished_levels as catalog_levels
from orchestrator.plan import _finished_levels as plan_levels
from trainables import LineageSpec, lineage_id
from trainables.ids import checkpoint_id
from trainables.level_index import IndexedLevel, entry_value, parse_entry, read_index, rebuild_index, write_entry
from trainables.records import level_experiments, parent_runs
from trainables.tracking import (
    KIND_LEVEL, KIND_LINEAGE, LEVEL_METRICS, TAG, ensure_parent_run, ensure_parent_runs, lineage_tags, search_all,
    sweep_tag, tag_filter,
)


def _spec(seed: int) -> LineageSpec:
    return LineageSpec.model_validate({"model": "lenet_300_100", "dataset": "digits", "seed": seed,
                                       "prune": {"levels": 2}})


def _level(client, spec, *, experiment, parent, level, status="FINISHED", start=None, acc=0.5):
    """A level run tagged as `log_level` tags it."""
    lid = lineage_id(spec)
    tags = {k: v for k, v in lineage_tags(spec, "r").items() if k != f"{TAG}kind"}
    tags |= {f"{TAG}kind": KIND_LEVEL, f"{TAG}level": str(level), f"{TAG}checkpoint_id": checkpoint_id(lid, level),
             "mlflow.parentRunId": parent}
    run_id = client.create_run(experiment, start_time=start, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, acc if k == "test_acc" else 0.0, 0, 0) for k in LEVEL_METRICS])
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """Sweep `a` (experiment a) shares lineage 0 with sweep `b`, which trained its level 1 in
    experiment b; sweep `c` (experiment c) holds a lineage of its own; the default experiment
    a stray level run. (A level run lies in the experiment of a sweep that is a member of its
    lineage: the one that trained it.) Lineage 1 has a RUNNING and a FAILED level, lineage 2 two runs of level 0."""
    tmp = tmp_path_factory.mktemp("record")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    ex = {name: client.create_experiment(name, artifact_location=str(tmp / name)) for name in "abc"}
    specs = [_spec(seed) for seed in range(4)]
    parents = {i: ensure_parent_run(client, specs[i], experiment_id=ex["a"], sweep="a", code_rev="r") for i in range(3)}
    ensure_parent_run(client, specs[0], experiment_id=ex["b"], sweep="b", code_rev="r")
    parents[3] = ensure_parent_run(client, specs[3], experiment_id=ex["c"], sweep="c", code_rev="r")
    _level(client, specs[0], experiment=ex["a"], parent=parents[0], level=0)
    _level(client, specs[0], experiment=ex["b"], parent=parents[0], level=1)
    _level(client, specs[1], experiment=ex["a"], parent=parents[1], level=0)
    _level(client, specs[1], experiment=ex["a"], parent=parents[1], level=1, status="RUNNING")
    _level(client, specs[1], experiment=ex["a"], parent=parents[1], level=2, status="FAILED")
    _level(client, specs[2], experiment=ex["a"], parent=parents[2], level=0, start=2_000, acc=0.2)
    _level(client, specs[2], experiment=ex["a"], parent=parents[2], level=0, start=1_000, acc=0.1)  # the earliest
    _level(client, specs[3], experiment=ex["c"], parent=parents[3], level=0)
    _level(client, _spec(9), experiment="0", parent=parents[3], level=0)  # no sweep ran it: not looked at
    return client, ex, [lineage_id(s) for s in specs]


def _old_plan_levels(client, lineage_ids):
    """What plan read before: every level run of every experiment, filtered in Python."""
    out = {}
    for run in search_all(client, tag_filter(kind=KIND_LEVEL)):
        if run.info.status == "FINISHED" and run.data.tags[f"{TAG}lineage_id"] in lineage_ids:
            out.setdefault(run.data.tags[f"{TAG}lineage_id"], {})[int(run.data.tags[f"{TAG}level"])] = run.data.metrics
    return out


def test_plan_and_catalog_find_what_reading_every_run_found(record):
    client, ex, lids = record
    wanted = set(lids[:3])
    assert level_experiments(client, "a", lineage_ids=wanted) == sorted([ex["a"], ex["b"]], key=int)  # not c, not default
    levels = plan_levels(client, "a", wanted)
    assert levels == _old_plan_levels(client, wanted)
    assert sorted(levels[lids[0]]) == [0, 1] and sorted(levels[lids[1]]) == [0]  # RUNNING, FAILED left out
    assert levels[lids[2]][0]["test_acc"] == 0.1  # the earliest of two runs of a level
    catalog = catalog_levels(client, "a", [p for p in parent_runs(client) if p.lineage_id in wanted])
    old = sorted((r for r in search_all(client, tag_filter(kind=KIND_LEVEL)) if r.info.status == "FINISHED"
                  and r.data.tags[f"{TAG}lineage_id"] in wanted), key=lambda r: r.info.start_time)
    seen, expected = set(), []
    for run in old:
        if (cid := run.data.tags[f"{TAG}checkpoint_id"]) not in seen:
            seen.add(cid)
            expected.append(run.info.run_id)
    assert [r.run_id for r in catalog] == expected
    # a sweep not run yet finds the levels that other sweeps ran of its lineages
    assert plan_levels(client, "new", {lids[3]}) == _old_plan_levels(client, {lids[3]})


def test_parent_runs_found_by_membership(record):
    client, ex, lids = record
    assert {p.lineage_id for p in parent_runs(client, sweep="a")} == set(lids[:3])
    shared = [p for p in parent_runs(client, sweep="b")]
    assert [(p.lineage_id, p.experiment_id, p.sweeps) for p in shared] == [(lids[0], ex["a"], ("a", "b"))]


def test_batch_created_parent_runs_match_those_created_one_by_one(record, tmp_path):
    client = record[0]
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    one = ensure_parent_run(client, _spec(10), experiment_id=experiment, sweep="s", code_rev="r")
    specs = [_spec(seed) for seed in range(11, 14)]
    batch = ensure_parent_runs(client, specs, experiment_id=experiment, sweep="s", code_rev="r")
    assert ensure_parent_runs(client, specs, experiment_id=experiment, sweep="s", code_rev="r") == batch
    assert len(search_all(client, f"{tag_filter(kind=KIND_LINEAGE)} and tags.`{sweep_tag('s')}` = '1'")) == 4
    reference = client.get_run(one)
    for spec in specs:
        run = client.get_run(batch[lineage_id(spec)])
        assert run.info.status == "SCHEDULED" and run.info.run_name == lineage_id(spec)
        assert run.data.tags == {**lineage_tags(spec, "r"), sweep_tag("s"): "1", "mlflow.runName": lineage_id(spec)}
        assert set(run.data.params) == set(reference.data.params)
        assert run.data.params["seed"] == str(spec.seed)


def test_the_level_index_answers_as_the_runs_do(record):
    """Planning reads the experiments' level index once every experiment holding level runs is
    indexed; until then (an experiment logged before the index), the runs."""
    client, ex, lids = record
    wanted = set(lids)
    from_runs = plan_levels(client, "a", wanted)
    parents = parent_runs(client)
    catalog_from_runs = {(r.checkpoint_id, r.run_id, r.metrics["test_acc"]) for r in catalog_levels(client, "a", parents)}
    assert not read_index(client).complete
    for experiment in [ex["a"], ex["b"], ex["c"]]:
        rebuild_index(client, experiment)
    assert not read_index(client).complete  # the default experiment holds a level run, unindexed
    rebuild_index(client, "0")
    index = read_index(client)
    assert index.complete and index.levels[lids[0]] == {0, 1}  # levels of one lineage in two experiments
    from_index = plan_levels(client, "a", wanted)
    assert {lid: dict(levels) for lid, levels in from_index.items()} == from_runs
    assert {(r.checkpoint_id, r.run_id, r.metrics["test_acc"]) for r in catalog_levels(client, "a", parents)} \
        == catalog_from_runs
    # a trial's entry after each level it logs: the new level joins the entry
    write_entry(client, ex["c"], lineage_id=lids[3], levels={0: IndexedLevel("r0", {"test_acc": 0.5}),
                                            1: IndexedLevel("r1", {"test_acc": 0.25})})
    assert dict(plan_levels(client, "c", {lids[3]})[lids[3]]) == {0: {"test_acc": 0.5}, 1: {"test_acc": 0.25}}
    # indexed again from the runs: the entry matches them again, an entry without runs goes
    write_entry(client, ex["c"], lineage_id="gone-s1", levels={0: IndexedLevel("r9", {})})
    rebuild_index(client, ex["c"])
    assert dict(plan_levels(client, "c", {lids[3]})[lids[3]]) == from_runs[lids[3]]
    assert "gone-s1" not in read_index(client).levels


def test_an_entry_too_long_for_a_tag_is_left_out():
    levels = {i: IndexedLevel("x" * 32, {k: 0.123456789 for k in LEVEL_METRICS}) for i in range(200)}
    assert entry_value(levels) is None and entry_value({}) is None
    assert parse_entry(entry_value({3: levels[3]})) == {3: levels[3]}
