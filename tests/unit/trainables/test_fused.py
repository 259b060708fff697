"""run_bundle: fused lineages equal separate ones, resume, modes, bundle checks; the stacked optimizer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import lineage_id, load_checkpoint, run_lineage
from trainables.checkpoints import LineageCheckpoints
from trainables.fastmask import MaskApplier
from trainables.fused import run_bundle
from trainables import layout
from trainables.storage import LocalStore
from trainables.loop import make_optimizer
from trainables.specs import TrainSpec
from trainables.stacked import StackedModel, StackedOptimizer, structure_of

WEIGHT_RTOL = 1e-5  # of the largest |value| of each tensor


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, x in a.items():
        if x.is_floating_point():
            x, y = x.double(), b[name].double()
            worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)))
    return worst


def _assert_same_as_separate(separate, fused, digest) -> None:
    assert [r.lineage_id for r in separate] == [r.lineage_id for r in fused]
    for a, b in zip(separate, fused):
        assert [lv.level for lv in a.levels] == [lv.level for lv in b.levels]
        for la, lb in zip(a.levels, b.levels):
            ca, cb = load_checkpoint(la.checkpoint_dir), load_checkpoint(lb.checkpoint_dir)
            assert (ca.fused, cb.fused) == (False, True)
            assert digest(ca.masks) == digest(cb.masks), f"masks of {lb.checkpoint_id} differ"
            assert _max_rel_diff(ca.model, cb.model) <= WEIGHT_RTOL, lb.checkpoint_id
            int_buffers = {n for n, t in ca.model.items() if not t.is_floating_point()}  # num_batches_tracked
            assert all(torch.equal(ca.model[n], cb.model[n]) for n in int_buffers)
            assert lb.metrics["test_acc"] == la.metrics["test_acc"]
            assert lb.metrics["sparsity"] == la.metrics["sparsity"]
            assert lb.metrics["train_loss"] == pytest.approx(la.metrics["train_loss"], rel=1e-5)


@pytest.mark.parametrize("overrides", [
    {},
    {"model": "fcn", "model_options": {"widths": [32, 16], "batchnorm": True}},
], ids=["lenet_300_100", "fcn_batchnorm"])
def test_bundle_equals_separate_lineages(tiny_spec, tmp_path, overrides, digest):
    specs = [tiny_spec(seed=seed, **overrides) for seed in range(3)]
    separate = [run_lineage(spec, workdir=tmp_path / "separate") for spec in specs]
    calls = []
    fused = run_bundle(specs, workdir=tmp_path / "fused", on_level=lambda r: calls.append((r.level, r.lineage_id)))
    _assert_same_as_separate(separate, fused, digest)
    assert calls == [(level, r.lineage_id) for level in range(3) for r in fused]


def test_bundle_equals_separate_with_gradual_ramp_and_schedule(tiny_spec, tmp_path, digest):
    specs = [tiny_spec(seed=seed, train={"nesterov": True, "weight_decay": 5e-4, "lr_schedule": "cosine"},
                       prune={"schedule": "gradual", "targets": [0.6], "gradual_every_steps": 3}) for seed in (4, 7)]
    separate = [run_lineage(spec, workdir=tmp_path / "separate") for spec in specs]
    _assert_same_as_separate(separate, run_bundle(specs, workdir=tmp_path / "fused"), digest)


class _Stop(Exception):
    pass


def _stop_at(level: int, epoch: int):
    def callback(at_level: int, at_epoch: int) -> None:
        if (at_level, at_epoch) == (level, epoch):
            raise _Stop
    return callback


def test_resume_mid_level_is_bit_identical(tiny_spec, tmp_path, digest):
    specs = [tiny_spec(seed=seed) for seed in (0, 1)]
    whole = run_bundle(specs, workdir=tmp_path / "whole")
    with pytest.raises(_Stop):
        run_bundle(specs, workdir=tmp_path / "cut", on_epoch=_stop_at(1, 1))
    for lineage in (r.lineage_id for r in whole):  # the progress checkpoints say fused too
        assert LocalStore(tmp_path / "cut").load_torch(layout.progress(lineage))["fused"] is True
    resumed = run_bundle(specs, workdir=tmp_path / "cut")
    for a, b in zip(whole, resumed):
        assert [lv.resumed for lv in b.levels] == [True, False, False]
        for la, lb in zip(a.levels, b.levels):
            ca, cb = load_checkpoint(la.checkpoint_dir), load_checkpoint(lb.checkpoint_dir)
            assert digest(ca.model) == digest(cb.model) and digest(ca.masks) == digest(cb.masks)
            assert lb.metrics["test_acc"] == la.metrics["test_acc"]


def test_a_lagging_lineage_catches_up(tiny_spec, tmp_path, digest):
    specs = [tiny_spec(seed=seed) for seed in (0, 1)]
    whole = run_bundle(specs, workdir=tmp_path / "whole")
    with pytest.raises(_Stop):
        run_bundle(specs, workdir=tmp_path / "cut", on_epoch=_stop_at(1, 1))
    # As if the process died after writing the first lineage's progress but before the second's.
    (tmp_path / "cut" / layout.progress(whole[1].lineage_id)).unlink()
    resumed = run_bundle(specs, workdir=tmp_path / "cut")
    for a, b in zip(whole, resumed):
        last_a, last_b = load_checkpoint(a.levels[-1].checkpoint_dir), load_checkpoint(b.levels[-1].checkpoint_dir)
        assert digest(last_a.masks) == digest(last_b.masks)
        assert _max_rel_diff(last_a.model, last_b.model) <= WEIGHT_RTOL


def test_a_lineage_resumes_only_in_its_own_mode(tiny_spec, tmp_path):
    unfused, fused = tiny_spec(seed=0), tiny_spec(seed=1)
    assert LineageCheckpoints(tmp_path, lineage_id(unfused)).trained_mode() is None
    with pytest.raises(_Stop):
        run_lineage(unfused, workdir=tmp_path, on_epoch=_stop_at(0, 1))  # leaves an unfused progress.pt
    assert LineageCheckpoints(tmp_path, lineage_id(unfused)).trained_mode() is False
    refused = f"lineage {lineage_id(unfused)} was trained unfused and cannot be resumed fused"
    with pytest.raises(ValueError, match=refused):
        run_bundle([fused, unfused], workdir=tmp_path)
    run_lineage(unfused, workdir=tmp_path)  # now complete levels say fused: False
    with pytest.raises(ValueError, match="trained unfused and cannot be resumed fused"):
        run_bundle([unfused], workdir=tmp_path)
    done = run_bundle([fused], workdir=tmp_path)
    assert LineageCheckpoints(tmp_path, done[0].lineage_id).trained_mode() is True
    # The check run_lineage needs before resuming: a fused lineage is not continued unfused.
    with pytest.raises(ValueError, match=f"{done[0].lineage_id} was trained fused and cannot be resumed unfused"):
        LineageCheckpoints(tmp_path, done[0].lineage_id).check_mode(fused=False)


@pytest.mark.parametrize("others,match", [
    ({"train": {"lr": 0.01}}, r"specs\[1\].train.lr=0.01 differs from specs\[0\].train.lr=0.05"),
    ({"model": "fcn"}, r"specs\[1\].model='fcn' differs from specs\[0\].model='lenet_300_100'"),
    ({"prune": {"control": "random_prune"}}, r"specs\[1\].prune.control='random_prune'"),
    ({"seed": 0}, r"specs\[1\].seed=0 repeats specs\[0\].seed"),
])
def test_specs_that_cannot_share_a_bundle_are_refused(tiny_spec, tmp_path, others, match):
    with pytest.raises(ValueError, match=match):
        run_bundle([tiny_spec(seed=0), tiny_spec(**{"seed": 1, **others})], workdir=tmp_path)
    assert not (tmp_path / "lineages").exists()


def test_an_empty_bundle_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one lineage spec"):
        run_bundle([], workdir=tmp_path)


@pytest.mark.parametrize("train", [
    TrainSpec(lr=0.1, momentum=0.9),
    TrainSpec(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    TrainSpec(lr=0.1, momentum=0.0, weight_decay=1e-3),
    TrainSpec(optimizer="adam", lr=1e-3, weight_decay=1e-4),
], ids=["sgd", "nesterov_wd", "plain_sgd", "adam"])
def test_stacked_optimizer_is_torch_optim_bit_for_bit(train, digest):
    """Given the same gradients, each lineage of the stack gets the engine's masked torch.optim step exactly,
    with per-lineage learning rates, and the same state_dict."""
    torch.manual_seed(0)
    n = 3

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(37, 19), nn.ReLU(), nn.Linear(19, 5))

    models, refs = [net() for _ in range(n)], [net() for _ in range(n)]
    for ref, model in zip(refs, models):
        ref.load_state_dict(model.state_dict())
    masks = [{name: torch.rand_like(p) > 0.3 for name, p in m.named_parameters() if p.ndim == 2} for m in models]
    optimizers = [make_optimizer(ref, train) for ref in refs]
    stack = StackedModel(models, structure_of(models[0]))
    group = make_optimizer(models[0], train).state_dict()["param_groups"][0]
    stacked = StackedOptimizer(stack.params, kind=train.optimizer, group=group, states=[None] * n)
    stacked.set_masks(masks)
    # the reference is the engine's own masked step (train_epoch): masks applied once, then the
    # pruned gradients zeroed before every torch.optim step
    appliers = [MaskApplier(ref, m) for ref, m in zip(refs, masks)]
    for applier, optimizer in zip(appliers, optimizers):
        applier(optimizer)
    for step in range(4):
        lrs = [train.lr * (step + 1) * (1 + k / 10) for k in range(n)] if step % 2 else [train.lr] * n
        grads = {name: torch.randn_like(p) for name, p in stack.params.items()}
        for name, p in stack.params.items():
            p.grad = grads[name].clone()
        stacked.step(lrs)
        for k, (ref, optimizer) in enumerate(zip(refs, optimizers)):
            for name, p in ref.named_parameters():
                p.grad = grads[name][k].clone()
            optimizer.param_groups[0]["lr"] = lrs[k]
            appliers[k].mask_grads(optimizer)
            optimizer.step()
    for k, (ref, model, optimizer) in enumerate(zip(refs, models, optimizers)):
        assert digest(ref.state_dict()) == digest(model.state_dict())  # the module is a view of its slice
        ours, theirs = stacked.state_dict(k, lrs[k]), optimizer.state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        assert ours["state"].keys() == theirs["state"].keys()
        for i, entry in theirs["state"].items():
            assert ours["state"][i].keys() == entry.keys()
            assert all(torch.equal(ours["state"][i][key], value) for key, value in entry.items())


def test_stacked_gradients_equal_separate_ones_in_float64():
    """The stacked model computes each lineage's exact gradient: in float64 the fused and
    separate gradients of a residual net with BatchNorm agree to round-off (in float32 they
    differ by ~1e-5 relative, the rounding of different convolution algorithms, which
    training then amplifies)."""
    import copy

    import torch.nn.functional as F

    from trainables.models import build_model

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        models = []
        for seed in range(3):
            torch.manual_seed(seed)
            models.append(build_model("resnet20", input_shape=(3, 8, 8), num_classes=10))
        separate = [copy.deepcopy(m) for m in models]
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(3, 16, 3, 8, 8, generator=gen), torch.randint(0, 10, (3, 16), generator=gen)
        stacked = StackedModel(models, structure_of(separate[0]))
        stacked.losses(x, y).sum().backward()
        for k, model in enumerate(separate):
            model.train()
            F.cross_entropy(model(x[k]), y[k]).backward()
            for name, p in model.named_parameters():
                scale = p.grad.abs().max().clamp_min(1e-300)
                assert float((p.grad - stacked.params[name].grad[k]).abs().max() / scale) < 1e-10, name
            for name, b in model.named_buffers():  # BatchNorm statistics, each from its own batch
                if b.is_floating_point():
                    assert torch.allclose(b, stacked.buffers[name][k], rtol=1e-12, atol=0), name
    finally:
        torch.set_default_dtype(previous)


def test_a_bf16_bundle_trains_in_bf16_and_resumes_only_so(tiny_spec, tmp_path):
    specs = [tiny_spec(seed=seed, precision="bf16") for seed in (0, 1)]
    fused = run_bundle(specs, workdir=tmp_path / "fused")
    separate = [run_lineage(spec, workdir=tmp_path / "separate") for spec in specs]
    exact = run_bundle([tiny_spec(seed=seed) for seed in (0, 1)], workdir=tmp_path / "fp32")
    for f, s, e in zip(fused, separate, exact):
        assert [lv.precision for lv in f.levels] == ["bf16"] * 3
        cf, cs, ce = (load_checkpoint(r.levels[-1].checkpoint_dir) for r in (f, s, e))
        assert (cf.fused, cf.precision, ce.precision) == (True, "bf16", "fp32")
        # bf16 rounds the stacked and the separate products differently, and the difference
        # grows through magnitude ties at pruning: the runs agree in accuracy, not to 1e-5.
        assert f.levels[-1].metrics["test_acc"] == pytest.approx(s.levels[-1].metrics["test_acc"], abs=0.05)
        assert 0 < _max_rel_diff(cs.model, cf.model)
    with pytest.raises(ValueError, match="was trained with precision 'bf16' and cannot be resumed with 'fp32'"):
        run_bundle([tiny_spec(seed=seed) for seed in (0, 1)], workdir=tmp_path / "fused")


def test_a_bundle_trains_in_one_precision(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match=r"specs\[1\].precision='bf16' differs from specs\[0\].precision='auto'"):
        run_bundle([tiny_spec(seed=0), tiny_spec(seed=1, precision="bf16")], workdir=tmp_path)
