"""`explain` (edgeprune/explain.py) on real run directories: an unstructured and a channel-pruned lenet300."""

import json

import pytest

from edgeprune import api
from edgeprune.cli import main
from edgeprune.explain import explain_run
from edgeprune.host_simd import host_simd
from edgeprune.pruning import PruneSpec

from .conftest import CALIBRATION

TEST = api.DataOptions("fashion-mnist", test_limit=300)


@pytest.fixture(scope="module")
def unstructured_run(tmp_path_factory, lenet300_ckpt, fmnist_small, fast_target):
    """`deploy` of lenet300 with 80 % of its weights zeroed, on a fast host-cpu target."""
    d = tmp_path_factory.mktemp("explain")
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.8), d / "p.pt", data=fmnist_small, finetune_epochs=0.2,
                 progress=False)
    api.deploy(d / "p.pt", str(fast_target), d / "run", baseline_path=lenet300_ckpt, data=TEST, progress=False)
    return d / "run"


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory, lenet300_ckpt, fmnist_small, fast_target, unstructured_run):
    """`profile -o` of lenet300 with half its MACs removed by channel pruning in the target's channel
    multiple, against the dense export of the deploy run (a profile run directory holds no ONNX
    files: explain reads the report's paths)."""
    d = tmp_path_factory.mktemp("explain")
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.5, granularity="channel", budget="macs", round_to=None), d / "c.pt",
                 data=fmnist_small, finetune_epochs=0.2, progress=False, target=str(fast_target))
    api.export(d / "c.pt", d / "c.onnx", data=TEST)
    api.profile(unstructured_run / "dense.onnx", d / "c.onnx", str(fast_target), data=TEST, out_dir=d / "run",
                progress=False)
    return d / "run"


def by_topic(ex):
    out = {}
    for f in ex.findings:
        out.setdefault(f.topic, []).append(f)
    return out


def test_unstructured_zeros_are_named_as_densified(unstructured_run, fast_target):
    ex = explain_run(unstructured_run, fast_target)
    f = by_topic(ex)
    assert "80% of the pruned model's layer weights are zero (unstructured)" in f["zeros"][0].text
    assert "densified" in f["zeros"][0].reason and "ONNX Runtime" in f["zeros"][0].reason
    assert f["compaction"][0].text.startswith("no layer was compacted")
    assert "no INT8" in f["int8"][0].text
    assert "has no sparse tensor cores" in f["2:4"][0].reason and f["2:4"][0].text.startswith("0 of 3 layers")
    report = json.loads((unstructured_run / "report.json").read_text())
    assert len(f["speed-up"]) == len(report["latency"])
    for finding in f["speed-up"]:
        # MACs unchanged: either inside the A/A band (the usual case) or flagged as unexplained
        assert "MAC ratio 1.00" in finding.text
        assert "no measurable speed-up" in finding.text or "repeat the run" in finding.reason


def test_channel_pruned_run_names_the_compacted_layers_and_their_mac_share(channel_run, fast_target):
    ex = explain_run(channel_run, fast_target)
    f = by_topic(ex)
    report = json.loads((channel_run / "report.json").read_text())
    compacted = [L for L in ex.layers if L.compacted]
    assert [L.dense_shape for L in compacted][:2] == [[300, 784], [100, 300]]
    removed = 1 - sum(L.pruned_macs for L in ex.layers) / sum(L.dense_macs for L in ex.layers)
    assert removed == pytest.approx(1 - report["ratios"]["macs"], abs=0.01)
    text = f["compaction"][0].text
    assert "300x784->" in text and f"removing {removed:.0%} of the dense model's layer MACs" in text
    assert "zeros" not in f
    simd = host_simd()
    assert f["widths"][0].text == (f"all compacted widths are multiples of {simd.lanes}, the multiple host-cpu-fast "
                                   f"wants (build.round_to; this CPU: {simd.isa}, {simd.lanes} fp32 lanes)")


def test_widths_off_the_targets_multiple_are_named(channel_run, fast_target, tmp_path):
    coarse = tmp_path / "coarse.toml"
    coarse.write_text(fast_target.read_text().replace('round_to = "host"', "round_to = 48"))
    ex = explain_run(channel_run, coarse)
    off = [f"{L.name} {what} {L.pruned_shape[axis]}" for L in ex.layers for axis, what in ((0, "out"), (1, "in"))
           if L.pruned_shape[axis] != L.dense_shape[axis] and L.pruned_shape[axis] % 48]
    assert off   # widths in steps of 8 or 16 are rarely all multiples of 48
    widths = by_topic(ex)["widths"][0]
    simd = host_simd()   # a host target also names this CPU's own width, which 48 is not
    assert widths.text == (f"pruned widths not multiples of 48, the multiple coarse wants (build.round_to; this CPU: "
                           f"{simd.isa}, {simd.lanes} fp32 lanes): {', '.join(off)}")
    assert "--round-to 48" in widths.reason


def test_target_that_cannot_be_loaded_is_said_so(unstructured_run):
    # the report names the target by its file's stem, which is not in targets/
    ex = explain_run(unstructured_run)
    assert "could not be loaded" in by_topic(ex)["2:4"][0].reason


def test_target_with_sparse_tensor_cores_but_narrow_layers(unstructured_run, fast_target, tmp_path):
    orin = tmp_path / "orin-like.toml"
    orin.write_text(fast_target.read_text().replace('family = "host"', 'family = "host"\nsparse_tensor_cores = true')
                    .replace('model_format = "onnx"', 'model_format = "onnx"\nsparsity = "2:4"'))
    reason = by_topic(explain_run(unstructured_run, orin))["2:4"][0].reason
    assert "builds with 2:4 sparsity, but no layer is wide enough" in reason


def test_cli_prints_one_line_per_finding(capsys, unstructured_run, fast_target):
    assert main(["explain", str(unstructured_run), "--target", str(fast_target), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"compaction", "zeros", "int8", "2:4", "speed-up"} <= {f["topic"] for f in data["findings"]}
    assert main(["explain", str(unstructured_run), "--target", str(fast_target)]) == 0
    assert "- zeros: 80% of the pruned model's layer weights are zero" in " ".join(capsys.readouterr().out.split())


def bad(capsys, *argv, match):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_missing_or_malformed_run_dir_is_a_one_line_error(capsys, tmp_path, unstructured_run):
    bad(capsys, "explain", tmp_path / "nope", match="run directory not found")
    (tmp_path / "empty").mkdir()
    bad(capsys, "explain", tmp_path / "empty", match="report not found")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "report.json").write_text("{not json")
    bad(capsys, "explain", tmp_path / "junk", match="not valid JSON")
    moved = tmp_path / "moved"
    moved.mkdir()
    report = json.loads((unstructured_run / "report.json").read_text())
    report["dense"]["path"] = str(tmp_path / "gone.onnx")
    (moved / "report.json").write_text(json.dumps(report))
    bad(capsys, "explain", moved, match="no dense.onnx")


@pytest.fixture(scope="module")
def int8_ort_run(tmp_path_factory, lenet300_ckpt, fmnist_small, fast_target):
    """`deploy --precision int8` of the unstructured lenet300 to host-cpu with ORT-format engines."""
    d = tmp_path_factory.mktemp("explain")
    ort_target = d / "host-cpu-ort.toml"
    ort_target.write_text(fast_target.read_text().replace('model_format = "onnx"', 'model_format = "ort"'))
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.8), d / "p.pt", data=fmnist_small, finetune_epochs=0.2,
                 progress=False)
    api.deploy(d / "p.pt", str(ort_target), d / "run", baseline_path=lenet300_ckpt, data=TEST, progress=False,
               precision="int8", calibration=str(CALIBRATION))
    return d / "run", ort_target


def test_an_int8_run_is_int8_whatever_the_engine_format(int8_ort_run):
    run, target = int8_ort_run
    report = json.loads((run / "report.json").read_text())
    assert report["precision"] == "int8" and report["run"]["engines"]["pruned"].endswith(".ort")
    f = by_topic(explain_run(run, target))
    assert f["int8"][0].text.startswith("INT8: built in INT8 (the report's precision)")
    assert "QuantizeLinear" in f["int8"][0].text          # the quantized ONNX file the .ort was built from
    engine = f["engine"][0]
    assert engine.text.endswith(".ort was not inspected") and "ORT format" in engine.reason


def test_an_engine_that_cannot_be_read_is_a_finding_not_silence(unstructured_run, fast_target, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("dense.onnx", "pruned.onnx"):
        (run / name).write_bytes((unstructured_run / name).read_bytes())
    report = json.loads((unstructured_run / "report.json").read_text())
    (run / "junk.onnx").write_bytes(b"\x00not an onnx graph" * 4)
    report["run"]["engines"]["pruned"] = str(run / "junk.onnx")
    (run / "report.json").write_text(json.dumps(report))
    f = by_topic(explain_run(run, fast_target))
    assert "not a readable ONNX graph" in f["engine"][0].reason
    assert f["int8"][0].text.startswith("no INT8: the report's precision is fp32")
