"""The methods benchmark (benchmarks/bench_methods.py), run end to end in its reduced form (--quick)."""

import importlib.util
import json
import sys

import pytest

from edgeprune.pruning import available_methods

from .conftest import REPO, requires_fmnist


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "benchmarks" / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run over every method (two worker processes, as `make bench-methods`)."""
    bench = load_bench()
    out = tmp_path_factory.mktemp("bench-methods")
    assert bench.main(["--quick", "--out", str(out), "--work", str(out / "work"), "--jobs", "2"]) == 0
    return bench, out, json.loads((out / "methods-quick.json").read_text())


@requires_fmnist
def test_quick_run_has_a_row_per_method_sparsity_and_seed(quick_run):
    bench, out, record = quick_run
    registered = set(available_methods())
    ran = [mr for mr in bench.METHODS if mr.method in registered]
    assert {x["label"] for x in record["skipped"]} == {mr.label for mr in bench.METHODS if mr.method not in registered}
    models = [m for m in bench.MODELS if m.name in ("lenet300", "lenet5")]   # --quick's models
    expected = {(m.name, mr.label, sp) for m in models for mr in ran if mr.runs_on(m.name) for sp in (0.5, 0.9)}
    got = [(r["model"], r["label"], r["target_sparsity"]) for r in record["rows"]]
    by_label = {mr.label: mr for mr in ran}
    assert sorted(got) == sorted(expected) and all(r["seed"] == 0 for r in record["rows"])
    for r in record["rows"]:
        assert r["error"] is None, r["error"]
        assert 0.0 <= r["test_accuracy"] <= 100.0 and r["prune_seconds"] > 0 and r["total_seconds"] > r["prune_seconds"]
        start = "dense_l1" if by_label[r["label"]].dense == "l1" else "dense"
        assert r["dense_test_accuracy"] == record["models"][r["model"]][start]["test_accuracy"]
        if r["label"] in ("magnitude-global", "magnitude-layer", "random"):
            assert r["sparsity"] == pytest.approx(r["target_sparsity"], abs=1e-3) and not r["compacted"]
    # the channel reference removes neurons physically, so it goes through ONNX Runtime against dense
    channel = [r for r in record["rows"] if r["label"] == "magnitude-channel"]
    assert channel and all(r["compacted"] and r["mac_ratio"] < 0.6 for r in channel)
    # every method that compacted a model (magnitude-channel always; activation where registered)
    # has its most compacted model deployed
    compacting = {(r["model"], r["label"]) for r in record["rows"] if r["compacted"]}
    assert {(m.name, "magnitude-channel") for m in models} <= compacting
    deployed = {(d["model"], d["label"], d["target_sparsity"]) for d in record["compacted"]}
    assert deployed == {(model, label, 0.9) for model, label in compacting}
    for d in record["compacted"]:
        assert d["pruned_bytes"] < d["dense_bytes"] and d["mac_ratio"] < 1.0
        if d["label"] == "magnitude-channel":
            assert d["pruned_bytes"] < 0.2 * d["dense_bytes"] and d["mac_ratio"] < 0.6
        for batch in ("1", "64"):
            assert d["latency"][batch]["pruned_p50_ms"] > 0 and 0.5 < d["latency"][batch]["aa_ratio_p50"] < 2.0
    cells = {(c["model"], c["label"], c["target_sparsity"]): c for c in record["summary"]}
    assert set(cells) == expected and all(c["n"] == 1 and c["test_accuracy_std"] is None for c in cells.values())


@requires_fmnist
def test_quick_run_writes_the_table_and_the_plot(quick_run):
    bench, out, record = quick_run
    md = (out / "methods-quick.md").read_text()
    assert "**lenet300**" in md and "**lenet5**" in md and "**fc5**" not in md
    for mr in bench.METHODS:
        if mr.method in available_methods():
            assert f"| {mr.label} |" in md
    assert "QUICK" in md and "Physically compacted models" in md
    assert (out / "methods-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table and plot are a function of the JSON alone: --render rebuilds the same table
    (out / "methods-quick.md").unlink()
    assert bench.main(["--quick", "--out", str(out), "--render"]) == 0
    assert (out / "methods-quick.md").read_text() == md


def test_unknown_method_or_model_is_refused():
    bench = load_bench()
    with pytest.raises(SystemExit, match="unknown method nope"):
        bench.pick("nope", bench.METHODS, "method")
    with pytest.raises(SystemExit, match="unknown model resnet50"):
        bench.pick("resnet50", bench.MODELS, "model")
    assert [m.label for m in bench.pick("random,magnitude-layer", bench.METHODS, "method")] == ["random", "magnitude-layer"]


@requires_fmnist
def test_merge_reruns_one_method_and_keeps_the_others(quick_run):
    bench, out, record = quick_run
    assert bench.main(["--quick", "--out", str(out), "--work", str(out / "work"), "--methods", "random",
                       "--merge", "--resume", "--jobs", "1"]) == 0
    merged = json.loads((out / "methods-quick.json").read_text())

    def cells(rows):
        return sorted((r["model"], r["label"], r["target_sparsity"], r["test_accuracy"]) for r in rows)

    assert cells(merged["rows"]) == cells(record["rows"])
    assert {r["label"] for r in merged["rows"] if r["resumed"]} == {"random"}   # reused from its saved rows
    assert merged["compacted"] == record["compacted"] and merged["skipped"] == record["skipped"]
    assert [m["label"] for m in merged["methods"]] == [m["label"] for m in record["methods"]]
