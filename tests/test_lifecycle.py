"""One lifecycle for every backend: checks before the first export, the opset and batch a target
needs, `profile` refusing what it cannot measure here, and no import circles between the stages.
TensorRT cannot run here: its deploys stop after planning (no fake needed)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import edgeprune
from edgeprune.backends.trt_plan import onnx_facts
from edgeprune.cli import main
from edgeprune.measure.timing import time_interleaved
from edgeprune.measure.verdict import noise_band, verdict, within_noise
from edgeprune.onnx_stats import opset_of, _load

no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")

DLA_TOML = """description = "Xavier NX DLA (test copy)"
backend = "tensorrt"
[stack]
tensorrt = "8.5.2"
[hardware]
module = "jetson-xavier-nx"
dla_cores = 2
sparse_tensor_cores = false
[build]
precision = "fp16"
dla_core = 0
gpu_fallback = true
[run]
iterations = 20
batch_sizes = [1, 16]
"""


@pytest.fixture(scope="module")
def pruned(lenet300_half_ckpt):
    return lenet300_half_ckpt


def _deploy(pruned, baseline, target, run, *extra):
    return main(["deploy", str(pruned), "--baseline", str(baseline), "--target", str(target), "--test-limit", "50",
                 "-o", str(run), *extra])


@no_tensorrt
def test_dla_target_deploys_with_a_static_batch(capsys, tmp_path, pruned, lenet300_ckpt):
    target = tmp_path / "xavier-nx-dla.toml"
    target.write_text(DLA_TOML)
    run = tmp_path / "run"
    assert _deploy(pruned, lenet300_ckpt, target, run) == 0, capsys.readouterr().err
    for side in ("dense", "pruned"):
        assert onnx_facts(run / f"{side}.onnx").input_dims == (1, 1, 28, 28)   # the smallest batch asked for
    out = " ".join(capsys.readouterr().out.split())
    assert "DLA" in out and "--useDLACore=0" in out


@no_tensorrt
def test_opset_follows_the_target_and_a_higher_one_is_refused_before_export(capsys, tmp_path, pruned, lenet300_ckpt):
    run = tmp_path / "run"
    assert _deploy(pruned, lenet300_ckpt, "jetson-nano", run) == 0, capsys.readouterr().err
    assert opset_of(_load(run / "pruned.onnx", external=False)) == 13      # TensorRT 8.2's parser reads 13
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert _deploy(pruned, lenet300_ckpt, "jetson-nano", refused, "--opset", "17") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--opset 17 is above 13" in err
    assert not refused.exists()


@pytest.mark.parametrize("target", ["host-cpu", "jetson-orin-nano"])
def test_calibration_of_the_wrong_shape_is_refused_before_any_export(capsys, tmp_path, pruned, lenet300_ckpt, target):
    bad = tmp_path / "rgb.npz"
    np.savez(bad, x=np.zeros((16, 3, 32, 32), np.float32), y=np.zeros(16, np.int64))
    run = tmp_path / "run"
    assert _deploy(pruned, lenet300_ckpt, target, run, "--precision", "int8", "--calibration", str(bad)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "have shape (3, 32, 32); the model takes (1, 28, 28)" in err
    assert not run.exists()      # nothing exported, no run directory left behind


@no_tensorrt
def test_profile_refuses_a_target_it_cannot_measure_before_it_starts(capsys, tmp_path):
    # the ONNX files do not even exist: the refusal comes first
    code = main(["profile", str(tmp_path / "pruned.onnx"), "--baseline", str(tmp_path / "dense.onnx"),
                 "--target", "jetson-orin-nano"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "jetson-orin-nano cannot be measured on this machine: TensorRT is not installed" in err


def test_validate_runs_the_target_checks_deploy_runs(capsys, tmp_path, lenet300_ckpt):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(lenet300_ckpt), "-o", str(onnx_path), "--no-check"]) == 0
    thor = tmp_path / "thor.toml"
    thor.write_text(DLA_TOML.replace('"8.5.2"', '"11.1.0"').replace("dla_core = 0", "dla_core = -1"))
    capsys.readouterr()
    assert main(["validate", str(onnx_path), "--target", str(thor)]) == 1
    assert "target: precision fp16 on TensorRT 11 needs an FP16 ONNX" in capsys.readouterr().out


class _DeviceClocked:
    """A session with its own device clock (as TensorRT's CUDA events are): a fixed cost per run."""

    def __init__(self, name: str, cost_ns: int, log: list[str]):
        self.name, self.cost_ns, self.log = name, cost_ns, log

    def run(self, x):
        self.log.append(self.name)
        return x

    def device_time_ns(self, x):
        self.log.append(self.name)
        return self.cost_ns


def test_timing_loop_reads_a_device_clock_and_rotates_the_order():
    log: list[str] = []
    sessions = [_DeviceClocked("A", 3000, log), _DeviceClocked("A'", 3000, log), _DeviceClocked("B", 1000, log)]
    times = time_interleaved(sessions, np.zeros((1, 4), np.float32), warmup=1, iterations=4)
    assert [t.tolist() for t in times] == [[3000] * 4, [3000] * 4, [1000] * 4]
    assert log[3:] == ["A", "A'", "B", "A'", "B", "A", "B", "A", "A'", "A", "A'", "B"]


def test_one_verdict_for_report_and_explain():
    assert noise_band(1.0) == 0.02 and noise_band(1.05) == pytest.approx(0.10)
    assert within_noise(1.08, 1.05) and verdict(1.08, 1.05) == "no measurable speed-up"
    assert verdict(0.5, 1.0) == "2.00x faster" and verdict(1.5, 1.0) == "1.50x slower"


def _import_graph(root: Path) -> dict[str, set[str]]:
    """edgeprune module -> edgeprune modules it imports, function-level imports included (the
    TYPE_CHECKING ones left out: they never run)."""
    mods = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
            for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for i in ast.walk(tree) if isinstance(i, ast.If) and "TYPE_CHECKING" in ast.unparse(i.test)
                       for n in ast.walk(i)}
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    c = ".".join(parts[:i])
                    # a module's own packages are already initialised when it runs
                    if c in mods and c != m and not m.startswith(c + "."):
                        graph[m].add(c)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph[m] - seen:
            if n == goal:
                return True
            seen.add(n)
            todo.append(n)
    return False


@pytest.mark.parametrize("a, b", [("edgeprune.targets", "edgeprune.backends.onnxruntime"),
                                  ("edgeprune.targets", "edgeprune.backends.tensorrt"),
                                  ("edgeprune.report.schema", "edgeprune.report.render"),
                                  ("edgeprune.report.schema", "edgeprune.report.plot"),
                                  ("edgeprune.run.collect", "edgeprune.profiling")])
def test_no_import_circle(a, b):
    graph = _import_graph(Path(edgeprune.__file__).parent)
    assert not (_reaches(graph, a, b) and _reaches(graph, b, a)), f"{a} and {b} import each other"
