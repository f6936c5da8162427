"""The default fine-tune rate is found on the pruned model: a short run at each rate of a grid, the
lowest validation loss kept. A rate too high for a real CNN loses the probe, and the probe's verdict
is the fine-tune's."""

from __future__ import annotations

import copy

import torch

from edgeprune import api
from edgeprune.lr_probe import GRID, probe
from edgeprune.model_io import load_model
from edgeprune.pruning.base import PruneSpec
from edgeprune.pruning.schedule import prune
from edgeprune.training import TrainConfig, evaluate, finetune_lr, train

TOO_HIGH = 2e-2   # 10x the weight-granularity rate: a constant that would do on a tiny MLP


def test_a_too_high_constant_loses_the_probe_on_a_cnn(lenet5_ckpt, fmnist_small):
    loaded = load_model(lenet5_ckpt)
    model = loaded.model
    prune(model, PruneSpec(method="magnitude", granularity="channel", sparsity=0.5), loaded.example_input)
    tr, val = fmnist_small.train_val()
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu")
    before = copy.deepcopy(model.state_dict())
    choice = probe(model, tr, val, cfg, None, [TOO_HIGH, 5e-4], steps=10)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the probe trains copies
    assert choice.lr == 5e-4 and choice.scores[f"{TOO_HIGH:g}"] > choice.scores["0.0005"] + 0.5
    # a real fine-tune agrees with the probe: the rejected rate ends lower on the validation split
    acc = {}
    for lr in (TOO_HIGH, 5e-4):
        m = copy.deepcopy(model)
        train(m, tr, TrainConfig(epochs=1, lr=lr, batch_size=64), progress=False)
        acc[lr] = evaluate(m, val)
    assert acc[5e-4] > acc[TOO_HIGH] + 20.0


def test_compress_records_and_prints_how_the_rate_was_chosen(tmp_path, capsys):
    from edgeprune.cli import main

    m = tmp_path / "m.pt"
    api.train("zoo:lenet300", m, data=api.DataOptions("digits"), epochs=2, progress=False)
    assert main(["compress", str(m), "--data", "digits", "--finetune-epochs", "1", "-o", str(tmp_path / "p.pt")]) == 0
    assert "(probe: lowest validation loss of 4 rates after" in " ".join(capsys.readouterr().out.split())
    choice = torch.load(tmp_path / "p.pt", weights_only=True)["meta"]["finetune_lr_choice"]
    grid = {f"{finetune_lr('weight') * k:g}" for k in GRID}
    assert choice["how"] == "probe" and set(choice["scores"]) == grid
    assert f"{choice['lr']:g}" == min(choice["scores"], key=choice["scores"].get)
    r = api.compress(m, PruneSpec(method="magnitude", sparsity=0.5), tmp_path / "q.pt", lr=1e-4, finetune_epochs=0.5,
                     data=api.DataOptions("digits"), progress=False)
    assert (r.finetune_lr, r.finetune_lr_how) == (1e-4, "--lr")
