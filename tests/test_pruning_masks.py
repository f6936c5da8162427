"""Keep-masks and sparsity accounting (edgeprune/pruning/masks.py)."""

import json

import pytest
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.pruning.masks import (
    apply_masks,
    masks_from_model,
    prunable_layers,
    select,
    sparsity_report,
)

from .tiny import mlp


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs() for n, m in prunable_layers(model).items()}


def removed(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def test_prunable_layers_are_conv_and_linear_and_can_drop_the_classifier():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    assert list(prunable_layers(model)) == ["0", "3"]
    assert list(prunable_layers(model, exclude_output=True)) == ["0"]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_global_select_removes_exactly_round_s_times_d(sparsity):
    scores = magnitude_scores(mlp())
    d = sum(s.numel() for s in scores.values())
    masks = select(scores, sparsity, "global")
    assert removed(masks) == round(sparsity * d)
    assert all(masks[n].shape == scores[n].shape and masks[n].dtype == torch.bool for n in scores)


def test_global_select_removes_the_lowest_scores_across_layers():
    scores = magnitude_scores(mlp())
    masks = select(scores, 0.6, "global")
    kept = torch.cat([s[masks[n]] for n, s in scores.items()])
    dropped = torch.cat([s[~masks[n]] for n, s in scores.items()])
    assert dropped.max() <= kept.min()


def test_layer_scope_gives_every_layer_the_same_fraction():
    scores = magnitude_scores(mlp())
    masks = select(scores, 0.7, "layer")
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.7 * mask.numel()), name


def test_ties_are_broken_the_same_way_every_time():
    scores = {"a": torch.ones(4, 5), "b": torch.ones(3, 5)}
    first = select(scores, 0.5, "global")
    second = select({k: v.clone() for k, v in scores.items()}, 0.5, "global")
    assert removed(first) == round(0.5 * 35)
    assert all(torch.equal(first[k], second[k]) for k in scores)


def test_global_select_never_empties_a_layer():
    # one layer scores far below the other: a plain global threshold would wipe it out
    scores = {"small": torch.full((4, 4), 1e-6), "big": torch.rand(16, 16) + 1.0}
    masks = select(scores, 0.5, "global")
    assert masks["small"].sum() >= 1
    assert removed(masks) == round(0.5 * (16 + 256))


def test_select_rejects_bad_values():
    scores = magnitude_scores(mlp())
    with pytest.raises(InputError):
        select(scores, 1.0, "global")
    with pytest.raises(InputError):
        select(scores, -0.1, "layer")
    with pytest.raises(InputError):
        select(scores, 0.5, "per-channel")


def test_apply_masks_keeps_zeros_through_training_when_reapplied():
    model = mlp()
    masks = select(magnitude_scores(model), 0.8, "global")
    apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        apply_masks(model, masks)
    for name, layer in prunable_layers(model).items():
        assert torch.all(layer.weight[~masks[name]] == 0), name
        # the kept weights did train
        assert torch.count_nonzero(layer.weight[masks[name]]) == int(masks[name].sum())
    recovered = masks_from_model(model)
    assert all(torch.equal(recovered[n], masks[n]) for n in masks)


def test_apply_masks_rejects_masks_for_another_model():
    model = mlp()
    with pytest.raises(InputError):
        apply_masks(model, {"nope": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(InputError):
        apply_masks(model, {"0": torch.ones(3, 3, dtype=torch.bool)})


def test_sparsity_report_counts_zeros_params_and_dense_macs():
    model = mlp()
    x = torch.randn(8, 64)
    dense = sparsity_report(model, x)
    assert dense.total == 64 * 32 + 32 * 16 + 16 * 10
    assert dense.nonzero == dense.total and dense.sparsity == 0.0
    assert dense.params_total == sum(p.numel() for p in model.parameters())
    assert dense.macs >= dense.total  # at least one multiply-add per weight, per sample

    apply_masks(model, select(magnitude_scores(model), 0.5, "global"))
    sparse = sparsity_report(model, x)
    assert sparse.sparsity == pytest.approx(0.5, abs=1 / dense.total)
    assert [layer.name for layer in sparse.layers] == ["0", "2", "4"]
    assert sparse.params_total - sparse.params_nonzero == dense.total - sparse.nonzero
    # zeros are still executed: MACs do not move
    assert sparse.macs == dense.macs
    data = json.loads(json.dumps(sparse.to_dict()))
    assert data["sparsity"] == pytest.approx(sparse.sparsity)
    assert data["layers"][0]["shape"] == [32, 64]
    assert 0 < data["layers"][0]["sparsity"] < 1


def test_masked_weights_are_positive_zeros_so_files_compress_well():
    model = mlp()
    masks = select({n: m.weight.detach().abs() for n, m in prunable_layers(model).items()}, 0.8, "global")
    apply_masks(model, masks)
    for layer in prunable_layers(model).values():
        zeros = layer.weight.detach()[layer.weight.detach() == 0]
        assert zeros.numel() and not torch.signbit(zeros).any()   # no -0.0 anywhere
