"""LOMP: L1 training, global one-shot magnitude masks, and --sparsity auto through the CLI (digits, tiny models)."""

import json

import pytest
import torch

from edgeprune.api import limit_notes
from edgeprune.cli import main
from edgeprune.data import load_dataset, train_val_split
from edgeprune.errors import InputError
from edgeprune.pruning import PruneSpec, prune
from edgeprune.pruning.lomp import check_spec
from edgeprune.training import TrainConfig, l1_penalty, train

from .tiny import mlp

DIGITS = ["--data", "digits"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def l1_ckpt(tmp_path_factory):
    """LeNet-300-100 on 8x8 digits (64-300-100-10), trained with the L1 penalty through the CLI."""
    out = tmp_path_factory.mktemp("lomp") / "l1.pt"
    assert main(["train", "--arch", "zoo:lenet300", *DIGITS, "--epochs", "3", "--lr", "3e-3", "--l1", "5e-5",
                 "-o", str(out), "--json"]) == 0
    return out


def test_lomp_masks_equal_global_magnitude():
    x = torch.zeros(1, 64)
    masks = {}
    for method in ("lomp", "magnitude"):
        m = mlp(seed=3)
        masks[method] = prune(m, PruneSpec(method=method, sparsity=0.73), x).masks
    assert masks["lomp"].keys() == masks["magnitude"].keys()
    assert all(torch.equal(masks["lomp"][k], masks["magnitude"][k]) for k in masks["lomp"])


def test_l1_penalty_covers_every_weight_and_bias():
    m = mlp()
    assert torch.isclose(l1_penalty(m), sum(p.abs().sum() for p in m.parameters()))
    # L1 training shrinks the biases too (the authors' term; pruning only touches weights)
    tr, _ = train_val_split(load_dataset("digits", "train"))
    norms = {}
    for l1 in (0.0, 1e-2):
        net = torch.nn.Sequential(torch.nn.Flatten(), mlp())
        train(net, tr, TrainConfig(epochs=2, lr=1e-2, l1=l1), progress=False)
        norms[l1] = sum(float(p.detach().abs().sum()) for n, p in net.named_parameters() if n.endswith("bias"))
    assert norms[1e-2] < 0.5 * norms[0.0]


def test_sparsity_auto_prunes_to_the_predicted_limit(capsys, l1_ckpt, tmp_path):
    code, out, err = run(capsys, "compress", l1_ckpt, "--method", "lomp", "--sparsity", "auto", "--finetune-epochs", "0",
                         "-o", tmp_path / "p.pt", "--json")
    assert code == 0, err
    r = json.loads(out)
    pred = r["details"]["predicted_limit"]
    assert r["details"]["l1"] == 5e-5
    assert 0 < pred["sparsity"] < 1 and r["target_sparsity"] == pred["sparsity"]
    assert abs(r["sparsity"] - pred["sparsity"]) < 1e-3          # rounded to whole weights
    assert r["finetuned_val_accuracy"] == r["pruned_val_accuracy"]  # no fine-tuning asked for


def test_limit_command_with_measure(capsys, l1_ckpt):
    code, out, err = run(capsys, "limit", l1_ckpt, *DIGITS, "--steps", "16", "--probes", "2", "--measure", "--json")
    assert code == 0, err
    r = json.loads(out)
    e, m = r["estimate"], r["measured"]
    assert e["hvps"] == 32 and e["settings"]["probes"] == 2 and e["l1"] == 5e-5
    assert e["sparsity_band"][0] < e["sparsity"] < e["sparsity_band"][1]
    assert len(m["sparsities"]) == 101 and m["limits"]["0.1"] >= m["limits"]["0"]
    assert abs(r["error_pt"] - 100 * (e["sparsity"] - m["limits"]["0.1"])) < 1e-9
    assert len(r["notes"]) == 1 and "trained with Adam" in r["notes"][0]   # the fixture's recipe, from its meta
    code, out, err = run(capsys, "limit", l1_ckpt, *DIGITS, "--steps", "8")
    text = " ".join(out.split())
    assert code == 0, err
    # both conventions, named (the same line `compress --sparsity auto` prints)
    assert "sparsity s* =" in text and "removed" in text and "keep ratio κ* =" in text and "kept" in text
    assert "8 Hessian-vector products" in text
    assert "note: trained with Adam" in text


def test_limit_notes_follow_the_recorded_training_recipe():
    authors = {"method": "dense", "l1": 5e-5, "optimizer": "sgd"}
    assert limit_notes(authors) == []
    assert [n.split(":")[0] for n in limit_notes({**authors, "l1": 0.0})] == ["trained without L1"]
    assert [n.split(":")[0] for n in limit_notes({**authors, "optimizer": "adam"})] == ["trained with Adam"]
    assert limit_notes({}) == []     # a foreign model: the recipe is unknown, nothing is claimed


@pytest.mark.parametrize("argv, message", [
    (["compress", "{m}", "--method", "magnitude", "--sparsity", "auto"], "--sparsity auto needs --method lomp"),
    (["compress", "{m}", "--method", "lomp", "--sparsity", "0.5", "--scope", "layer"], "one-shot global"),
    (["compress", "{m}", "--sparsity", "most"], "--sparsity must be a number"),
    (["limit", "{m}", "--steps", "0"], "steps must be"),
    (["limit", "{m}", "--epsilon", "tight"], "epsilon must be"),
    (["limit", "{m}", "--quadrature", "bins"], "unknown quadrature"),
])
def test_bad_input_is_a_one_line_error(capsys, l1_ckpt, tmp_path, argv, message):
    argv = [a.format(m=l1_ckpt) for a in argv] + (["-o", str(tmp_path / "x.pt")] if argv[0] == "compress" else [])
    code, out, err = run(capsys, *argv, *DIGITS)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()


def test_check_spec_accepts_what_lomp_is():
    check_spec(PruneSpec(method="lomp"), auto=True)
    with pytest.raises(InputError):
        check_spec(PruneSpec(method="lomp", granularity="channel"), auto=False)
