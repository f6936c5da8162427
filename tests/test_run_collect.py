"""`collect RUN`: a run measured on a board by hand becomes the same report a live run writes. Two
sources: the trtexec scripts deploy writes for a Jetson target, run here against a fake `trtexec`
(no GPU here; it times the engines' real ONNX models), and the real device side's result.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeprune.cli import main
from edgeprune.device.job import job_dict
from edgeprune.report.schema import LatencyStats
from edgeprune.targets import load_target

from .cost_models import BIG, SMALL, mlp_onnx
from .fake_tensorrt import orin_nano_toml

ROOT = Path(__file__).resolve().parents[1]
JETSON_FP16 = orin_nano_toml("Orin Nano, fp16, collected", run="iterations = 25\nbatch_sizes = [1, 16]\n")


def _fake_trtexec_on_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "trtexec"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "fake_trtexec.py"} "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_collect_reads_the_trtexec_scripts_outputs_fake_trtexec(tmp_path, capsys, lenet300_half_ckpt, lenet300_ckpt):
    target = tmp_path / "orin-fp16.toml"
    target.write_text(JETSON_FP16)
    run = tmp_path / "run"
    code = main(["deploy", str(lenet300_half_ckpt), "--baseline", str(lenet300_ckpt), "--target", str(target),
                 "--test-limit", "40", "-o", str(run)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0 and f"then `edgeprune collect {run}`" in out and not (run / "report.json").exists()
    assert main(["collect", str(run)]) == 2 and "missing: run the scripts on the board" in capsys.readouterr().err

    env = _fake_trtexec_on_path(tmp_path)
    for script in ("trtexec_build.sh", "trtexec_bench.sh"):
        p = subprocess.run(["bash", script], cwd=run, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    assert main(["collect", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((run / "report.json").read_text()) and (run / "report.md").is_file()
    assert (run / "latency.png").is_file()
    assert doc["backend"] == "tensorrt" and doc["precision"] == "fp16" and set(doc["latency"]) == {"1", "16"}
    # each side's figures are the ones in its own --exportTimes file: dense (A), dense again (A'), pruned (B)
    for bs in (1, 16):
        for side, name in (("dense", f"dense.b{bs}"), ("control", f"dense.b{bs}.control"), ("pruned", f"pruned.b{bs}")):
            ms = [r["computeMs"] for r in json.loads((run / f"{name}.times.json").read_text())]
            assert len(ms) == 25
            assert doc["latency"][str(bs)][side]["p50"] == pytest.approx(float(np.percentile(ms, 50)))
            assert doc["latency"][str(bs)][side]["max"] == pytest.approx(max(ms))
    assert doc["dense"]["accuracy"] is None and doc["agreement"] is None   # trtexec feeds its own inputs
    for k in ("dense", "pruned"):
        gemms = sum(n.op_type == "Gemm" for n in onnx.load(str(run / f"{k}.onnx")).graph.node)
        assert doc["engine_facts"][k] == {"device_memory_bytes": 2**18, "layers": gemms, "precisions": {"FP16": gemms},
                                          "layer_types": {"CaskGemm": gemms}}
    assert doc["notes"][0].startswith("Collected from trtexec's files")


def test_collect_reads_the_device_sides_result(tmp_path, capsys, fmnist_small):
    """A job run by hand with the real device side (`python -m edgeprune.device run JOB`) on host-cpu."""
    job = tmp_path / "job"
    job.mkdir()
    mlp_onnx(job / "dense.onnx", BIG)
    mlp_onnx(job / "pruned.onnx", SMALL)      # 1/30 of the dense model's MACs
    te = fmnist_small.test().head(64)
    np.save(job / "x.npy", te.x.astype(np.float32))
    np.save(job / "y.npy", te.y.astype(np.int64))
    tgt = load_target("host-cpu")
    tgt = replace(tgt, run=replace(tgt.run, iterations=20, warmup=3, batch_sizes=(1, 16), min_seconds=0.0))
    (job / "job.json").write_text(json.dumps(job_dict(tgt)))
    p = subprocess.run([sys.executable, "-m", "edgeprune.device", "run", str(job), "--cache", str(tmp_path / "cache")],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    result = json.loads((job / "result.json").read_text())

    assert main(["collect", str(job), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((job / "report.json").read_text()) and doc["target"] == "host-cpu"
    for bs in ("1", "16"):
        for i, side in enumerate(("dense", "control", "pruned")):
            want = LatencyStats.from_ns(result["times_ns"][bs][i], tgt.run.percentiles)
            assert doc["latency"][bs][side]["p50"] == pytest.approx(want.p50)
    assert doc["dense"]["accuracy"] == pytest.approx(result["accuracy"]["dense"])
    assert doc["agreement"]["top1"] == pytest.approx(result["agreement"]["top1"])
    assert doc["device"]["hostname"] == result["hostname"] and doc["dense"]["peak_rss_mb"] > 0
    assert doc["latency"]["16"]["ratio_p50"] < 0.5       # the pruned model is the cheap one: the sides are not swapped
    assert "power" not in result["extra"] and doc["power"] is None      # no tegrastats here: no power figures


def test_collect_refuses_a_folder_with_nothing_to_collect(tmp_path, capsys):
    assert main(["collect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to collect" in err[0]
    assert main(["collect", str(tmp_path / "nope")]) == 2 and "run directory not found" in capsys.readouterr().err
