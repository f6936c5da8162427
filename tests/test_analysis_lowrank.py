"""The low-rank view (edgeprune/analysis/lowrank.py): ranks, the PCA baseline, and `edgeprune analyze`."""

import json

import numpy as np
import pytest

from edgeprune import api
from edgeprune.analysis.lowrank import EPS, numerical_rank, pca_reduce, singular_values
from edgeprune.cli import main
from edgeprune.model_io import load_model
from edgeprune.pruning import PruneSpec
from edgeprune.training import evaluate

LAYER_KEYS = {"name", "kind", "dense_shape", "pruned_shape", "sparsity", "dense_rank", "pruned_rank", "pca_rank",
              "dense_tol", "pruned_tol", "dense_energy_top_r", "dense_singular_values", "pruned_singular_values"}
TOP_KEYS = {"schema", "pruned", "baseline", "arch", "method", "sparsity", "data", "test_samples", "dense_accuracy",
            "pruned_accuracy", "pca_accuracy", "layers", "rank_rule", "baseline_is_source"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rank(w: np.ndarray) -> int:
    return numerical_rank(singular_values(w), w.shape)[0]


def test_rank_of_constructed_low_rank_matrices():
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((120, 7)) @ rng.standard_normal((7, 80))).astype(np.float32)
    assert rank(low) == 7
    assert rank(rng.standard_normal((120, 80)).astype(np.float32)) == 80
    rows_zeroed = rng.standard_normal((50, 30)).astype(np.float32)
    rows_zeroed[::2] = 0.0   # what removing neurons' incoming weights does: 25 rows left
    assert rank(rows_zeroed) == 25
    # float32 rounding of a rank-7 product is far below the tolerance, yet the tolerance is not loose:
    # a component at 1e-3 of the largest singular value still counts
    sv = singular_values(low)
    assert sv[7] < sv[0] * max(low.shape) * EPS < 1e-3 * sv[0]


def test_pca_reconstruction_has_rank_at_most_r_plus_1_and_keeps_the_mean():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((60, 100)).astype(np.float32) + 0.5   # out x in, a clear nonzero column mean
    for r in (0, 1, 5, 20):
        rec = pca_reduce(w, r)
        assert rec.shape == w.shape and rec.dtype == np.float32
        assert r <= rank(rec) <= r + 1
        # the mean over input units (Keras rows) survives the reduction exactly
        np.testing.assert_allclose(rec.mean(axis=1), w.mean(axis=1), atol=1e-5)
    # with every component kept, the reconstruction is the matrix itself
    np.testing.assert_allclose(pca_reduce(w, 60), w, atol=1e-4)
    # PCA keeps the top directions: more components, smaller error
    errors = [np.linalg.norm(pca_reduce(w, r) - w) for r in (2, 10, 40)]
    assert errors[0] > errors[1] > errors[2]


@pytest.fixture(scope="module")
def magnitude_pruned(tmp_path_factory, lenet300_ckpt, fmnist_small):
    out = tmp_path_factory.mktemp("lowrank") / "magnitude.pt"
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.9), out, data=fmnist_small, finetune_epochs=0.3, progress=False)
    return out


def test_cli_analyze_magnitude_pruned_lenet300(capsys, tmp_path, magnitude_pruned, lenet300_ckpt, fmnist_small):
    out_dir = tmp_path / "analysis"
    code, out, err = run(capsys, "analyze", magnitude_pruned, "--baseline", lenet300_ckpt, "--test-limit", 1000,
                         "-o", out_dir, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert TOP_KEYS <= set(r) and r["schema"] == "edgeprune.lowrank/1"
    assert [L["name"] for L in r["layers"]] == ["1", "3"]   # hidden layers only, not the classifier
    for L in r["layers"]:
        assert LAYER_KEYS <= set(L)
        assert L["pruned_shape"] == L["dense_shape"]          # unstructured: same shapes, zeros inside
        assert len(L["dense_singular_values"]) == min(L["dense_shape"])
        assert L["dense_singular_values"] == sorted(L["dense_singular_values"], reverse=True)
        assert 0 < L["pruned_rank"] <= min(L["pruned_shape"]) and L["pca_rank"] <= L["pruned_rank"] + 1
    assert r["layers"][0]["sparsity"] > 0.9 > r["layers"][1]["sparsity"] > 0.5   # one global threshold
    assert r["baseline_is_source"] is True and r["method"] == "magnitude" and r["test_samples"] == 1000
    test = api.DataOptions("fashion-mnist", test_limit=1000).test()
    assert r["dense_accuracy"] == pytest.approx(evaluate(load_model(lenet300_ckpt).model, test))
    assert r["pruned_accuracy"] == pytest.approx(evaluate(load_model(magnitude_pruned).model, test))
    assert json.loads((out_dir / "analysis.json").read_text()) == r
    assert (out_dir / "singular_values.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the table form, and outputs kept unless --force
    code, out, err = run(capsys, "analyze", magnitude_pruned, "--baseline", lenet300_ckpt, "--test-limit", 300,
                         "-o", out_dir)
    assert code == 2 and err.strip().count("\n") == 0 and "exists (use --force" in err
    code, out, _ = run(capsys, "analyze", magnitude_pruned, "--baseline", lenet300_ckpt, "--test-limit", 300,
                       "-o", out_dir, "--force")
    assert code == 0 and "PCA rank reduction" in out and "numerical rank" in out
    assert json.loads((out_dir / "analysis.json").read_text())["test_samples"] == 300


def test_neuron_removal_lowers_the_rank_and_pca_matches_it(tmp_path, lenet300_ckpt, fmnist_small):
    pruned = tmp_path / "channel.pt"
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.7, granularity="channel"), pruned, data=fmnist_small,
                 finetune_epochs=0.2, progress=False)
    r = api.analyze(pruned, lenet300_ckpt, data=api.DataOptions("fashion-mnist", test_limit=500))
    for L in r.layers:
        assert L.pruned_shape[0] < L.dense_shape[0]           # neurons physically removed
        assert L.pruned_rank <= L.pruned_shape[0] < L.dense_rank
        assert L.pruned_rank <= L.pca_rank <= L.pruned_rank + 1
        assert 0.0 < L.dense_energy_top_r < 1.0
        assert len(L.pruned_singular_values) == min(L.pruned_shape)
    assert 0.0 <= r.pca_accuracy <= 100.0 and r.to_dict()["layers"][0]["pruned_rank"] == r.layers[0].pruned_rank


def test_baseline_of_another_architecture_is_a_one_line_error(capsys, tmp_path, magnitude_pruned):
    other = tmp_path / "fc5.pt"
    api.train("zoo:fc5", other, data=api.DataOptions("fashion-mnist", limit=300, test_limit=100), epochs=0.1,
              progress=False)
    code, out, err = run(capsys, "analyze", magnitude_pruned, "--baseline", other, "--test-limit", 100)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "zoo:fc5" in err and "zoo:lenet300" in err
    code, _, err = run(capsys, "analyze", magnitude_pruned, "--baseline", tmp_path / "missing.pt")
    assert code == 2 and "not found" in err


def test_analyze_help_has_an_example(capsys):
    code, out, _ = run(capsys, "analyze", "--help")
    assert code == 0 and "Example: edgeprune analyze" in " ".join(out.split())
