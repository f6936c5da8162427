"""One-shot and iterative (cubic) schedules around any method (edgeprune/pruning/schedule.py)."""

import itertools

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from edgeprune.errors import InputError
from edgeprune.pruning import (
    PruneSpec,
    apply_masks,
    masks_from_model,
    prune,
    replay_plan,
    sparsity_report,
)
from edgeprune.pruning import base
from edgeprune.pruning.base import Method, register
from edgeprune.pruning.schedule import targets

from .tiny import mlp


X_MLP = torch.randn(1, 64)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def train(model, x, y, epochs, masks=None, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if masks is not None:
                apply_masks(model, masks)
    model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Recorder:
    """A fine-tune callback that trains nothing and remembers how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, masks, share):
        self.calls.append((None if masks is None else {k: v.clone() for k, v in masks.items()}, share))


def test_cubic_targets_rise_fast_then_slow_and_end_at_the_goal():
    ts = targets(PruneSpec(sparsity=0.8, schedule="iterative", steps=4))
    assert ts[-1] == pytest.approx(0.8)
    assert ts == sorted(ts)
    gains = [b - a for a, b in zip([0.0] + ts, ts)]
    assert gains == sorted(gains, reverse=True)
    assert targets(PruneSpec(sparsity=0.3)) == [0.3]


def test_oneshot_prunes_once_and_gives_the_whole_finetune_budget():
    model = mlp()
    rec = Recorder()
    result = prune(model, PruneSpec(sparsity=0.6), X_MLP, finetune=rec)
    assert [share for _, share in rec.calls] == [1.0]
    assert len(result.steps) == 1 and result.plan == []
    assert result.steps[0].achieved == pytest.approx(0.6, abs=1e-3)
    assert sparsity_report(model, X_MLP).sparsity == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_iterative_finetunes_n_times_and_masks_only_shrink(scope):
    model = mlp()
    rec = Recorder()
    spec = PruneSpec(sparsity=0.9, schedule="iterative", steps=5, scope=scope)
    result = prune(model, spec, X_MLP, finetune=rec)
    assert len(rec.calls) == 5
    assert sum(share for _, share in rec.calls) == pytest.approx(1.0)
    for (before, _), (after, _) in itertools.pairwise(rec.calls):
        assert all(torch.all(after[k] <= before[k]) for k in before)
    assert [s.achieved for s in result.steps] == sorted(s.achieved for s in result.steps)
    assert result.steps[-1].achieved == pytest.approx(0.9, abs=2e-3)
    assert all(torch.equal(result.masks[k], masks_from_model(model)[k]) for k in result.masks)


def test_masks_only_shrink_even_when_scores_reshuffle(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    draws = itertools.count()

    @register
    class Fickle(Method):
        name = "test-fickle"

        def score(self, model, stats):  # a new random ranking at every step
            gen = torch.Generator().manual_seed(next(draws))
            return {n: torch.rand(m.weight.shape, generator=gen)
                    for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    rec = Recorder()
    prune(mlp(), PruneSpec(method="test-fickle", sparsity=0.8, schedule="iterative", steps=4), X_MLP, finetune=rec)
    for (before, _), (after, _) in itertools.pairwise(rec.calls):
        assert all(torch.all(after[k] <= before[k]) for k in before)


def test_iterative_with_real_finetuning_keeps_pruned_weights_zero(digits):
    xtr, ytr, xte, yte = digits
    model = mlp()
    train(model, xtr, ytr, epochs=20)
    dense_acc = accuracy(model, xte, yte)
    assert dense_acc > 0.9

    def finetune(model, masks, share):
        train(model, xtr, ytr, epochs=max(1, round(30 * share)), masks=masks, lr=3e-3)

    spec = PruneSpec(sparsity=0.8, schedule="iterative", steps=3)
    result = prune(model, spec, xtr[:1], finetune=finetune)
    for name, layer in dict(model.named_modules()).items():
        if name in result.masks:
            assert torch.all(layer.weight[~result.masks[name]] == 0)
    assert sparsity_report(model, xtr[:1]).sparsity == pytest.approx(0.8, abs=2e-3)
    assert accuracy(model, xte, yte) > dense_acc - 0.05


def test_channel_schedule_accumulates_a_replayable_plan(digits):
    xtr, ytr, _, _ = digits
    model = mlp()
    rec = Recorder()
    spec = PruneSpec(sparsity=0.5, granularity="channel", schedule="iterative", steps=3, round_to=1, scope="layer")
    dense = sparsity_report(model, X_MLP).total
    result = prune(model, spec, X_MLP, finetune=rec)
    assert result.masks is None and [m for m, _ in rec.calls] == [None] * 3
    assert len({step["layer"] for step in result.plan}) == 2 and len(result.plan) >= 3
    assert 1 - sparsity_report(model, X_MLP).total / dense == pytest.approx(0.5, abs=0.03)
    assert result.steps[-1].achieved == pytest.approx(1 - sparsity_report(model, X_MLP).total / dense)
    assert model[4].out_features == 10

    fresh = mlp(seed=9)
    replay_plan(fresh, X_MLP, result.plan)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(xtr[:16]), model(xtr[:16]))


def test_channel_macs_budget_is_measured_against_the_original_model():
    model = mlp()
    dense = sparsity_report(model, X_MLP).macs
    spec = PruneSpec(sparsity=0.6, granularity="channel", budget="macs", schedule="iterative", steps=2, round_to=1)
    result = prune(model, spec, X_MLP)
    assert 1 - sparsity_report(model, X_MLP).macs / dense == pytest.approx(0.6, abs=0.03)
    assert result.steps[-1].achieved == pytest.approx(0.6, abs=0.03)


def test_zero_sparsity_changes_nothing():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, PruneSpec(sparsity=0.0, granularity="channel"), X_MLP)
    assert result.plan == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_spec_is_rejected_before_anything_is_touched():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError):
        prune(model, PruneSpec(sparsity=1.2), X_MLP)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_coarse_round_to_miss_is_reported_not_hidden():
    model = mlp()
    dense = sparsity_report(model, X_MLP).total
    spec = PruneSpec(sparsity=0.3, granularity="channel", round_to=8)  # widths 32/16 move in steps of 8
    with pytest.warns(UserWarning, match="round_to=8"):
        result = prune(model, spec, X_MLP)
    reached = 1 - sparsity_report(model, X_MLP).total / dense
    assert abs(reached - 0.3) > 0.02
    assert result.steps[-1].achieved == pytest.approx(reached)
    assert model[0].out_features % 8 == 0 and model[2].out_features % 8 == 0
