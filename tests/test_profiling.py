"""profile_pair on real models trained on real data (sklearn digits): a dense CNN and the same
CNN with 90 % of its weights zeroed, exported with the dynamo ONNX exporter."""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeprune.errors import InputError, ShapeError
from edgeprune.measure.timing import time_interleaved
from edgeprune.profiling import explain, profile_pair
from edgeprune.report import Report, write_report
from edgeprune.targets import load_target
from tests.conftest import CALIBRATION
from tests.test_report import make_report

torch = pytest.importorskip("torch")
nn = torch.nn

CONTRACT_SIDE_KEYS = {"latency_ms", "peak_rss_mb", "accuracy", "size_bytes", "params", "macs"}
CONTRACT_RATIO_KEYS = {"latency_p50", "macs", "params", "size"}


def export(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    prog = torch.onnx.export(
        model.eval(), (torch.zeros(2, 1, 8, 8),), str(path), dynamo=True, opset_version=18, external_data=False,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False,
    )
    if prog is not None and not path.exists():
        prog.save(str(path))
    if metadata:
        m = onnx.load(str(path))
        for k, v in metadata.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(path))
    return path


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    train, test = idx[:1400], idx[1400:]
    return x[train], y[train], x[test], y[test]


@pytest.fixture(scope="session")
def models(tmp_path_factory, digits) -> tuple[Path, Path]:
    """A small CNN trained for a second or two, and a copy with 90 % of its weights zeroed
    (global magnitude) and fine-tuned with the mask held."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    )
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)

    def fit(model, epochs, masks=None):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            for i in range(0, len(xt), 128):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[i : i + 128]), yt[i : i + 128]).backward()
                opt.step()
                if masks:
                    with torch.no_grad():
                        for p, m in masks.items():
                            p.mul_(m)

    fit(net, 8)
    out = tmp_path_factory.mktemp("profiling")
    dense = export(net, out / "dense.onnx")

    weights = [m.weight for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    threshold = torch.cat([w.detach().abs().flatten() for w in weights]).quantile(0.9)
    masks = {w: (w.detach().abs() > threshold).float() for w in weights}
    with torch.no_grad():
        for w, m in masks.items():
            w.mul_(m)
    fit(net, 3, masks)
    meta = {"edgeprune.method": "magnitude", "edgeprune.sparsity": "0.900000", "edgeprune.granularity": "unstructured"}
    pruned = export(net, out / "pruned.onnx", meta)
    return dense, pruned


@pytest.fixture(scope="session")
def fast_target():
    t = load_target("host-cpu")
    return dataclasses.replace(t, run=dataclasses.replace(t.run, warmup=5, iterations=60, batch_sizes=(1, 64)))


@pytest.fixture(scope="session")
def report(models, digits, fast_target, tmp_path_factory) -> Report:
    _, _, xte, yte = digits
    return profile_pair(*models, fast_target, xte, yte, tmp_path_factory.mktemp("work"), progress=False)


def direct_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return 100.0 * float(np.mean(logits.argmax(1) == y))


def test_report_has_every_contract_key(report):
    d = json.loads(json.dumps(report.to_dict()))
    assert d["schema"] == "edgeprune.report/1" and d["target"] == "host-cpu"
    assert {"method", "sparsity", "accuracy_drop_pt", "ratios", "latency", "agreement", "stack", "notes"} <= set(d)
    for side in ("dense", "pruned"):
        assert CONTRACT_SIDE_KEYS <= set(d[side])
        assert {"p50", "p90", "p99", "mean"} <= set(d[side]["latency_ms"])
    assert CONTRACT_RATIO_KEYS <= set(d["ratios"])
    assert set(d["latency"]) == {"1", "64"}
    assert d["stack"]["onnxruntime"] == ort.__version__


def test_method_and_sparsity_come_from_the_onnx_metadata(report):
    assert (report.method, report.sparsity, report.granularity) == ("magnitude", 0.9, "unstructured")
    assert 0.85 < report.measured_sparsity < 0.95


def test_accuracy_equals_a_direct_onnxruntime_evaluation(report, models, digits):
    _, _, xte, yte = digits
    dense_acc, pruned_acc = (direct_accuracy(p, xte, yte) for p in models)
    assert report.dense.accuracy == pytest.approx(dense_acc, abs=100 / len(yte) + 1e-9)
    assert report.pruned.accuracy == pytest.approx(pruned_acc, abs=100 / len(yte) + 1e-9)
    assert report.dense.accuracy > 85  # the fixture really learned the digits
    assert report.accuracy_drop_pt == pytest.approx(report.dense.accuracy - report.pruned.accuracy)
    assert 0.0 <= report.agreement.top1 <= 1.0 and report.agreement.samples == len(yte)
    assert report.agreement.max_abs_logit_diff > 0


def test_latency_percentiles_are_ordered_and_the_aa_control_is_present(report, fast_target):
    for bs, bl in report.latency.items():
        for stats in (bl.dense, bl.control, bl.pruned):
            assert 0 < stats.p50 <= stats.p90 <= stats.p99 <= stats.max
            assert stats.n >= fast_target.run.iterations
        assert bl.aa_ratio_p50 > 0 and bl.ratio_p50 > 0
    assert report.dense.latency_ms == report.latency[1].dense
    assert report.ratios.latency_p50 == pytest.approx(report.latency[1].ratio_p50)


def test_memory_comes_from_a_separate_process(report):
    for side in (report.dense, report.pruned):
        assert side.peak_rss_mb > 0
        assert 0 < side.model_rss_mb < side.peak_rss_mb


def test_zeros_do_not_lower_macs_and_the_notes_say_so(report):
    q = report.ratios
    assert q.macs == 1.0 and q.size == pytest.approx(1.0, abs=0.01)
    assert 0.05 < q.params < 0.15
    assert q.size_xz < 0.5
    zeros_note = [n for n in report.notes if "zeros bring no speed-up on this backend (ONNX Runtime densifies)" in n]
    assert len(zeros_note) == 1 and "compressed file size" in zeros_note[0] and "→" in zeros_note[0]
    assert any("A/A" in n for n in report.notes)


def test_engines_and_report_files_are_written(report, tmp_path):
    for path in report.run["engines"].values():
        assert Path(path).is_file()
    paths = write_report(report, tmp_path)
    assert Report.from_json(paths["json"].read_text()).to_dict() == report.to_dict()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explicit_method_and_sparsity_win_over_metadata(models, digits, tmp_path):
    _, _, xte, yte = digits
    t = load_target("host-cpu")
    tiny = dataclasses.replace(t, run=dataclasses.replace(t.run, warmup=1, iterations=3, batch_sizes=(4,)))
    r = profile_pair(*models, tiny, xte[:50], yte[:50], tmp_path, method="lomp", sparsity=0.5, progress=False)
    assert (r.method, r.sparsity) == ("lomp", 0.5)
    assert list(r.latency) == [4] and r.latency_batch == 4  # no batch 1: the smallest batch is the reference


def test_an_arm_target_builds_ort_engines_here_and_says_the_latency_is_this_hosts(models, digits, tmp_path):
    _, _, xte, yte = digits
    t = load_target("raspberry-pi-5")   # aarch64, ort_target_platform arm, .ort engines
    if t.hardware["arch"] in (platform.machine().lower(), {"arm64": "aarch64"}.get(platform.machine().lower())):
        pytest.skip("this host is an aarch64 machine: its numbers are the device's kind")
    tiny = dataclasses.replace(t, run=dataclasses.replace(t.run, warmup=1, iterations=3, batch_sizes=(4,)))
    r = profile_pair(*models, tiny, xte[:50], yte[:50], tmp_path, progress=False)
    assert sorted(p.suffix for p in tmp_path.rglob("*.ort")) == [".ort", ".ort"]
    assert r.notes[0].startswith("Measured on this host, not on the device: the target is an aarch64 device")
    assert r.dense.accuracy == pytest.approx(direct_accuracy(models[0], xte[:50], yte[:50]))


def test_problems_and_bad_data_are_user_errors(models, digits, fast_target, tmp_path):
    _, _, xte, yte = digits
    old = dataclasses.replace(fast_target, stack={"max_opset": 13})
    with pytest.raises(InputError, match="opset 18 is above the target's max_opset 13"):
        profile_pair(*models, old, xte, yte, tmp_path, progress=False)
    with pytest.raises(ShapeError, match="expects"):
        profile_pair(*models, fast_target, xte.reshape(len(xte), 64), yte, tmp_path, progress=False)
    with pytest.raises(ShapeError, match="labels"):
        profile_pair(*models, fast_target, xte, yte[:-1], tmp_path, progress=False)


def test_memprobe_prints_json(models):
    out = subprocess.run(
        [sys.executable, "-m", "edgeprune.memprobe", str(models[0]), "--threads", "1", "--batch", "1"],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout)
    assert result["peak_rss_mb"] >= result["baseline_rss_mb"] > 0 and result["arena"] is False


class Recorder:
    """A fake session that logs which session ran, to check the interleaving order."""

    def __init__(self, name, log):
        self.name, self.log = name, log
        self.input_name, self.input_shape, self.providers = "x", ["batch", 1], ["fake"]

    def run(self, x):
        self.log.append(self.name)
        return x


def test_sessions_are_timed_interleaved_in_rotating_order():
    log: list[str] = []
    sessions = [Recorder(n, log) for n in ("A", "A'", "B")]
    times = time_interleaved(sessions, np.zeros((1, 1), np.float32), warmup=2, iterations=4)
    assert [len(t) for t in times] == [4, 4, 4]
    timed = log[6:]
    assert timed == ["A", "A'", "B", "A'", "B", "A", "B", "A", "A'", "A", "A'", "B"]


class Sleeper:
    """A fake session that takes a known time per run and notes whether the garbage collector was on."""

    def __init__(self, seconds):
        self.seconds, self.gc_on = seconds, []
        self.input_name, self.input_shape, self.providers = "x", ["batch", 1], ["fake"]

    def run(self, x):
        self.gc_on.append(gc.isenabled())
        time.sleep(self.seconds)
        return x


def test_timing_is_in_nanoseconds_without_collections_and_lasts_min_seconds():
    sessions = [Sleeper(0.002), Sleeper(0.004)]
    t0 = time.perf_counter()
    times = time_interleaved(sessions, np.zeros((1, 1), np.float32), warmup=1, iterations=2, min_seconds=0.1)
    assert time.perf_counter() - t0 >= 0.1
    assert len(times[0]) == len(times[1]) > 2      # rounds went on past `iterations` until min_seconds
    assert times[0].min() >= 2_000_000 and times[1].min() >= 4_000_000 and times[0].max() < 1_000_000_000
    # no collection pause lands on a timed run, and the collector is back on afterwards
    assert not any(sessions[0].gc_on[1:]) and gc.isenabled()


def synthetic(ratio: float, aa: float, zeros: bool, macs_ratio: float = 1.0) -> Report:
    return make_report(ratio=ratio, aa=aa, zeros=zeros, macs_ratio=macs_ratio)


def test_notes_call_a_ratio_inside_the_aa_band_noise():
    r = synthetic(ratio=1.03, aa=0.95, zeros=True)
    notes = explain(r)
    assert any("lies within the A/A noise band" in n for n in notes)
    assert any("zeros bring no speed-up on this backend" in n for n in notes)


def test_notes_report_a_real_speedup_from_removed_channels():
    r = synthetic(ratio=0.5, aa=1.01, zeros=False, macs_ratio=0.4)
    notes = explain(r)
    assert any("2.00× as fast" in n for n in notes)
    assert any("physically removed" in n and "40%" in n for n in notes)
    assert not any("zeros bring no speed-up" in n for n in notes)
    assert not any("noise band" in n for n in notes)


# ---------------------------------------------------------------- INT8 targets
INT8_TARGET = """
description = "host CPU, INT8 (test)"
backend = "onnxruntime"
[build]
precision = "int8"
calibration = "{calibration}"
calibration_method = "minmax"
threads = 1
[run]
warmup = 3
iterations = 20
batch_sizes = [1, 16]
"""


def test_int8_target_deploys_pruned_int8_against_pruned_fp32_and_dense_in_one_run(lenet5_ckpt, tmp_path):
    from edgeprune import api
    from edgeprune.pruning import PruneSpec
    from edgeprune.report import read_report

    target = tmp_path / "host-int8.toml"
    target.write_text(INT8_TARGET.format(calibration=CALIBRATION))
    data = api.DataOptions("fashion-mnist", limit=3000, test_limit=500)
    pruned = tmp_path / "channel.pt"
    api.compress(lenet5_ckpt, PruneSpec(granularity="channel", sparsity=0.5), pruned, data=data,
                 finetune_epochs=0, progress=False)
    report = api.deploy(pruned, str(target), tmp_path / "run", baseline_path=lenet5_ckpt, data=data, progress=False)

    d = read_report(tmp_path / "run").to_dict()
    assert d["precision"] == "int8" and d["schema"] == "edgeprune.report/1"
    assert {"dense", "pruned", "ratios", "accuracy_drop_pt", "latency"} <= set(d)   # the contract is unchanged
    # pruned = the INT8 engine; pruned_fp32 = the same pruned network in fp32, measured alongside
    assert d["pruned"]["path"].endswith(".int8.onnx") and d["pruned_fp32"]["path"].endswith("pruned.onnx")
    assert d["pruned"]["macs"] == d["pruned_fp32"]["macs"] < d["dense"]["macs"]
    assert d["pruned"]["size_bytes"] < 0.5 * d["pruned_fp32"]["size_bytes"]
    for bs in ("1", "16"):
        lat = d["latency"][bs]
        assert {"dense", "control", "pruned", "pruned_fp32", "int8_ratio_p50"} <= set(lat)
        assert lat["pruned"]["n"] == lat["pruned_fp32"]["n"] == lat["dense"]["n"] >= 20
        assert lat["int8_ratio_p50"] == pytest.approx(lat["pruned"]["p50"] / lat["pruned_fp32"]["p50"])
    q = d["int8"]
    assert q["calibration_method"] == "minmax" and q["calibration_samples"] == 512 and q["per_channel"]
    assert q["quantized_nodes"] > 0 and q["fp32_compute_nodes"] == []
    assert q["accuracy_drop_pt"] == pytest.approx(d["pruned_fp32"]["accuracy"] - d["pruned"]["accuracy"])
    # Accuracies are measured through the engines: fp32 matches a direct ONNX Runtime run of the export.
    x, y = data.test().x, data.test().y
    assert d["pruned_fp32"]["accuracy"] == pytest.approx(direct_accuracy(tmp_path / "run" / "pruned.onnx", x, y))
    assert abs(q["accuracy_drop_pt"]) <= 3.0 and q["agreement_with_fp32"]["top1"] >= 0.9
    assert any("deployed in INT8" in n for n in report.notes)
    assert any("int8/fp32" in n for n in report.notes)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## INT8 against fp32" in md and ", INT8 vs dense on host-int8" in md.splitlines()[0]


def test_int8_target_with_a_calibration_set_of_the_wrong_shape_is_a_one_line_cli_error(models, tmp_path, capsys):
    from edgeprune.cli import main

    # Fashion-MNIST calibration images (28x28) for the 8x8 digits CNN.
    target = tmp_path / "int8.toml"
    target.write_text(INT8_TARGET.format(calibration=CALIBRATION))
    dense, pruned = models
    rc = main(["profile", str(pruned), "--baseline", str(dense), "--target", str(target), "--data", "digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == ("error: calibration data has shape (512, 1, 28, 28) but the model input 'input' takes N x (1, 8, 8) rows")


def test_profile_without_data_needs_models_that_record_their_data_set(models, tmp_path, capsys):
    from edgeprune.cli import main

    dense, pruned = models      # exported straight from torch: no edgeprune.data in their metadata
    rc = main(["profile", str(pruned), "--baseline", str(dense), "--target", "host-cpu", "--test-limit", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: dense.onnx and pruned.onnx record no data set (exported by an older edgeprune "
                               "or another tool): pass --data"]
    # a model that records preprocessing edgeprune's loader does not do is refused, not fed as if it matched
    odd = export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), tmp_path / "odd.onnx",
                 {"edgeprune.data": "digits", "edgeprune.preprocess": "(x - 0.5) / 0.25"})
    rc = main(["profile", str(odd), "--baseline", str(dense), "--target", "host-cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "expects inputs preprocessed as '(x - 0.5) / 0.25'" in err[0]


def test_agreement_reports_cosine_so_outputs_without_labels_are_judged():
    from edgeprune.measure.accuracy import agreement
    from edgeprune.report.schema import Agreement

    def _agreement(a, b):
        return Agreement(**agreement(a, b))

    d = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], np.float32)
    same = _agreement(d, d.copy())
    assert same.cosine == pytest.approx(1.0) and same.top1 == 1.0 and same.max_abs_logit_diff == 0.0
    p = np.array([[1.0, 0.0], [2.0, 2.0], [-3.0, -4.0]], np.float32)   # 0 deg, 45 deg, opposite
    a = _agreement(d, p)
    assert a.cosine == pytest.approx((1.0 + 2 ** -0.5 - 1.0) / 3)
    assert a.top1 == pytest.approx(1 / 3) and a.max_abs_logit_diff == pytest.approx(8.0)
