import numpy as np
import pytest
import torch

from edgeprune.data import load_dataset, train_val_split
from edgeprune.pruning.masks import masks_from_model
from edgeprune.errors import InputError
from edgeprune.training import TrainConfig, evaluate, make_optimizer, train
from edgeprune.zoo import build_zoo


def _digits():
    return train_val_split(load_dataset("digits", "train"))


def test_training_learns_digits_and_is_deterministic():
    tr, val = _digits()
    accs, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_zoo("lenet300", hidden=[64, 32], image_size=8)
        train(m, tr, TrainConfig(epochs=5, lr=1e-2, seed=1), progress=False)
        accs.append(evaluate(m, val))
        weights.append(m[1].weight.detach().clone())
    assert accs[0] > 85.0                      # chance is 10 %
    assert accs[0] == accs[1] and torch.equal(weights[0], weights[1])


def test_masks_stay_enforced_during_fine_tuning():
    tr, val = _digits()
    torch.manual_seed(0)
    m = build_zoo("lenet300", hidden=[64, 32], image_size=8)
    train(m, tr, TrainConfig(epochs=5, lr=1e-2), progress=False)
    with torch.no_grad():
        for layer in (m[1], m[3]):
            layer.weight[layer.weight.abs() < layer.weight.abs().median()] = 0
    masks = masks_from_model(m)
    zeros_before = sum(int((~k).sum()) for k in masks.values())
    train(m, tr, TrainConfig(epochs=2, lr=1e-2), masks=masks, progress=False)
    after = masks_from_model(m)
    assert sum(int((~k).sum()) for k in after.values()) >= zeros_before
    assert all(not (after[n] & ~masks[n]).any() for n in masks)   # nothing regrew
    assert evaluate(m, val) > 80.0


def test_fractional_epochs_run_that_share_of_batches():
    tr, _ = _digits()
    m = build_zoo("lenet300", hidden=[16, 8], image_size=8)
    log = train(m, tr, TrainConfig(epochs=0.5, batch_size=100), progress=False)
    assert log.steps == int(round(0.5 * np.ceil(len(tr) / 100)))


def test_l1_penalty_shrinks_weights():
    tr, _ = _digits()
    norms = []
    for l1 in (0.0, 1e-3):
        torch.manual_seed(0)
        m = build_zoo("lenet300", hidden=[32, 16], image_size=8)
        train(m, tr, TrainConfig(epochs=5, lr=1e-2, l1=l1), progress=False)
        norms.append(sum(float(p.abs().sum()) for n, p in m.named_parameters() if n.endswith("weight")))
    assert norms[1] < 0.8 * norms[0]


def test_sgd_with_momentum_and_a_constant_rate_learns_digits():
    """Zhang et al.'s recipe (SGD, momentum 0.9, constant lr): the optimizer the limit estimate is made for."""
    tr, val = _digits()
    torch.manual_seed(0)
    m = build_zoo("lenet300", hidden=[64, 32], image_size=8)
    cfg = TrainConfig(epochs=10, lr=0.05, optimizer="sgd", cosine=False)
    opt = make_optimizer(m.parameters(), cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    log = train(m, tr, cfg, progress=False)
    assert evaluate(m, val) > 85.0 and log.losses[-1] < log.losses[0]


def test_unknown_optimizer_is_an_input_error():
    with pytest.raises(InputError, match="unknown optimizer 'rmsprop'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="rmsprop"))
