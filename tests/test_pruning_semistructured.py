"""2:4 semi-structured pruning and the 2:4 checker (edgeprune/pruning/semistructured.py)."""

import json

import pytest
import torch

from edgeprune import api
from edgeprune.cli import main
from edgeprune.errors import InputError
from edgeprune.export import to_onnx_model
from edgeprune.model_io import load_model
from edgeprune.pruning import PruneSpec, apply_masks, get_method, prunable_layers
from edgeprune.pruning.semistructured import check_2to4, select_2to4

from .tiny import mlp


def nonzeros_per_group(weight: torch.Tensor) -> torch.Tensor:
    """Nonzeros in each run of 4 consecutive weights along dim 1 (Conv C / Linear in), written
    independently of the module: unfold dim 1 into windows of 4."""
    return (weight.unfold(1, 4, 4) != 0).sum(-1)


@pytest.fixture(scope="module")
def pruned_cnn(tmp_path_factory, resnet_ckpt):
    """The shared ResNet-8 (16/32/64: Conv and Linear) pruned 2:4 and fine-tuned on a Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("semi") / "resnet_24.pt"
    result = api.compress(resnet_ckpt, PruneSpec(granularity="2:4"), out, finetune_epochs=0.3, progress=False,
                          data=api.DataOptions("fashion-mnist", limit=1000))
    return out, result


def test_masks_hold_two_of_four_along_the_reduction_axis_after_finetuning(pruned_cnn):
    path, result = pruned_cnn
    model = load_model(path).model
    layers = prunable_layers(model)
    assert any(isinstance(m, torch.nn.Conv2d) for m in layers.values())
    assert any(isinstance(m, torch.nn.Linear) for m in layers.values())
    dense = result.details["2:4 dense layers"]
    for name, m in layers.items():
        if m.weight.shape[1] % 4:
            assert name in dense and "not a multiple of 4" in dense[name]
            assert int((m.weight == 0).sum()) == 0      # left dense
            continue
        # fine-tuning moved the kept weights, yet exactly 2 of every 4 are nonzero, along C / in
        assert bool((nonzeros_per_group(m.weight.detach()) == 2).all()), name
    assert 0.45 < result.sparsity <= 0.5


def test_2to4_mlp_recovers_its_accuracy_after_finetuning(tmp_path, lenet300_ckpt, fmnist_small):
    r = api.compress(lenet300_ckpt, PruneSpec(granularity="2:4"), tmp_path / "p.pt", data=fmnist_small,
                     finetune_epochs=0.5, progress=False)
    assert r.details["2:4 dense layers"] == {} and r.sparsity == 0.5    # 784, 300, 100 inputs: all multiples of 4
    assert r.finetuned_val_accuracy >= r.dense_val_accuracy - 5     # 300 validation images: a few points of noise
    for m in prunable_layers(load_model(tmp_path / "p.pt").model).values():
        assert bool((nonzeros_per_group(m.weight.detach()) == 2).all())


def test_selection_keeps_the_two_largest_of_each_group():
    model = mlp()
    masks, dense = select_2to4(get_method("magnitude").score(model, None), model)
    assert dense == {}
    w = model[0].weight.detach().abs().unfold(1, 4, 4)            # [32, 16, 4]
    kept = masks["0"].unfold(1, 4, 4)
    # every kept magnitude is at least every dropped one within its own group
    low_kept = torch.where(kept, w, torch.inf).min(-1).values
    high_dropped = torch.where(~kept, w, -torch.inf).max(-1).values
    assert bool((low_kept >= high_dropped).all())


def test_conv_groups_run_along_input_channels_for_every_kernel_position():
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3))
    torch.manual_seed(1)
    masks, _ = select_2to4(get_method("random", seed=3).score(conv, None), conv)
    mask = masks["0"]                                              # [4, 8, 3, 3]
    assert torch.equal(nonzeros_per_group(mask.int()), torch.full((4, 2, 3, 3), 2))
    # along another axis the same mask is not 2:4 (a wrong-axis pattern would fail this)
    assert not torch.equal((mask.unfold(0, 4, 4)).sum(-1), torch.full((1, 8, 3, 3), 2))


def test_checker_flags_dense_and_non_multiple_of_4_layers(resnet_ckpt, pruned_cnn):
    dense = {c.name: c for c in check_2to4(resnet_ckpt)}
    pruned = {c.name: c for c in check_2to4(pruned_cnn[0])}
    stem = next(iter(pruned.values()))
    assert stem.shape[1] == 1 and not stem.satisfies and "not a multiple of 4" in stem.note
    others = [c for c in pruned.values() if c is not stem]
    assert others and all(c.satisfies for c in others)
    assert all(not c.satisfies and c.violating_groups > 0 for c in dense.values() if c.shape[1] % 4 == 0)
    # widths 16-64: nothing here is wide enough for sparse kernels to beat dense ones
    assert not any(c.wide or c.likely_faster for c in pruned.values())


def test_checker_reads_the_onnx_export_like_the_model():
    # Conv (weight [K, C, R, S]) and Linear (exported as Gemm with transB=1) in one small graph
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 24 * 24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    masks, _ = select_2to4(get_method("magnitude").score(model, None), model)
    apply_masks(model, masks)
    from_torch = check_2to4(model)
    from_onnx = check_2to4(to_onnx_model(model, (1, 28, 28)))
    key = [(c.shape, c.satisfies, c.groups) for c in from_torch]
    assert [(c.shape, c.satisfies, c.groups) for c in from_onnx] == key and all(c.satisfies for c in from_torch[1:])


def test_wide_aligned_layer_is_likely_faster():
    layer = torch.nn.Sequential(torch.nn.Linear(512, 256))
    masks, _ = select_2to4(get_method("magnitude").score(layer, None), layer)
    with torch.no_grad():
        layer[0].weight.mul_(masks["0"])
    (check,) = check_2to4(layer)
    assert check.satisfies and check.wide and check.aligned and check.likely_faster and check.note == ""


def test_other_sparsity_or_iterative_is_a_one_line_error(capsys, lenet300_ckpt, tmp_path):
    with pytest.raises(InputError, match="sparsity must be 0.5"):
        PruneSpec(granularity="2:4", sparsity=0.9).validate()
    with pytest.raises(InputError, match="oneshot"):
        PruneSpec(granularity="2:4", schedule="iterative").validate()
    code = main(["compress", str(lenet300_ckpt), "--granularity", "2:4", "--sparsity", "0.7", "-o",
                 str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


def test_check_sparsity_cli(capsys, pruned_cnn, tmp_path):
    assert main(["check-sparsity", str(pruned_cnn[0])]) == 0
    n = len(check_2to4(pruned_cnn[0]))
    assert f"{n - 1} of {n} layers satisfy 2:4" in " ".join(capsys.readouterr().out.split())
    assert main(["check-sparsity", str(pruned_cnn[0]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "not a multiple of 4" in rows[0]["note"] and all(r["satisfies"] for r in rows[1:])
    assert main(["check-sparsity", str(tmp_path / "missing.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: model file not found")
