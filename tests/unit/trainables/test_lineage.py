"""run_lineage: levels, exact masks, rewinding, schedules, controls, resume equivalence."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from trainables import LineageSpec, lineage_id, load_checkpoint, run_lineage
from trainables.checkpoints import LineageCheckpoints
from trainables import layout
from trainables.lineage_run import LineageRun
from trainables.schedules import level_plans
from trainables.storage import LocalStore

CPU = torch.device("cpu")


def _level(result, k):
    return load_checkpoint(result.levels[k].checkpoint_dir)


def test_imp_levels_sparsity_and_zeros(tiny_spec, tmp_path):
    spec = tiny_spec(prune={"levels": 3})
    result = run_lineage(spec, workdir=tmp_path)
    assert [lv.level for lv in result.levels] == [0, 1, 2, 3]
    assert [lv.checkpoint_id for lv in result.levels] == [f"{result.lineage_id}/L0{k}" for k in range(4)]
    for k, lv in enumerate(result.levels):
        assert lv.metrics["sparsity"] == pytest.approx(1 - 0.8**k, abs=1e-4)
        stored = _level(result, k)
        for name, mask in stored.masks.items():
            assert torch.all(stored.model[name][~mask] == 0), f"pruned weights of {name} revived at L{k}"
    assert result.levels[0].metrics["test_acc"] > 0.8


def test_same_spec_same_weights(tiny_spec, tmp_path, digest):
    spec = tiny_spec()
    a = run_lineage(spec, workdir=tmp_path / "a")
    b = run_lineage(spec, workdir=tmp_path / "b")
    assert digest(_level(a, 2).model) == digest(_level(b, 2).model)
    assert digest(_level(a, 2).masks) == digest(_level(b, 2).masks)


class _Stop(Exception):
    pass


def _cut(spec, workdir, *, level: int, epoch: int) -> None:
    """Run the lineage and stop it (as a kill would) after `epoch` epochs of `level`."""
    def stop(at_level, at_epoch):
        if (at_level, at_epoch) == (level, epoch):
            raise _Stop

    with pytest.raises(_Stop):
        run_lineage(spec, workdir=workdir, on_epoch=stop)


def _train_dense_level(spec, workdir) -> None:
    """Run the lineage and stop it once level 0 is complete."""
    def stop(result):
        raise _Stop

    with pytest.raises(_Stop):
        run_lineage(spec, workdir=workdir, on_level=stop)


def test_resume_is_bit_identical(tiny_spec, tmp_path, digest):
    spec = tiny_spec(train={"epochs": 3})
    whole = run_lineage(spec, workdir=tmp_path / "whole")
    _cut(spec, tmp_path / "cut", level=1, epoch=2)
    assert LineageCheckpoints(tmp_path / "cut", whole.lineage_id).complete_levels() == [0]
    # what writes killed mid-way leave: a level folder and a progress file half-written
    root = tmp_path / "cut" / layout.lineage_dir(whole.lineage_id)
    (root / ".L01.x7f3.tmp").mkdir()
    (root / ".L01.x7f3.tmp" / "state.pt").write_bytes(b"half")
    (root / ".progress.pt.q2w9.tmp").write_bytes(b"half")
    resumed = run_lineage(spec, workdir=tmp_path / "cut")
    assert list(root.rglob(".*.tmp")) == []
    assert [lv.resumed for lv in resumed.levels] == [True, False, False]
    assert digest(_level(resumed, 2).model) == digest(_level(whole, 2).model)
    assert resumed.levels[2].metrics["test_acc"] == whole.levels[2].metrics["test_acc"]


def test_rerun_reads_back_without_training(tiny_spec, tmp_path):
    spec = tiny_spec()
    first = run_lineage(spec, workdir=tmp_path)
    again = run_lineage(spec, workdir=tmp_path)
    assert all(lv.resumed for lv in again.levels)
    assert [lv.metrics for lv in again.levels] == [lv.metrics for lv in first.levels]


def test_stored_spec_mismatch_is_refused(tiny_spec, tmp_path):
    spec = tiny_spec()
    run = LineageRun(spec, workdir=tmp_path, device=CPU)
    stored = tmp_path / layout.lineage_spec(run.lineage_id)
    stored.write_text(stored.read_text().replace('"lenet_300_100"', '"fcn"', 1))
    with pytest.raises(ValueError, match="stored spec.json has identity"):
        run_lineage(spec, workdir=tmp_path)


@pytest.mark.parametrize("rewind", ["init", "step"])
def test_rewinding_restores_surviving_weights_exactly(tiny_spec, tmp_path, rewind):
    extra = {"rewind_step": 5} if rewind == "step" else {}
    spec = tiny_spec(prune={"rewind": rewind, **extra})
    _train_dense_level(spec, tmp_path)
    run = LineageRun(spec, workdir=tmp_path, device=CPU)
    point = LocalStore(tmp_path).load_torch(layout.rewind_point(run.lineage_id))
    assert point["step"] == (5 if rewind == "step" else 0)
    masks = run.resume_or_start(level_plans(spec, run.steps_per_epoch)[1]).masks
    state = run.model.state_dict()
    for name, mask in masks.items():
        assert torch.equal(state[name][mask], point["model"][name][mask])
        assert torch.all(state[name][~mask] == 0)


def test_rewind_lr_keeps_trained_weights(tiny_spec, tmp_path):
    spec = tiny_spec(prune={"rewind": "lr", "levels": 1})
    _train_dense_level(spec, tmp_path)
    run = LineageRun(spec, workdir=tmp_path, device=CPU)
    dense = load_checkpoint(tmp_path / layout.level_dir(run.lineage_id, 0))
    masks = run.resume_or_start(level_plans(spec, run.steps_per_epoch)[1]).masks
    for name, mask in masks.items():
        assert torch.equal(run.model.state_dict()[name][mask], dense.model[name][mask])


def test_oneshot_levels_hit_targets_from_dense(tiny_spec, tmp_path):
    spec = tiny_spec(prune={"schedule": "oneshot", "targets": [0.5, 0.9]})
    result = run_lineage(spec, workdir=tmp_path)
    assert [round(lv.metrics["sparsity"], 4) for lv in result.levels] == [0.0, 0.5, 0.9]


def test_gradual_ramps_to_each_target(tiny_spec, tmp_path):
    spec = tiny_spec(train={"epochs": 2}, prune={"schedule": "gradual", "targets": [0.5, 0.8],
                                                 "gradual_every_steps": 2})
    result = run_lineage(spec, workdir=tmp_path)
    assert [round(lv.metrics["sparsity"], 3) for lv in result.levels] == [0.0, 0.5, 0.8]


def test_aimp_shortens_intermediate_levels(tiny_spec, tmp_path):
    spec = tiny_spec(train={"epochs": 3}, prune={"schedule": "aimp", "levels": 3, "aimp_epochs": 1})
    result = run_lineage(spec, workdir=tmp_path)
    assert [lv.metrics["epochs"] for lv in result.levels] == [3, 1, 1, 3]


def test_finetune_uses_constant_small_lr(tiny_spec):
    spec = tiny_spec(prune={"rewind": "finetune", "finetune_lr": 0.001})
    plan = level_plans(spec)[1]
    assert plan.constant_lr and plan.lr == 0.001


def test_random_reinit_control_changes_weights_not_mask(tiny_spec, tmp_path, digest):
    base = run_lineage(tiny_spec(prune={"levels": 1}), workdir=tmp_path / "a")
    ctrl = run_lineage(tiny_spec(prune={"levels": 1, "control": "random_reinit"}), workdir=tmp_path / "b")
    assert digest(_level(base, 1).masks) == digest(_level(ctrl, 1).masks)
    assert digest(_level(base, 1).model) != digest(_level(ctrl, 1).model)


def test_random_prune_control_keeps_per_layer_counts(tiny_spec, tmp_path, digest):
    base = run_lineage(tiny_spec(prune={"levels": 1}), workdir=tmp_path / "a")
    ctrl = run_lineage(tiny_spec(prune={"levels": 1, "control": "random_prune"}), workdir=tmp_path / "b")
    mb, mc = _level(base, 1).masks, _level(ctrl, 1).masks
    assert {n: int(m.sum()) for n, m in mb.items()} == {n: int(m.sum()) for n, m in mc.items()}
    assert digest(mb) != digest(mc)


@pytest.mark.parametrize("fields,match", [
    ({"model": "resnet9000"}, "unknown model 'resnet9000'; expected one of"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; expected one of"),
    ({"prune": {"rate": 1.0}}, "prune.rate"),
    ({"prune": {"rate": 0.0}}, "prune.rate"),
    ({"prune": {"levels": -1}}, "prune.levels"),
    ({"train": {"optimizer": "lion"}}, "'sgd' or 'adam'"),
    ({"prune": {"rewind": "step"}}, "rewind_step must be >= 1"),
    ({"prune": {"targets": [0.5]}}, "applies to schedules oneshot and gradual"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_specs_name_field_and_options(fields, match):
    raw = {"model": "lenet_300_100", "dataset": "digits"}
    for key, value in fields.items():
        raw[key] = value
    with pytest.raises(ValidationError) as info:
        LineageSpec.model_validate(raw)
    text = str(info.value).replace("\n  ", ".").replace("\n", " ")
    assert match.split(".")[-1] in text


def test_report_period_is_a_runtime_field(tiny_spec):
    assert tiny_spec().report_every_s == 300.0
    ids = {lineage_id(tiny_spec(**runtime)) for runtime in ({}, {"report_every_s": 0}, {"report_every_s": None})}
    assert len(ids) == 1
    with pytest.raises(ValidationError, match="report_every_s"):
        tiny_spec(report_every_s=-1)


def test_stop_rule_ends_the_lineage_when_a_layer_loses_its_units(tiny_spec, tmp_path):
    from trainables.lineage_run import connected_fractions, final_level

    spec = tiny_spec(prune={"scope": "layerwise", "rate": 0.9, "levels": 6, "stop_connected_fraction": 0.5})
    result = run_lineage(spec, workdir=tmp_path)
    last = result.levels[-1]
    assert last.level < 6
    fractions = connected_fractions(_level(result, last.level).masks)
    assert min(fractions.values()) <= 0.5
    for lv in result.levels[:-1]:
        assert min(connected_fractions(_level(result, lv.level).masks).values()) > 0.5
    assert (tmp_path / layout.stopped(result.lineage_id)).exists()
    assert final_level(tmp_path, spec) == last.level
    again = run_lineage(spec, workdir=tmp_path)
    assert [lv.level for lv in again.levels] == [lv.level for lv in result.levels]


def test_conv_lineage_trains_channels_last_and_resumes_bit_identically(tiny_spec, tmp_path, digest):
    """Convolutional models train in NHWC on CPU too (the fast oneDNN layout); a lineage cut
    mid-level resumes to the same weights, and its checkpoints load into a plain model."""
    from trainables.models import build_model

    spec = tiny_spec(model="conv2", train={"epochs": 2}, prune={"levels": 1})
    probe = LineageRun(spec, workdir=tmp_path / "probe", device=CPU)
    assert probe.channels_last
    assert probe.model.get_parameter("conv1.weight").is_contiguous(memory_format=torch.channels_last)
    whole = run_lineage(spec, workdir=tmp_path / "whole")
    _cut(spec, tmp_path / "cut", level=1, epoch=1)
    resumed = run_lineage(spec, workdir=tmp_path / "cut")
    assert digest(_level(resumed, 1).model) == digest(_level(whole, 1).model)
    plain = build_model("conv2", input_shape=(1, 8, 8), num_classes=10)
    plain.load_state_dict(_level(whole, 1).model)
    assert plain.get_parameter("conv1.weight").is_contiguous()


def test_precision_is_a_runtime_field_resolved_per_device(tiny_spec):
    from trainables.loop import resolve_precision

    assert len({lineage_id(tiny_spec(precision=p)) for p in ("auto", "fp32", "bf16")}) == 1
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValidationError, match="precision") as info:
        tiny_spec(precision="fp16")
    assert "'auto', 'fp32' or 'bf16'" in str(info.value)
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16', 'fp32'\]; got 'fp16'"):
        resolve_precision("fp16", torch.device("cpu"))


def test_bf16_lineage_records_its_precision_and_resumes_bit_identically(tiny_spec, tmp_path, digest):
    """A bf16 lineage on CPU: forward passes in bf16 autocast (weights, gradients and optimizer
    state stay fp32), so it differs from the fp32 lineage but not by much; every checkpoint and
    level result says which precision made it, and a cut lineage resumes to the same weights."""
    spec = tiny_spec(precision="bf16", train={"epochs": 3})
    whole = run_lineage(spec, workdir=tmp_path / "whole")
    exact = run_lineage(tiny_spec(train={"epochs": 3}), workdir=tmp_path / "fp32")
    assert [lv.precision for lv in whole.levels] == ["bf16"] * 3
    assert [lv.precision for lv in exact.levels] == ["fp32"] * 3
    bf16, fp32 = _level(whole, 2), _level(exact, 2)
    assert (bf16.precision, fp32.precision) == ("bf16", "fp32")
    assert all(t.dtype == torch.float32 for t in bf16.model.values())
    assert digest(bf16.model) != digest(fp32.model)
    assert whole.levels[2].metrics["test_acc"] == pytest.approx(exact.levels[2].metrics["test_acc"], abs=0.05)
    _cut(spec, tmp_path / "cut", level=1, epoch=2)
    assert LocalStore(tmp_path / "cut").load_torch(layout.progress(whole.lineage_id))["precision"] == "bf16"
    resumed = run_lineage(spec, workdir=tmp_path / "cut")
    assert digest(_level(resumed, 2).model) == digest(bf16.model)
    assert [lv.precision for lv in resumed.levels] == ["bf16"] * 3  # read back (L00) and trained


@pytest.mark.parametrize("cut", [True, False], ids=["mid_level", "between_levels"])
def test_a_lineage_resumes_only_in_its_own_precision(tiny_spec, tmp_path, cut):
    spec = tiny_spec(precision="bf16", train={"epochs": 3})
    if cut:
        _cut(spec, tmp_path, level=1, epoch=1)
    else:  # killed right after level 0 was written; the level's own record must suffice
        def stop(result):
            raise _Stop

        with pytest.raises(_Stop):
            run_lineage(spec, workdir=tmp_path, on_level=stop)
        assert LineageCheckpoints(tmp_path, lineage_id(spec)).complete_levels() == [0]
        (tmp_path / layout.progress(lineage_id(spec))).unlink()
    refused = (f"lineage {lineage_id(spec)} was trained with precision 'bf16' and cannot be resumed with 'fp32'"
               ".*set precision: bf16")
    for other in ("fp32", "auto"):  # auto is fp32 on CPU
        with pytest.raises(ValueError, match=refused):
            run_lineage(spec.model_copy(update={"precision": other}), workdir=tmp_path)
    assert [lv.level for lv in run_lineage(spec, workdir=tmp_path).levels] == [0, 1, 2]


def _garble(path) -> None:
    """Flip bytes in the middle of a file, keeping its size (what a bad disk or copy does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def test_damaged_checkpoints_are_found_set_aside_and_computed_again(tiny_spec, tmp_path, digest):
    spec = tiny_spec(train={"epochs": 3})
    whole = run_lineage(spec, workdir=tmp_path / "whole")
    _cut(spec, tmp_path / "cut", level=2, epoch=2)
    cut, stored = tmp_path / "cut", LineageCheckpoints(tmp_path / "cut", whole.lineage_id)
    assert stored.verified_levels() == [0, 1]
    _garble(cut / layout.level_dir(whole.lineage_id, 1) / "state.pt")
    for key in (layout.progress(whole.lineage_id), layout.rewind_point(whole.lineage_id)):
        _garble(cut / key)
    assert stored.complete_levels() == [0, 1] and stored.verified_levels() == [0]  # what status trusts
    with pytest.warns(UserWarning, match="damaged checkpoint set aside") as warned:
        resumed = run_lineage(spec, workdir=tmp_path / "cut")
    assert len(warned) == 3
    assert [lv.resumed for lv in resumed.levels] == [True, False, False]
    assert digest(_level(resumed, 2).model) == digest(_level(whole, 2).model)
    assert digest(_level(resumed, 1).model) == digest(_level(whole, 1).model)
    names = {p.name for p in (cut / layout.lineage_dir(whole.lineage_id)).iterdir()}
    assert {"L01.corrupt", "progress.pt.corrupt", "rewind.pt.corrupt"} <= names
    assert stored.verified_levels() == [0, 1, 2]


def test_a_level_written_before_digests_is_trusted_when_it_loads(tiny_spec, tmp_path):
    result = run_lineage(tiny_spec(prune={"levels": 1}), workdir=tmp_path)
    metrics = tmp_path / layout.level_dir(result.lineage_id, 1) / "metrics.json"
    record = json.loads(metrics.read_text())
    del record["state_sha256"]
    metrics.write_text(json.dumps(record))
    stored = LineageCheckpoints(tmp_path, result.lineage_id)
    assert stored.verified_levels() == [0, 1]
    (tmp_path / layout.level_dir(result.lineage_id, 1) / "state.pt").write_bytes(b"garbage")
    assert stored.verified_levels() == [0]
