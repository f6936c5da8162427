"""Power on the board: the real device side (`python -m edgeprune.device run JOB`) samples tegrastats
across an idle window and one window per model, and the result carries power and energy per
inference; a fake `tegrastats` on PATH stands in for a Jetson's sensors (it prints the recorded AGX
Orin line, its GPU rail stepping), and the energy is checked against a hand-computed trapezoid
integral of the samples the board side integrated, which must be what tegrastats printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeprune.cli import main
from edgeprune.device.job import job_dict
from edgeprune.targets import load_target

from .cost_models import BIG, SMALL, mlp_onnx

ROOT = Path(__file__).resolve().parents[1]
AGX_ORIN_RAILS = ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]   # no VDD_IN: the sum


def _trapezoid_mj(trace: list[list[float]], t0: float, t1: float) -> float:
    """∫ P dt over [t0, t1] by hand: straight lines between samples, cut at the window's edges."""
    t, p = np.array(trace).T
    inside = (t > t0) & (t < t1)
    ts = np.concatenate([[t0], t[inside], [t1]])
    ps = np.concatenate([[np.interp(t0, t, p)], p[inside], [np.interp(t1, t, p)]])
    return float(np.sum((ps[1:] + ps[:-1]) / 2 * np.diff(ts)))


def test_device_side_measures_energy_per_inference_fake_tegrastats(tmp_path, capsys, fmnist_small):
    job = tmp_path / "job"
    job.mkdir()
    mlp_onnx(job / "dense.onnx", BIG)
    mlp_onnx(job / "pruned.onnx", SMALL)
    te = fmnist_small.test().head(32)
    np.save(job / "x.npy", te.x.astype(np.float32))
    np.save(job / "y.npy", te.y.astype(np.int64))
    tgt = load_target("host-cpu")
    tgt = replace(tgt, run=replace(tgt.run, iterations=5, warmup=2, batch_sizes=(4,), min_seconds=0.0))
    (job / "job.json").write_text(json.dumps(job_dict(tgt)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tegrastats").write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "fake_tegrastats.py"} "$@"\n')
    (bin_dir / "tegrastats").chmod(0o755)
    log = tmp_path / "printed.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_TEGRASTATS_LOG": str(log)}
    p = subprocess.run([sys.executable, "-m", "edgeprune.device", "run", str(job), "--cache", str(tmp_path / "cache")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    power = json.loads((job / "result.json").read_text())["extra"]["power"]
    printed = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]   # (time, total mW)

    assert power["rails"] == AGX_ORIN_RAILS and power["source"] == "tegrastats" and power["batch"] == 4
    for label in ("dense", "pruned"):
        m = power["models"][label]
        t0, t1 = m["window"]
        assert t1 - t0 >= 1.0 and m["inferences"] > 0 and m["inferences"] % 4 == 0
        # each sample integrated is the line tegrastats printed last before the board side stamped it
        assert len(m["trace"]) >= 10
        for t, mw in m["trace"]:
            assert mw == max((e for e in printed if e[0] <= t), key=lambda e: e[0])[1]
        assert m["energy_mj_per_inference"] == pytest.approx(_trapezoid_mj(m["trace"], t0, t1) / m["inferences"])
        assert m["mean_w"] == pytest.approx(_trapezoid_mj(m["trace"], t0, t1) / (t1 - t0) / 1000)
        assert min(mw for _, mw in printed) / 1000 <= m["idle_w"] <= max(mw for _, mw in printed) / 1000
    assert power["energy_mj_per_inference"] == power["models"]["pruned"]["energy_mj_per_inference"]

    assert main(["collect", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"mean_w", "energy_mj_per_inference", "idle_w", "rails", "power_mode"} <= set(report["power"])
    assert report["power"]["energy_mj_per_inference"] == power["energy_mj_per_inference"]
    assert "energy per inference (mJ)" in (job / "report.md").read_text()

