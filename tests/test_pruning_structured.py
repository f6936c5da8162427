"""Physical channel removal and plan replay (edgeprune/pruning/structured.py)."""

import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import InputError
from edgeprune.pruning import get_method, prune_channels, replay_plan, sparsity_report
from edgeprune.pruning.structured import ScoreImportance

from .tiny import mlp


class TinyResNet(nn.Module):
    """CIFAR-style: stem, one residual block (BN, add), a strided conv, pooled Linear head."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        x = torch.relu(self.bn3(self.down(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    model = TinyResNet()
    # non-trivial BN statistics, so a wrong channel mapping shows in the outputs
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def prune(model, sparsity, scope="global", budget="params", round_to=8, method="magnitude", x=X):
    scores = get_method(method).score(model, None)
    return prune_channels(model, x, scores, sparsity, scope, budget, round_to)


def widths(model) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("budget", ["params", "macs"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_residual_model_hits_the_budget_and_still_runs(scope, budget):
    model = resnet()
    before = sparsity_report(model, X)
    plan = prune(model, 0.5, scope, budget)
    after = sparsity_report(model, X)

    achieved = 1 - after.total / before.total if budget == "params" else 1 - after.macs / before.macs
    assert achieved == pytest.approx(0.5, abs=0.06)  # steps of 8 channels on a 32/64-wide net
    assert after.macs < 0.75 * before.macs  # removed channels really cut the work
    assert after.sparsity == 0.0  # compacted, not zeroed
    assert model(X).shape == (2, 10)
    assert model.fc.out_features == 10
    for name, w in widths(model).items():
        if name != "fc":
            assert w % 8 == 0, (name, w)
    assert plan and all(step["dim"] == "out" and step["layer"] != "fc" for step in plan)
    # residual coupling: both sides of the add kept the same width
    assert model.stem.out_channels == model.conv2.out_channels == model.bn2.num_features


def test_round_to_one_allows_fine_budgets():
    model = resnet()
    before = sparsity_report(model, X).total
    prune(model, 0.37, "global", "params", round_to=1)
    assert 1 - sparsity_report(model, X).total / before == pytest.approx(0.37, abs=0.02)


def test_mlp_neurons_removed_but_classes_kept():
    model = mlp()
    x = torch.randn(4, 64)
    prune(model, 0.4, "layer", "params", round_to=1, x=x)
    assert model[0].in_features == 64 and model[4].out_features == 10
    assert model[0].out_features < 32 and model[2].out_features < 16
    assert model[2].in_features == model[0].out_features


def test_magnitude_removes_the_weakest_neurons():
    model = mlp()
    with torch.no_grad():
        model[0].weight[[3, 7, 11]] *= 1e-3  # three nearly dead neurons
    plan = prune(model, 0.2, "layer", "params", round_to=1, x=torch.randn(1, 64))
    dropped = next(step["idxs"] for step in plan if step["layer"] == "0")
    assert len(dropped) >= 3 and {3, 7, 11} <= set(dropped)


def test_layer_scope_shrinks_every_group_by_the_same_ratio():
    model = resnet()
    prune(model, 0.5, "layer", "params", round_to=1)
    ratios = [model.stem.out_channels / 32, model.conv1.out_channels / 32, model.down.out_channels / 64]
    assert max(ratios) - min(ratios) <= 1 / 32


def test_global_scope_takes_weak_channels_wherever_they_are_but_never_collapses_a_layer():
    model = resnet()
    with torch.no_grad():  # half of conv1's channels nearly dead: its outputs and what reads them
        model.conv1.weight[:16] *= 1e-3
        model.conv2.weight[:, :16] *= 1e-3
    prune(model, 0.2, "global", "params", round_to=1)
    assert 16 <= model.conv1.out_channels < 32
    assert (model.stem.out_channels, model.down.out_channels) == (32, 64)

    model = resnet()
    with torch.no_grad():
        model.conv1.weight[1:] *= 1e-3
        model.conv2.weight[:, 1:] *= 1e-3
    prune(model, 0.6, "global", "params", round_to=1)
    assert model.conv1.out_channels >= 4  # at most 90 % of a layer goes


def test_replayed_plan_rebuilds_the_pruned_model_exactly():
    pruned = resnet(seed=0)
    plan = prune(pruned, 0.5, "global", "macs")
    fresh = resnet(seed=123)  # same architecture, other weights
    replay_plan(fresh, X, plan)
    fresh.load_state_dict(pruned.state_dict())
    fresh.eval()
    pruned.eval()
    assert torch.equal(fresh(X), pruned(X))


def test_two_rounds_of_pruning_replay_in_order():
    pruned = resnet()
    plan = prune(pruned, 0.3, "layer", "params", round_to=1)
    plan += prune(pruned, 0.3, "global", "params", round_to=1)
    fresh = resnet(seed=5)
    replay_plan(fresh, X, plan)
    fresh.load_state_dict(pruned.state_dict())
    assert torch.equal(fresh(X), pruned(X))


def test_plan_is_json_able():
    import json

    plan = prune(resnet(), 0.5)
    assert json.loads(json.dumps(plan)) == plan


def test_replay_rejects_a_plan_for_another_model():
    with pytest.raises(InputError):
        replay_plan(resnet(), X, [{"layer": "nope", "dim": "out", "idxs": [0]}])
    with pytest.raises(InputError):
        replay_plan(resnet(), X, [{"layer": "conv1", "dim": "out", "idxs": [99]}])
    with pytest.raises(InputError):
        replay_plan(resnet(), X, [{"layer": "conv1", "dim": "in", "idxs": [0]}])


def test_unreachable_budget_is_a_user_error_and_leaves_the_model_alone():
    model = resnet()
    shapes = widths(model)
    with pytest.raises(InputError, match="out of reach"):
        prune(model, 0.995, "global", "params", round_to=8)
    assert widths(model) == shapes


def test_pruning_does_not_touch_batchnorm_statistics_of_a_training_model():
    model = resnet().train()
    kept_mean = model.bn1.running_mean.clone()
    plan = prune(model, 0.25, "layer", "params", round_to=1)
    dropped = {i for step in plan if step["layer"] == "conv1" for i in step["idxs"]}
    survivors = [i for i in range(32) if i not in dropped]
    assert torch.equal(model.bn1.running_mean, kept_mean[survivors])
    assert model.training


def test_score_importance_sums_squared_scores_over_the_coupled_group():
    model = resnet()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    scores = get_method("magnitude").score(model, None)
    mine = ScoreImportance(scores, model)
    # Torch-Pruning's own group L2 over Conv/Linear slices, summed, no normalisation = same thing
    reference = tp.importance.GroupMagnitudeImportance(
        p=2, group_reduction="sum", normalizer=None, target_types=[nn.Conv2d, nn.Linear])
    groups = list(graph.get_all_groups(ignored_layers=[model.fc], root_module_types=(nn.Conv2d, nn.Linear)))
    residual = [g for g in groups if any(item.dep.target.module is model.conv2 for item in g)]
    assert residual, "the residual group couples stem and conv2"
    for group in groups:
        torch.testing.assert_close(mine(group).float(), reference(group).float())
    # normalised: mean one per group, same ranking
    normed = ScoreImportance(scores, model, normalize=True)(residual[0])
    assert normed.mean().item() == pytest.approx(1.0)
    assert torch.equal(normed.argsort(), mine(residual[0]).argsort())


def test_set_widths_narrows_each_named_group_by_its_weakest_channels():
    from edgeprune.pruning.structured import channel_groups, set_widths

    model = resnet()
    # the residual add couples stem and conv2: one group, named by its root
    groups = channel_groups(model, X)
    assert sorted(groups.values()) == [32, 32, 64] and len(groups) == 3 and "fc" not in groups
    coupled = next(n for n in groups if n in ("stem", "conv2"))
    set_widths(model, X, {coupled: 16, "conv1": 24})
    w = widths(model)
    assert (w["stem"], w["conv2"], w["conv1"], w["down"]) == (16, 16, 24, 64) and model(X).shape == (2, 10)

    model = resnet()
    weight = model.conv1.weight.detach().clone()
    # a channel's norm spans its whole group: conv1's output slice and conv2's input slice
    energy = weight.pow(2).flatten(1).sum(1) + model.conv2.weight.detach().pow(2).sum(dim=(0, 2, 3))
    strongest = torch.sort(torch.sort(energy, stable=True).indices[8:]).values
    set_widths(model, X, {"conv1": 24})
    assert torch.equal(model.conv1.weight.detach(), weight[strongest])
    with pytest.raises(InputError, match="no channel group named 'fc'"):
        set_widths(resnet(), X, {"fc": 5})
