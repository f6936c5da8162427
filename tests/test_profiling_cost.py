"""The measured figures follow the models' real cost: `profile_pair` on two random MLPs of known,
very different cost (30x the MACs and the weight bytes), through real ONNX Runtime sessions and
the real memory probe.

Each check is also run against a faked measurement and must reject it: a timer that advances by
the same step on every call (every model takes equally long: ratio 1.0), a memory probe that
returns fixed numbers, and dense and pruned swapped. A test that passed with those would not be
testing the measurement.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeprune.measure import pair
from edgeprune.data import load_npz
from edgeprune.fileio import file_digest
from edgeprune.profiling import profile_pair
from edgeprune.quantize import calibration_path
from edgeprune.report import Report
from edgeprune.targets import load_target

from .cost_models import BIG, SMALL, macs, mlp_onnx, weight_mb

BATCH = 64                      # batch-64 ratios repeat within a few percent; batch 1 drifts ±30 %


def cost_problems(report: Report, dense: tuple[int, ...], pruned: tuple[int, ...]) -> list[str]:
    """Where the report's figures do not follow the cost of the two models (empty: they do).

    Latency: the pruned/dense p50 ratio at batch 64 is within 3x of the MAC ratio and at least 3.3x
    away from 1 on the MAC ratio's side (the issue's "< 0.3" for a 30x smaller model).
    Memory: the model RSS differs in the direction of the weight bytes, by at least half of them.
    """
    problems = []
    want = macs(pruned) / macs(dense)
    r = report.latency[BATCH].ratio_p50
    fits = r is not None and (want / 3 < r < 0.3 if want < 1 else 1 / 0.3 < r < want * 3)
    if not fits:
        problems.append(f"latency ratio {r} at batch {BATCH} does not follow the MAC ratio {want:.3f}")
    if report.latency_batch == BATCH and report.ratios.latency_p50 != r:
        problems.append(f"latency ratio {report.ratios.latency_p50} in the ratios, {r} in the batch table")
    weights = weight_mb(dense) - weight_mb(pruned)
    rss = report.dense.model_rss_mb - report.pruned.model_rss_mb
    if not (np.sign(rss) == np.sign(weights) and abs(rss) > 0.5 * abs(weights)):
        problems.append(f"model memory dense - pruned {rss:.1f} MB does not follow the weights' {weights:.1f} MB")
    peak = report.dense.peak_rss_mb - report.pruned.peak_rss_mb
    if np.sign(peak) != np.sign(weights):
        problems.append(f"peak memory dense - pruned {peak:.1f} MB has the wrong sign (weights: {weights:.1f} MB)")
    return problems


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cost")
    return {"big": mlp_onnx(out / "big.onnx", BIG, seed=1), "small": mlp_onnx(out / "small.onnx", SMALL, seed=2)}


@pytest.fixture(scope="module")
def images():
    d = load_npz(calibration_path("calibration/fmnist.npz"))    # 512 real Fashion-MNIST images
    return d.x[:256], d.y[:256]


@pytest.fixture(scope="module")
def target():
    t = load_target("host-cpu")
    return dataclasses.replace(t, run=dataclasses.replace(t.run, warmup=5, iterations=40, batch_sizes=(BATCH,)))


def profile(models, images, target, tmp_path, dense="big", pruned="small") -> Report:
    return profile_pair(models[dense], models[pruned], target, *images, tmp_path, progress=False)


@pytest.fixture(scope="module")
def report(models, images, target, tmp_path_factory) -> Report:
    return profile(models, images, target, tmp_path_factory.mktemp("work"))


def test_latency_and_memory_follow_the_cost_of_the_models(report, models):
    assert cost_problems(report, BIG, SMALL) == []
    assert report.ratios.macs == pytest.approx(macs(SMALL) / macs(BIG))
    # each side describes its own files (biases are zero: nonzero parameters are the weights)
    for side, widths, path in ((report.dense, BIG, models["big"]), (report.pruned, SMALL, models["small"])):
        assert (side.macs, side.params) == (macs(widths), macs(widths))
        assert side.total_params == macs(widths) + sum(widths[1:])
        assert side.path == str(path) and side.size_bytes == path.stat().st_size and side.sha256 == file_digest(path)
        assert 0 < side.size_xz_bytes <= side.size_bytes and side.opset == 17 and side.accuracy is not None
    engines = report.run["engines"]
    assert (report.dense.engine_bytes, report.pruned.engine_bytes) == tuple(Path(engines[k]).stat().st_size for k in ("dense", "pruned"))
    bl = report.latency[BATCH]
    assert 0.5 < bl.aa_ratio_p50 < 2.0    # the A/A control times the same engine: near 1, even on busy cores
    assert any(f"Batch {BATCH}: the pruned model is" in n and "× as fast" in n for n in report.notes)


def test_dense_and_pruned_swapped_give_the_inverse_ratio(models, images, target, tmp_path):
    swapped = profile(models, images, target, tmp_path, dense="small", pruned="big")
    assert cost_problems(swapped, SMALL, BIG) == []
    # ... and the checks written for the right order reject it.
    assert len(cost_problems(swapped, BIG, SMALL)) == 3
    assert any(f"Batch {BATCH}: the pruned model is slower" in n for n in swapped.notes)


def test_a_timer_with_a_constant_step_and_a_fixed_memory_probe_are_rejected(models, images, target, tmp_path, monkeypatch):
    ticks = itertools.count(0, 1000)
    monkeypatch.setattr(time, "perf_counter_ns", lambda: next(ticks))
    monkeypatch.setattr(pair, "measure_memory", lambda *a, **k: {"peak_rss_mb": 80.0, "model_rss_mb": 10.0})
    faked = profile(models, images, target, tmp_path)
    assert faked.latency[BATCH].ratio_p50 == 1.0
    problems = cost_problems(faked, BIG, SMALL)
    assert [p.split()[0] for p in problems] == ["latency", "model", "peak"]


def test_the_memory_probe_charges_each_model_its_own_weights(models):
    # The probe as profile_pair starts it: a fresh process per model. The larger model's extra RSS is
    # its extra weights, give or take ONNX Runtime's copies (at least half and at most 4x of them).
    def probe(path):
        out = subprocess.run([sys.executable, "-m", "edgeprune.memprobe", str(path), "--threads", "1", "--runs", "2"],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    big, small = probe(models["big"]), probe(models["small"])
    extra = weight_mb(BIG) - weight_mb(SMALL)
    assert 0.5 * extra < big["model_rss_mb"] - small["model_rss_mb"] < 4 * extra
    for r in (big, small):
        assert r["model_rss_mb"] == pytest.approx(r["peak_rss_mb"] - r["baseline_rss_mb"])
        assert 20 < r["baseline_rss_mb"] < r["peak_rss_mb"] < 1000 and r["after_run_rss_mb"] <= r["peak_rss_mb"]
        assert (r["peak_reset"], r["runs"], r["batch"], r["arena"]) == (True, 2, 1, False)
