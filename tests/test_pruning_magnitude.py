"""Magnitude and random methods, the registry and PruneSpec validation."""

import pytest
import torch

from edgeprune.errors import EdgepruneError, InputError, UnknownNameError
from edgeprune.pruning import PruneSpec, available_methods, get_method, select
from edgeprune.pruning import base
from edgeprune.pruning.base import Method, register

from .tiny import mlp


def test_builtin_methods_are_registered():
    assert {"magnitude", "random"} <= set(available_methods())


def test_unknown_method_names_the_available_ones():
    with pytest.raises(UnknownNameError, match="available: .*magnitude.*random"):
        get_method("magnitud")


def test_magnitude_scores_every_prunable_weight_by_abs_value():
    model = mlp()
    scores = get_method("magnitude").score(model, None)
    assert list(scores) == ["0", "2", "4"]
    assert torch.equal(scores["0"], model[0].weight.detach().abs())


def test_magnitude_pruning_keeps_the_largest_weights():
    model = mlp()
    masks = select(get_method("magnitude").score(model, None), 0.75, "layer")
    for name, mask in masks.items():
        w = dict(model.named_modules())[name].weight.detach().abs()
        assert w[mask].min() >= w[~mask].max()


def test_random_is_reproducible_per_seed_and_differs_from_magnitude():
    model = mlp()
    a = select(get_method("random", seed=1).score(model, None), 0.5, "global")
    b = select(get_method("random", seed=1).score(model, None), 0.5, "global")
    c = select(get_method("random", seed=2).score(model, None), 0.5, "global")
    mag = select(get_method("magnitude").score(model, None), 0.5, "global")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    overlap = sum(int((a[n] & mag[n]).sum()) for n in a) / sum(int(mag[n].sum()) for n in mag)
    assert overlap < 0.7  # chance level is 0.5; magnitude with itself would be 1.0


def test_a_new_method_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # leave the real registry as it was

    @register
    class Negative(Method):
        name = "test-negative"

        def score(self, model, stats):
            return {n: -s for n, s in get_method("magnitude").score(model, stats).items()}

    assert "test-negative" in available_methods()
    model = mlp()
    masks = select(get_method("test-negative").score(model, None), 0.5, "layer")
    w = model[0].weight.detach().abs()
    assert w[masks["0"]].max() <= w[~masks["0"]].min()


def test_default_spec_is_valid():
    PruneSpec().validate()
    PruneSpec(granularity="channel", budget="macs", schedule="iterative", steps=3, round_to=1).validate()


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"method": "nope"}, UnknownNameError),
        ({"sparsity": 1.0}, InputError),
        ({"sparsity": -0.01}, InputError),
        ({"sparsity": float("nan")}, InputError),
        ({"sparsity": "0.5"}, InputError),
        ({"granularity": "block"}, InputError),
        ({"scope": "local"}, InputError),
        ({"schedule": "linear"}, InputError),
        ({"steps": 0}, InputError),
        ({"budget": "flops"}, InputError),
        ({"budget": "macs"}, InputError),  # zeroed weights do not cut MACs
        ({"round_to": 0}, InputError),
    ],
)

def test_bad_spec_values_raise_user_errors(changes, error):
    with pytest.raises(error) as info:
        PruneSpec(**changes).validate()
    assert isinstance(info.value, EdgepruneError)
    assert "\n" not in str(info.value)
