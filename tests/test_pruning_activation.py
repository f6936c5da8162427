"""Activation-based pruning (edgeprune/pruning/activation.py) and its gated schedule (gated.py)."""

import copy
import json

import pytest
import torch
from torch import nn

from edgeprune import api
from edgeprune.cli import main
from edgeprune.model_io import load_model
from edgeprune.pruning import PruneSpec, apply_masks, get_method, prunable_layers, select
from edgeprune.pruning.activation import ActivationCounter
from edgeprune.pruning.gated import _consumers, compact, cycle_fractions, gates, removable_units, retire_dead_units
from edgeprune.zoo import LeNet5


@pytest.fixture(scope="module")
def trained(lenet300_ckpt, fmnist_small):
    """The session's LeNet-300-100 (trained on real Fashion-MNIST) and 512 real training images."""
    tr, _ = fmnist_small.train_val()
    return load_model(lenet300_ckpt).model, torch.from_numpy(tr.x[:512])


def test_counters_match_a_hand_count_on_real_data(trained):
    model, x = trained
    freqs = get_method("activation").collect(model, [x[:256], x[256:]])
    with torch.no_grad():
        h1 = torch.relu(model[1](model[0](x)))
        h2 = torch.relu(model[3](h1))
    assert torch.equal((freqs["1"] * 512).round().long(), (h1 != 0).sum(0))
    assert torch.equal((freqs["3"] * 512).round().long(), (h2 != 0).sum(0))
    assert "5" not in freqs   # the output layer is never scored
    assert 0 < float(freqs["1"].mean()) < 1


def test_inactive_count_inverts_the_ranking(trained):
    model, x = trained
    active = get_method("activation", score="neuron").collect(model, [x])
    inactive = get_method("activation", score="neuron", count="inactive").collect(model, [x])
    assert torch.allclose(active["3"] + inactive["3"], torch.ones(100, dtype=torch.float64))
    # pruning the lowest half of layer 3's neurons: the paper drops the least active, the later code the most
    for count in ("active", "inactive"):
        method = get_method("activation", score="neuron", count=count, min_neurons=1)
        masks = select(method.score(model, method.collect(model, [x])), 0.5, "layer")
        gone, kept = ~masks["3"].any(1), masks["3"].any(1)
        assert int(gone.sum()) >= 49
        if count == "active":
            assert active["3"][gone].max() <= active["3"][kept].min()
        else:
            assert active["3"][gone].min() >= active["3"][kept].max()


def test_neuron_scores_are_per_neuron_and_neuron_wts_scale_by_magnitude(trained):
    model, x = trained
    neuron = get_method("activation", score="neuron", min_neurons=1)
    wts = get_method("activation", score="neuron_wts", min_neurons=1)
    freqs = neuron.collect(model, [x])
    s_n, s_w = neuron.score(model, freqs), wts.score(model, freqs)
    w = model[3].weight.detach().abs().double()
    finite = torch.isfinite(s_w["3"])   # the protected skeleton is +inf
    assert torch.allclose(s_w["3"][finite], (freqs["3"][:, None] * w)[finite])
    rows = s_n["3"].masked_fill(~torch.isfinite(s_n["3"]), 0)
    assert torch.all((rows == freqs["3"][:, None]) | ~torch.isfinite(s_n["3"]))
    # neuron scores prune whole neurons; neuron_wts leaves every neuron some weights at 50 %
    m_n = select(s_n, 0.5, "layer")["3"]
    m_w = select(s_w, 0.5, "layer")["3"]
    partial = lambda m: int((m.any(1) & ~m.all(1)).sum())
    assert partial(m_n) <= 2 and int((~m_n.any(1)).sum()) >= 45
    assert partial(m_w) > 50


def test_cycle_amounts_and_gates_match_the_paper_table():
    # METHODS.md's 17.14 is 21.42 * 0.8 from rounded values; the formula gives 17.135
    table = lambda n, total: [100 * p for p in cycle_fractions(n, total)]
    assert table(5, 0.90) == pytest.approx([26.77, 21.42, 17.14, 13.71, 10.97], abs=0.006)
    assert table(5, 0.80) == pytest.approx([23.80, 19.04, 15.23, 12.19, 9.75], abs=0.006)
    assert table(10, 0.90)[:3] == pytest.approx([20.17, 16.13, 12.91], abs=0.006)
    assert sum(cycle_fractions(10, 0.85)) == pytest.approx(0.85)
    assert [round(g, 3) for g in gates(5, 0.98)] == [0.8, 0.836, 0.872, 0.908, 0.944]
    assert round(gates(10, 0.98)[-1], 3) == 0.962


def test_dead_neurons_are_removed_with_outputs_unchanged_and_a_smaller_onnx(trained):
    dense, x = trained
    model = copy.deepcopy(dense)
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}
    with torch.no_grad():
        model[1].bias[:40] = torch.linspace(-0.5, 0.5, 40)   # dead neurons with constant outputs 0 ... 0.5
    masks["1"][:40] = False          # 40 neurons of layer 1 lose every incoming weight
    masks["3"][:, 100:160] = False   # 60 more lose every outgoing weight
    masks["3"][:30] = False          # and 30 of layer 3 lose their inputs
    apply_masks(model, masks)
    with torch.no_grad():
        before = model(x)
    hidden = prunable_layers(model, exclude_output=True)
    links = _consumers(model, x[:1], hidden)
    retire_dead_units(model, masks, x[:64], links)
    plan, new_masks = compact(model, masks, x[:1], removable_units(masks, links))
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    assert model[1].out_features == 300 - 100 and model[3].out_features == 70
    assert {n: tuple(m.shape) for n, m in new_masks.items()} == {
        n: tuple(m.weight.shape) for n, m in prunable_layers(model).items()}
    params = lambda m: sum(p.numel() for p in m.parameters())
    assert params(model) < 0.7 * params(dense)
    assert [p["layer"] for p in plan] == ["1", "3"]


def test_global_threshold_never_collapses_a_layer(trained):
    model, x = trained
    method = get_method("activation", score="neuron")
    freqs = method.collect(model, [x])
    freqs["3"] = torch.zeros_like(freqs["3"])   # worst case: every neuron of layer 3 looks silent
    masks = select(method.score(model, freqs), 0.97, "global")
    alive_in = masks["3"].any(1)
    assert int(alive_in.sum()) >= 10                       # min_neurons of layer 3 keep an input ...
    assert masks["1"][:, :].any(1)[masks["3"][alive_in].any(0)].all()   # ... from live layer-1 neurons
    assert int(masks["1"].any(1).sum()) >= 10


def test_conv_counts_per_channel_position_and_batchnorm_probe(fmnist_small):
    tr, _ = fmnist_small.train_val()
    x = torch.from_numpy(tr.x[:128])
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 26 * 26, 10)).eval()
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-0.3, 0.3)
    counter = ActivationCounter(cnn, x[:1])
    counter.count(cnn, [x])
    counter.remove()
    with torch.no_grad():
        a1 = torch.relu(cnn[1](cnn[0](x)))
        a2 = torch.relu(cnn[3](a1))
    assert torch.equal(counter.active["0"], (a1 > 0).sum((0, 2, 3)))   # through the BatchNorm
    assert torch.equal(counter.active["3"], (a2 > 0).sum((0, 2, 3)))
    assert counter.chances["0"] == 128 * 28 * 28
    scores = get_method("activation").score(cnn, counter.frequencies())
    assert scores["0"].shape == cnn[0].weight.shape and "6" not in scores


def test_gated_schedule_on_a_cnn_compacts_and_reloads(tmp_path, fmnist_small):
    data = api.DataOptions("fashion-mnist", limit=600, test_limit=200)
    dense = tmp_path / "lenet5.pt"
    api.train("zoo:lenet5", dense, data=data, epochs=1, progress=False)
    r = api.compress(dense, PruneSpec(method="activation", sparsity=0.9, schedule="gated", steps=3), tmp_path / "p.pt",
                     data=data, finetune_epochs=0.5, progress=False)
    assert r.sparsity == pytest.approx(0.9, abs=0.02)
    loaded = load_model(tmp_path / "p.pt")
    assert isinstance(loaded.model, LeNet5)
    assert [L["shape"][0] for L in r.layers] == [m.weight.shape[0] for m in prunable_layers(loaded.model).values()]
    assert sum(L["shape"] != L["shape_before"] for L in r.layers) >= 2   # the Linear part shrank at least
    assert r.macs_after < r.macs_before


def test_cli_gated_compress_on_fashion_mnist(capsys, tmp_path, lenet300_ckpt):
    out = tmp_path / "act.pt"
    code = main(["compress", str(lenet300_ckpt), "--method", "activation", "--schedule", "gated", "--sparsity", "0.95",
                 "--score", "neuron_wts", "--finetune-epochs", "0.5", "--data", "fashion-mnist", "--limit", "2000",
                 "-o", str(out), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0
    assert r["sparsity"] == pytest.approx(0.95, abs=0.01)
    assert r["macs_after"] < 0.8 * r["macs_before"]        # dead neurons are gone, not just zero
    assert len(r["details"]["events"]) == 5 and r["details"]["epochs"] <= 0.5 + 1 / 15   # within one batch (15 a epoch)
    assert r["finetuned_val_accuracy"] > 50   # 10 classes: chance is 10 %
    loaded = load_model(out)     # base architecture + replayed plan + weights
    ckpt = loaded.checkpoint
    assert {n: tuple(m.shape) for n, m in ckpt.masks.items()} == {
        n: tuple(m.weight.shape) for n, m in prunable_layers(loaded.model).items()}
    assert [L["shape"] for L in r["layers"]][0][0] < 300

    code = main(["compress", str(lenet300_ckpt), "--method", "activation", "--schedule", "gated", "--scope", "local",
                 "--sparsity", "0.9", "--finetune-epochs", "0.25", "--data", "fashion-mnist", "--limit", "2000",
                 "-o", str(tmp_path / "local.pt"), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and [e["layer"] for e in r["details"]["events"]] == ["1", "3"]
    assert r["sparsity"] == pytest.approx(0.9, abs=0.02)


@pytest.mark.parametrize("argv, message", [
    (["--scope", "local", "--schedule", "oneshot"], "needs schedule 'gated'"),
    (["--granularity", "channel"], "it is method 'activation''s default: pass --schedule oneshot or iterative"),
    (["--schedule", "gated", "--score", "neurons"], "unknown activation score"),
    (["--schedule", "gated", "--count", "dead"], "unknown activation count"),
    (["--schedule", "gated", "--target-acc", "1.5"], "target accuracy"),
])
def test_cli_bad_activation_options(capsys, tmp_path, lenet300_ckpt, argv, message):
    code = main(["compress", str(lenet300_ckpt), "--method", "activation", *argv, "-o", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
