"""TensorRT backend: engine plans per target, golden trtexec command lines per API generation,
parsers on trtexec output fixtures, the Python API build path per generation (fake `tensorrt`
module: no GPU here) and `deploy` to a TensorRT target on this GPU-less machine."""

from __future__ import annotations

import importlib.util
import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeprune.api import DataOptions
from edgeprune.backends import get_backend
from edgeprune.backends.tensorrt import NOT_INSTALLED, TrtSession, build_engine, build_plans_cached, make_calibrator
from edgeprune.backends.trt_plan import (EnginePlan, OnnxFacts, onnx_facts, plan_engine,
                                         plan_problems)
from edgeprune.backends.trtexec import (bench_command, build_command, parse_sparsity, parse_trtexec_layer_info,
                                        parse_trtexec_profile, parse_trtexec_summary, parse_trtexec_times)
from edgeprune.cli import main
from edgeprune.backends.trt_versions import trt_generation
from edgeprune.data import load_npz
from edgeprune.errors import InputError
from edgeprune.report.schema import LatencyStats
from edgeprune.targets import BuildPolicy, RunPolicy, Target

from .conftest import CALIBRATION
from .cost_models import BIG, SMALL, macs, mlp_onnx
from .fake_tensorrt import FakeCuda, install_fake_gpu, make_fake_tensorrt, orin_nano_toml

FIX = Path(__file__).parent / "fixtures" / "trtexec"
DYNAMIC = OnnxFacts("input", (None, 1, 28, 28), 17, 0, 0)
RUN = RunPolicy(warmup=10, iterations=300, batch_sizes=(1, 32), percentiles=(50.0, 90.0, 99.0), min_seconds=5.0)

NANO = Target("jetson-nano", "Nano, JetPack 4.6", "tensorrt", stack={"tensorrt": "8.2.1"},
              hardware={"module": "jetson-nano", "dla_cores": 0, "sparse_tensor_cores": False},
              build=BuildPolicy(precision="fp16", workspace_mb=256), run=RUN)
ORIN = Target("jetson-orin-nano", "Orin Nano, JetPack 6.2", "tensorrt", stack={"tensorrt": "10.3.0"},
              hardware={"module": "jetson-orin-nano-8gb", "dla_cores": 0, "sparse_tensor_cores": True},
              build=BuildPolicy(precision="int8", sparsity="2:4", calibration="calibration/fmnist.npz",
                                calibration_method="entropy"), run=RUN)
XAVIER = Target("jetson-xavier-nx", "Xavier NX, JetPack 5.1", "tensorrt", stack={"tensorrt": "8.5.2"},
                hardware={"module": "jetson-xavier-nx", "dla_cores": 2, "sparse_tensor_cores": False},
                build=BuildPolicy(precision="fp16", dla_core=1, gpu_fallback=True, timing_cache=False), run=RUN)
THOR = Target("jetson-thor", "Thor, JetPack 7", "tensorrt", stack={"tensorrt": "11.1.0"}, hardware={"module": "jetson-thor"},
              build=BuildPolicy(precision="int8", calibration="calibration/fmnist.npz"), run=RUN)


def plan_for(target: Target, facts: OnnxFacts = DYNAMIC, samples: int = 512) -> EnginePlan:
    return plan_engine(target, facts, model="pruned", onnx_file="pruned.onnx", calibration_samples=samples)


# ---------------------------------------------------------------- versions and plans
@pytest.mark.parametrize("version, gen", [("8.2.1", "8.2"), ("8.4.3.1", "8.2"), ("8.5.2", "8.5-10"), ("8.6.2", "8.5-10"),
                                          ("10.3.0.30", "8.5-10"), ("10.16", "8.5-10"), ("11.1.0", "11"), ("11.4.1", "11")])
def test_generation_of_tensorrt_versions(version, gen):
    assert trt_generation(version) == gen


@pytest.mark.parametrize("bad", ["7.1.3", "8.0.1", "ten", ""])
def test_generation_refuses_old_or_malformed_versions(bad):
    with pytest.raises(InputError):
        trt_generation(bad)


def test_plan_for_orin_int8_sparse_uses_flags_and_calibrator_and_round_trips_as_json():
    p = plan_for(ORIN)
    assert (p.generation, p.int8_mode, p.strongly_typed, p.explicit_batch) == ("8.5-10", "calibrator", False, False)
    assert p.builder_flags == ["INT8", "SPARSE_WEIGHTS"]
    assert p.profile == {"min": [1, 1, 28, 28], "opt": [1, 1, 28, 28], "max": [32, 1, 28, 28]}
    assert (p.calibration.calibrator, p.calibration.cache, p.calibration.batch_size) == \
        ("IInt8EntropyCalibrator2", "pruned.calib.cache", 32)
    assert p.duration_s == 5 and p.iterations == 300 and p.timing_cache == "jetson-orin-nano.trt10.3.0.timing.cache"
    assert EnginePlan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_plan_for_nano_notes_that_sparsity_needs_ampere():
    p = plan_for(replace(NANO, build=replace(NANO.build, sparsity="2:4")))
    assert p.explicit_batch and p.builder_flags == ["FP16", "SPARSE_WEIGHTS"]
    assert any("no sparse tensor cores" in n for n in p.notes)


def test_plan_for_dla_is_static_and_adds_gpu_fallback():
    p = plan_for(XAVIER)
    assert p.batch_sizes == [1] and p.profile["min"] == p.profile["max"] == [1, 1, 28, 28]
    assert p.builder_flags == ["FP16", "GPU_FALLBACK"] and p.dla_core == 1
    assert any("DLA needs static shapes" in n for n in p.notes)


def test_plan_for_tensorrt_11_int8_is_a_qdq_onnx_without_flags():
    p = plan_for(THOR)
    assert (p.int8_mode, p.onnx, p.strongly_typed, p.builder_flags) == ("qdq", "pruned.qdq.onnx", True, [])
    assert p.calibration.cache == "" and p.calibration.calibrator == ""


@pytest.mark.parametrize("target, change, expect", [
    (THOR, {"precision": "fp16"}, "needs an FP16 ONNX"),
    (ORIN, {"calibration_method": "percentile"}, "has no TensorRT 10.3.0 calibrator"),
    (ORIN, {"calibration": ""}, "needs calibration data"),
    (XAVIER, {"dla_core": 2}, "does not exist"),
    (XAVIER, {"precision": "fp32"}, "DLA runs FP16 and INT8 only"),
])
def test_plan_problems_name_what_cannot_be_built(target, change, expect):
    t = replace(target, build=replace(target.build, **change))
    problems = plan_problems(t)
    assert any(expect in p for p in problems), problems
    with pytest.raises(InputError, match=expect.split()[0]):
        plan_for(t)


@pytest.mark.parametrize("version, ok", [("10.7.0", True), ("10.8.0", False), ("11.3.0", False), ("11.4.1", True)])
def test_dla_exists_up_to_10_7_and_again_from_11_4_1(version, ok):
    t = replace(XAVIER, stack={"tensorrt": version}, build=replace(XAVIER.build, precision="int8", calibration="c.npz"))
    assert (not any("no DLA support" in p for p in plan_problems(t))) == ok


def test_plan_problems_without_a_tensorrt_version():
    assert "stack.tensorrt" in plan_problems(replace(ORIN, stack={}))[0]


# ---------------------------------------------------------------- golden trtexec command lines
def test_trtexec_8_2_fp16_commands():
    p = plan_for(NANO)
    assert shlex.join(build_command(p)) == (
        "trtexec --onnx=pruned.onnx --saveEngine=pruned.plan --explicitBatch "
        "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28 --maxShapes=input:32x1x28x28 "
        "--workspace=256 --fp16 --timingCacheFile=jetson-nano.trt8.2.1.timing.cache "
        "--profilingVerbosity=detailed --exportLayerInfo=pruned.layers.json --buildOnly")
    assert shlex.join(bench_command(p, 32)) == (
        "trtexec --loadEngine=pruned.plan --shapes=input:32x1x28x28 --warmUp=2000 --duration=5 --iterations=300 "
        "--percentile=99 --useCudaGraph --useSpinWait --separateProfileRun "
        "--exportTimes=pruned.b32.times.json --exportProfile=pruned.b32.profile.json")


def test_trtexec_10_3_int8_calibration_cache_and_2_4_sparsity_commands():
    p = plan_for(ORIN)
    assert shlex.join(build_command(p)) == (
        "trtexec --onnx=pruned.onnx --saveEngine=pruned.plan "
        "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28 --maxShapes=input:32x1x28x28 "
        "--memPoolSize=workspace:1024 --int8 --calib=pruned.calib.cache --sparsity=enable "
        "--timingCacheFile=jetson-orin-nano.trt10.3.0.timing.cache "
        "--profilingVerbosity=detailed --exportLayerInfo=pruned.layers.json --skipInference")
    assert shlex.join(bench_command(p, 1)) == (
        "trtexec --loadEngine=pruned.plan --shapes=input:1x1x28x28 --warmUp=2000 --duration=5 --iterations=300 "
        "--percentile=50,90,99 --useCudaGraph --useSpinWait --separateProfileRun "
        "--exportTimes=pruned.b1.times.json --exportProfile=pruned.b1.profile.json")


def test_trtexec_8_5_dla_with_gpu_fallback_commands():
    p = plan_for(XAVIER)
    assert shlex.join(build_command(p)) == (
        "trtexec --onnx=pruned.onnx --saveEngine=pruned.plan "
        "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28 --maxShapes=input:1x1x28x28 "
        "--memPoolSize=workspace:1024 --fp16 --useDLACore=1 --allowGPUFallback "
        "--profilingVerbosity=detailed --exportLayerInfo=pruned.layers.json --skipInference")
    # DLA work cannot be captured in a CUDA graph; the runtime needs the core too.
    assert shlex.join(bench_command(p, 1)) == (
        "trtexec --loadEngine=pruned.plan --shapes=input:1x1x28x28 --useDLACore=1 --warmUp=2000 --duration=5 "
        "--iterations=300 --percentile=50,90,99 --useSpinWait --separateProfileRun "
        "--exportTimes=pruned.b1.times.json --exportProfile=pruned.b1.profile.json")


def test_trtexec_11_int8_is_the_qdq_onnx_without_precision_flags():
    p = plan_for(THOR)
    build, bench = build_command(p), bench_command(p, 1)
    assert shlex.join(build) == (
        "trtexec --onnx=pruned.qdq.onnx --saveEngine=pruned.plan "
        "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28 --maxShapes=input:32x1x28x28 "
        "--memPoolSize=workspace:1024 --timingCacheFile=jetson-thor.trt11.1.0.timing.cache "
        "--profilingVerbosity=detailed --exportLayerInfo=pruned.layers.json --skipInference")
    # CUDA graphs, spin-wait and a separate profiling run are 11.x defaults (the flags are no-ops).
    assert shlex.join(bench) == (
        "trtexec --loadEngine=pruned.plan --shapes=input:1x1x28x28 --warmUp=2000 --duration=5 --iterations=300 "
        "--percentile=50,90,99 --exportTimes=pruned.b1.times.json --exportProfile=pruned.b1.profile.json")


def test_trtexec_static_batch_model_has_no_shape_flags():
    p = plan_for(replace(ORIN, build=replace(ORIN.build, precision="fp16", sparsity="none")),
                 OnnxFacts("x", (8, 3, 32, 32), 17, 0, 0))
    assert p.batch_sizes == [8] and not any("Shapes" in a or "--shapes" in a for a in build_command(p) + bench_command(p, 8))


# ---------------------------------------------------------------- parsers on fixtures
def test_parse_times_10_3():
    r = parse_trtexec_times(FIX / "times_10.3.json")
    assert r.iterations == 10 and r.dropped_warmup == 0
    assert (r.compute_ms.min, r.compute_ms.max) == (0.20, 0.29)
    assert r.compute_ms.median == pytest.approx(0.245) and r.compute_ms.mean == pytest.approx(0.245)
    assert r.latency_ms.median == pytest.approx(0.285) and r.enqueue_ms.mean == pytest.approx(0.05)
    # 10 iterations between the first H2D start and the last D2H end
    assert r.throughput_qps == pytest.approx(10 / (2003.54 - 2000.51) * 1000, rel=1e-6)


def test_parse_times_8_2_drops_the_warm_up_it_still_exports():
    everything = parse_trtexec_times(FIX / "times_8.2.json")
    r = parse_trtexec_times(FIX / "times_8.2.json", warmup_ms=200)
    assert everything.iterations == 10 and (r.iterations, r.dropped_warmup) == (6, 4)
    assert r.compute_ms.max == pytest.approx(0.35) and r.compute_ms.median == pytest.approx(0.325)


def test_parse_times_refuses_other_json(tmp_path):
    (tmp_path / "p.json").write_text('[{"count": 3}]')
    with pytest.raises(InputError, match="missing"):
        parse_trtexec_times(tmp_path / "p.json")
    with pytest.raises(InputError, match="not found"):
        parse_trtexec_times(tmp_path / "none.json")


def test_parse_profile_10_3_and_8_2():
    p = parse_trtexec_profile(FIX / "profile_10.3.json")
    assert p.count == 120 and [layer.name for layer in p.layers][:2] == ["/fc1/Gemm + /act1/Relu", "/fc2/Gemm + /act2/Relu"]
    assert p.layers[0].median_ms == pytest.approx(0.098) and p.total_average_ms == pytest.approx(0.2)
    old = parse_trtexec_profile(FIX / "profile_8.2.json")
    assert old.count == 50 and old.layers[0].median_ms is None and old.layers[0].percentage == 60


def test_parse_profile_reads_unescaped_names_and_non_finite_numbers(tmp_path):
    # trtexec writes names verbatim and floats through std::ostream ("nan", "inf").
    (tmp_path / "p.json").write_text('[\n  { "count" : 2 }\n'
                                     ', { "name" : "Conv "quoted" 3", "timeMs" : 0.5, "averageMs" : 0.25, "medianMs" : 0.25, "percentage" : nan }\n'
                                     ', { "name" : "Gemm", "timeMs" : inf, "averageMs" : 0.1, "medianMs" : 0.1, "percentage" : -nan }\n]\n')
    p = parse_trtexec_profile(tmp_path / "p.json")
    assert [layer.name for layer in p.layers] == ["Gemm", 'Conv "quoted" 3'] and p.layers[0].time_ms == float("inf")


def test_parse_layer_info_bindings_io_tensors_and_names_only():
    d = parse_trtexec_layer_info(FIX / "layers_10.3.json")
    assert d.io_key == "Bindings" and d.io_tensors == ["input", "logits"] and d.detailed
    assert [layer.sparse_weights for layer in d.layers] == [True, False, None]
    assert d.layer_types() == {"CaskConvolution": 2, "Reformat": 1}
    assert d.layers[2].output_format == "Row major linear FP32"
    new = parse_trtexec_layer_info(FIX / "layers_11.1.json")
    assert new.io_key == "I/O Tensors" and new.io_tensors == ["input", "logits"] and "Int8" in new.layers[0].output_format
    names = parse_trtexec_layer_info(FIX / "layers_names_only.json")
    assert not names.detailed and [layer.name for layer in names.layers][-1] == "/fc3/Gemm"


def test_parse_sparsity_lines_of_trtexec_and_python_logs():
    s = parse_sparsity((FIX / "build_10.3.log").read_text())
    assert s.eligible == ["/conv1/Conv + /relu1/Relu", "/conv3/Conv + /add/Add + /relu3/Relu", "/fc/Gemm"]
    assert s.picked == ["/conv1/Conv + /relu1/Relu"]
    empty = parse_sparsity((FIX / "build_python_8.2.log").read_text())
    assert (empty.eligible, empty.picked) == ([], [])
    assert parse_sparsity((FIX / "build_no_sparsity.log").read_text()).eligible is None


def test_parse_summary_10_3_and_8_2():
    s = parse_trtexec_summary((FIX / "bench_10.3.log").read_text())
    gpu = s.metrics["GPU Compute Time"]
    assert s.throughput_qps == 2039.58 and gpu.median == 0.246826 and gpu.percentiles == {
        "p50": 0.246826, "p90": 0.258057, "p99": 0.300781}
    assert s.total_gpu_compute_s == 1.52501 and s.warnings[0].startswith("GPU compute time is unstable")
    old = parse_trtexec_summary((FIX / "bench_8.2.log").read_text())
    assert old.metrics["End-to-End Host Latency"].median == 2.3803 and old.metrics["GPU Compute Time"].percentiles == {"p99": 1.4455}
    assert old.warnings == []
    with pytest.raises(InputError, match="no trtexec performance summary"):
        parse_trtexec_summary((FIX / "build_10.3.log").read_text())


# ---------------------------------------------------------------- Python API build path (fake tensorrt)
def _calls(trt, name):
    return [args for n, args in trt.calls if n == name]


def _run_dir(tmp_path, plan: EnginePlan, samples: int = 70, widths: tuple[int, ...] = SMALL) -> Path:
    mlp_onnx(tmp_path / plan.onnx, widths)     # the fake engine runs it
    if plan.calibration:
        x = np.random.default_rng(0).random((samples, 1, 28, 28), dtype=np.float32)
        np.save(tmp_path / plan.calibration.inputs, x)
    return tmp_path


def test_build_8_2_fake_tensorrt(tmp_path):
    trt = make_fake_tensorrt("8.2.1")
    plan = plan_for(NANO)
    r = build_engine(plan, _run_dir(tmp_path, plan), trt=trt, cuda=FakeCuda())
    assert _calls(trt, "builder.create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH),)]
    assert _calls(trt, "config.max_workspace_size") == [(256 << 20,)]
    assert _calls(trt, "config.set_flag") == [("FP16",)]
    assert _calls(trt, "engine.device_memory_size") and not _calls(trt, "engine.device_memory_size_v2")
    plan_bytes = (tmp_path / "pruned.plan").read_bytes()
    head = b"fake-plan-8.2.1 FP16\n" + str(tmp_path / "pruned.onnx").encode() + b"\n"
    assert plan_bytes == head + (tmp_path / "pruned.onnx").read_bytes() and r.engine_bytes == len(plan_bytes)
    assert (tmp_path / plan.timing_cache).read_bytes() == b"timing-cache:"


def test_build_10_3_int8_calibrator_and_sparsity_fake_tensorrt(tmp_path):
    trt = make_fake_tensorrt("10.3.0")
    plan = plan_for(ORIN, samples=70)
    cuda = FakeCuda()
    r = build_engine(plan, _run_dir(tmp_path, plan), trt=trt, cuda=cuda)
    assert _calls(trt, "builder.create_network") == [(0,)]            # explicit batch is implicit from 10.0
    assert _calls(trt, "config.set_memory_pool_limit") == [("WORKSPACE", 1024 << 20)]
    assert _calls(trt, "config.set_flag") == [("INT8",), ("SPARSE_WEIGHTS",)]
    assert _calls(trt, "config.add_optimization_profile") == [({"input": ([1, 1, 28, 28], [1, 1, 28, 28], [32, 1, 28, 28])},)]
    assert _calls(trt, "config.set_calibration_profile") == [({"input": ([32, 1, 28, 28],) * 3},)]
    assert _calls(trt, "IInt8EntropyCalibrator2.__init__") == [()]
    # 70 images in batches of 32: two full batches, fed in order from the calibration file
    x = np.load(tmp_path / "calibration_inputs.npy")
    assert _calls(trt, "calibrated_batches") == [(2,)]
    assert [c.shape for c in cuda.copies_in] == [(32, 1, 28, 28)] * 2 and np.array_equal(cuda.copies_in[1], x[32:64])
    assert (tmp_path / "pruned.calib.cache").read_text().startswith("TRT-10.3.0-EntropyCalibration2")
    assert r.sparsity.eligible == ["/fc1/Gemm + /act1/Relu", "/fc2/Gemm"] and r.sparsity.picked == ["/fc1/Gemm + /act1/Relu"]
    assert "tactic timing chatter" not in (tmp_path / "pruned.build.log").read_text()
    assert _calls(trt, "engine.device_memory_size_v2") and not _calls(trt, "engine.device_memory_size")
    # a second build reads the cache instead of calibrating again
    trt2 = make_fake_tensorrt("10.3.0")
    build_engine(plan, tmp_path, trt=trt2, cuda=FakeCuda())
    assert not _calls(trt2, "calibrated_batches")


def test_plans_are_cached_by_build_policy_onnx_calibration_and_stack_fake_tensorrt(tmp_path, monkeypatch):
    """The board's engine cache for TensorRT (`build_plans_cached`): an INT8 plan is built and calibrated
    once; a change in how it is only timed reuses it; another workspace, flags, profile, ONNX file,
    calibration set or TensorRT version builds another. A reused engine runs with its ONNX file gone."""
    trt = install_fake_gpu(monkeypatch, "10.3.0")
    plan = plan_for(ORIN, samples=70)
    (tmp_path / "job").mkdir()
    job, cache = _run_dir(tmp_path / "job", plan), tmp_path / "cache"

    def build(p: EnginePlan) -> tuple[dict, dict]:
        trt.calls.clear()
        return build_plans_cached({"pruned": p.to_dict()}, job, ORIN, cache)

    engines, status = build(plan)
    e, slot = engines["pruned"], engines["pruned"].path.parent
    assert status == {"pruned": "miss"} and _calls(trt, "calibrated_batches") == [(2,)]
    assert slot.parent == cache and e.source == job / "pruned.onnx" and e.extra["layer_info"] == "pruned.layers.json"
    assert {"pruned.plan", "pruned.engine_plan.json", "pruned.layers.json", "pruned.calib.cache"} <= {p.name for p in slot.iterdir()}
    assert not (slot / "pruned.onnx").exists() and not (slot / "calibration_inputs.npy").exists()   # the job's, not kept
    engines, status = build(replace(plan, iterations=10, duration_s=1, warmup_ms=5))
    assert status == {"pruned": "hit"} and engines["pruned"].path == e.path and not _calls(trt, "Builder")
    for other in (replace(plan, workspace_mb=512), replace(plan, builder_flags=["INT8"]),
                  replace(plan, profile={**plan.profile, "max": [64, 1, 28, 28]})):
        assert build(other)[1] == {"pruned": "miss"} and _calls(trt, "builder.build_serialized_network")
    np.save(job / "calibration_inputs.npy", np.random.default_rng(1).random((70, 1, 28, 28), dtype=np.float32))
    assert build(plan)[1] == {"pruned": "miss"} and _calls(trt, "calibrated_batches") == [(2,)]
    mlp_onnx(job / "pruned.onnx", BIG)
    assert build(plan)[1] == {"pruned": "miss"}
    assert build(plan)[1] == {"pruned": "hit"}
    install_fake_gpu(monkeypatch, "10.3.1")      # the board's TensorRT upgraded: nothing built before is reused
    engines, status = build(plan)
    assert status == {"pruned": "miss"} and len(list(cache.iterdir())) == 7
    # the engine reused from the cache runs, its job's ONNX file gone: it holds its model
    (job / "pruned.onnx").unlink()
    x = np.random.default_rng(2).random((4, 1, 28, 28), dtype=np.float32)
    assert get_backend("tensorrt").open(engines["pruned"], ORIN).run(x).shape == (4, 10)


def test_build_8_5_dla_gpu_fallback_fake_tensorrt(tmp_path):
    trt = make_fake_tensorrt("8.5.2")
    plan = plan_for(XAVIER)
    build_engine(plan, _run_dir(tmp_path, plan), trt=trt, cuda=FakeCuda())
    assert _calls(trt, "config.default_device_type") == [(trt.DeviceType.DLA,)] and _calls(trt, "config.DLA_core") == [(1,)]
    assert _calls(trt, "config.set_flag") == [("FP16",), ("GPU_FALLBACK",)]
    assert _calls(trt, "config.set_memory_pool_limit") and not _calls(trt, "config.create_timing_cache")
    assert _calls(trt, "runtime.deserialize_cuda_engine")[0][1] == 1     # the runtime loads it onto DLA core 1


def test_build_11_strongly_typed_qdq_fake_tensorrt(tmp_path):
    trt = make_fake_tensorrt("11.1.0")
    plan = plan_for(THOR)
    build_engine(plan, _run_dir(tmp_path, plan), trt=trt, cuda=FakeCuda())
    assert _calls(trt, "builder.create_network") == [(0,)]
    assert _calls(trt, "parser.parse_from_file") == [(str(tmp_path / "pruned.qdq.onnx"),)]
    assert not _calls(trt, "config.set_flag") and not _calls(trt, "config.int8_calibrator")
    assert _calls(trt, "engine.device_memory_size_v2")


def test_build_refuses_a_plan_of_another_generation_fake_tensorrt(tmp_path):
    plan = plan_for(ORIN)
    with pytest.raises(InputError, match="this machine has TensorRT 11.1.0"):
        build_engine(plan, _run_dir(tmp_path, plan), trt=make_fake_tensorrt("11.1.0"), cuda=FakeCuda())
    # and the calibrator says why rather than failing on a missing class
    with pytest.raises(InputError, match="has no IInt8EntropyCalibrator2"):
        make_calibrator(make_fake_tensorrt("11.1.0"), plan, tmp_path, FakeCuda())


def test_build_reports_the_parser_error_fake_tensorrt(tmp_path):
    plan = plan_for(NANO)
    with pytest.raises(InputError, match="cannot parse pruned.onnx: Unsupported ONNX data type"):
        build_engine(plan, _run_dir(tmp_path, plan), trt=make_fake_tensorrt("8.2.1", parse_ok=False), cuda=FakeCuda())


@pytest.mark.parametrize("version, execute", [("10.3.0", "ctx.execute_async_v3"), ("8.2.1", "ctx.execute_async_v2")])
def test_session_io_api_per_generation_fake_tensorrt(tmp_path, version, execute):
    trt = make_fake_tensorrt(version)
    target = NANO if version.startswith("8.2") else replace(ORIN, build=replace(ORIN.build, precision="fp16"))
    plan = plan_for(target)
    build_engine(plan, _run_dir(tmp_path, plan), trt=trt, cuda=FakeCuda())
    cuda = trt.cuda
    s = TrtSession(plan, tmp_path, trt=trt, cuda=cuda)
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    out = s.run(x)
    direct = ort.InferenceSession(str(tmp_path / plan.onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(cuda.copies_in[0], x) and np.allclose(out, direct, atol=1e-5)
    times = s.time_ms(x, 5)
    assert len(times) == 5 and min(times) > 0 and cuda.events == 2       # one event pair, reused
    assert len(_calls(trt, execute)) == 1 + 1 + 5          # run, the load inside time_ms, 5 timed
    shape_call = "ctx.set_input_shape" if version.startswith("10") else "ctx.set_binding_shape"
    assert _calls(trt, shape_call)[0][-1] == [4, 1, 28, 28]
    with pytest.raises(Exception, match="does not fit"):
        s.run(np.zeros((1, 3, 28, 28), np.float32))


# ---------------------------------------------------------------- this machine: no TensorRT
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_host_problems_say_tensorrt_is_missing():
    backend = get_backend("tensorrt")
    assert backend.host_problems(ORIN) == [NOT_INSTALLED]


JETSON_TOML = orin_nano_toml("Jetson Orin Nano 8GB (test copy)", trt="{trt}",
                             build='sparsity = "2:4"\ncalibration_method = "entropy"\n',
                             run="iterations = 100\nbatch_sizes = [1, 16]\n")


@pytest.fixture(scope="module")
def pruned_ckpt(lenet300_half_ckpt):
    return lenet300_half_ckpt


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_cli_deploy_to_tensorrt_target_prepares_the_device_run(capsys, tmp_path, pruned_ckpt, lenet300_ckpt):
    target = tmp_path / "jetson-orin-nano-test.toml"
    target.write_text(JETSON_TOML.format(trt="10.3.0"))
    run = tmp_path / "run"
    code = main(["deploy", str(pruned_ckpt), "--baseline", str(lenet300_ckpt), "--target", str(target), "--precision",
                 "int8", "--calibration", str(CALIBRATION), "--test-limit", "50", "-o", str(run)])
    out = capsys.readouterr().out
    assert code == 0
    assert "TensorRT is not installed on this machine: the engines must be built on the device" in " ".join(out.split())
    doc = json.loads((run / "engine_plan.json").read_text())
    assert set(doc["models"]) == {"dense", "pruned"} and doc["generation"] == "8.5-10"
    plans = {k: EnginePlan.from_dict(v) for k, v in doc["models"].items()}
    assert plans["pruned"].builder_flags == ["INT8", "SPARSE_WEIGHTS"]      # --precision overrode the target's fp16
    # the scripts hold exactly the planned commands, one build per model and one benchmark per model and batch
    build_sh, bench_sh = (run / "trtexec_build.sh").read_text(), (run / "trtexec_bench.sh").read_text()
    for k, p in plans.items():
        assert shlex.join(build_command(p)) in build_sh and doc["commands"][f"{k}.build"] == shlex.join(build_command(p))
        assert all(shlex.join(bench_command(p, b)) in bench_sh for b in (1, 16))
    assert "python3 -m edgeprune.backends.tensorrt build engine_plan.json --model pruned" in build_sh
    # the calibration inputs are the calibration set as the network sees it
    x = np.load(run / "calibration_inputs.npy")
    assert np.array_equal(x, load_npz(CALIBRATION).x) and x.dtype == np.float32
    assert onnx_facts(run / "pruned.onnx").input_dims == (None, 1, 28, 28)


def test_cli_deploy_to_tensorrt_11_fp16_is_refused_in_one_line(capsys, tmp_path, pruned_ckpt, lenet300_ckpt):
    target = tmp_path / "thor.toml"
    target.write_text(JETSON_TOML.format(trt="11.1.0"))
    code = main(["deploy", str(pruned_ckpt), "--baseline", str(lenet300_ckpt), "--target", str(target),
                 "--test-limit", "50", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs an FP16 ONNX" in err


def test_cli_deploy_int8_to_tensorrt_11_validates_the_qdq_model_it_builds(capsys, tmp_path, pruned_ckpt,
                                                                          lenet300_ckpt):
    """TensorRT 11 has no calibrator: deploy quantizes to Q/DQ itself, so the fp32 export must not be
    refused for lacking Q/DQ nodes; the ONNX the plan builds is the Q/DQ one, and it is what is checked."""
    target = tmp_path / "thor.toml"
    target.write_text(JETSON_TOML.format(trt="11.1.0"))
    run = tmp_path / "run"
    code = main(["deploy", str(pruned_ckpt), "--baseline", str(lenet300_ckpt), "--target", str(target), "--precision",
                 "int8", "--calibration", str(CALIBRATION), "--test-limit", "50", "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 0, err
    plans = {k: EnginePlan.from_dict(v) for k, v in json.loads((run / "engine_plan.json").read_text())["models"].items()}
    for plan in plans.values():
        assert plan.int8_mode == "qdq" and plan.onnx.endswith(".qdq.onnx")
        model = onnx.load(str(run / plan.onnx))
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_cli_deploy_rejects_an_unknown_precision(capsys, tmp_path, pruned_ckpt):
    code = main(["deploy", str(pruned_ckpt), "--precision", "fp64", "-o", str(tmp_path / "run")])
    assert code == 2 and "--precision must be one of fp32, fp16, int8" in capsys.readouterr().err


# ---------------------------------------------------------------- device side and results read back
def _prepared_run(tmp_path, target: Target) -> dict[str, EnginePlan]:
    """A dense model 30x the cost of the pruned one (MACs and weights), planned for `target`."""
    plans = {k: plan_engine(target, DYNAMIC, model=k, onnx_file=f"{k}.onnx", calibration_samples=64)
             for k in ("dense", "pruned")}
    for k, p in plans.items():
        _run_dir(tmp_path, p, samples=64, widths=BIG if k == "dense" else SMALL)
    doc = {"schema": "edgeprune.engine_plan/1", "models": {k: p.to_dict() for k, p in plans.items()}}
    (tmp_path / "engine_plan.json").write_text(json.dumps(doc))
    return plans


def test_device_entry_builds_one_model_of_the_plan_fake_tensorrt(tmp_path, monkeypatch, capsys):
    from edgeprune.backends import tensorrt as backend_module

    _prepared_run(tmp_path, replace(ORIN, build=replace(ORIN.build, precision="fp16")))
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", make_fake_tensorrt("10.3.0"))
    assert backend_module.main(["build", str(tmp_path / "engine_plan.json"), "--model", "pruned"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engine"] == "pruned.plan" and (tmp_path / "pruned.plan").exists() and not (tmp_path / "dense.plan").exists()
    assert result["sparsity"]["picked"] == ["/fc1/Gemm + /act1/Relu"] and result["device_memory_bytes"] == 1 << 20
    assert backend_module.main(["build", str(tmp_path / "engine_plan.json"), "--model", "other"]) == 2


def test_device_entry_keeps_user_errors_one_line_and_bugs_tracebacks_fake_tensorrt(tmp_path, monkeypatch, capsys):
    from edgeprune.backends import tensorrt as backend_module

    assert backend_module.main(["build", str(tmp_path / "missing.json"), "--model", "pruned"]) == 2
    assert "cannot read" in capsys.readouterr().err
    _prepared_run(tmp_path, replace(ORIN, build=replace(ORIN.build, precision="fp16")))
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", make_fake_tensorrt("10.3.0"))

    def broken(*args, **kwargs):   # an OSError inside the build is not the user's plan file
        raise OSError("edgeprune bug")

    monkeypatch.setattr(backend_module, "device_memory_bytes", broken)
    with pytest.raises(OSError, match="edgeprune bug"):
        backend_module.main(["build", str(tmp_path / "engine_plan.json"), "--model", "pruned"])


def test_cli_deploy_measures_and_reports_like_onnxruntime_fake_tensorrt(capsys, tmp_path, monkeypatch, pruned_ckpt,
                                                                          lenet300_ckpt):
    """With TensorRT importable, deploy builds both plans and measures them in the pipeline every backend
    uses: the same report.json as ONNX Runtime, plus the engines' device memory and layers."""
    trt = install_fake_gpu(monkeypatch, "10.3.0")
    target = tmp_path / "jetson-orin-nano-test.toml"
    target.write_text(JETSON_TOML.format(trt="10.3.0").replace("iterations = 100", "iterations = 7\nwarmup = 2"))
    run = tmp_path / "run"
    code = main(["deploy", str(pruned_ckpt), "--baseline", str(lenet300_ckpt), "--target", str(target),
                 "--test-limit", "40", "-o", str(run), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc == json.loads((run / "report.json").read_text()) and (run / "report.md").is_file()
    assert doc["backend"] == "tensorrt" and doc["precision"] == "fp16" and set(doc["latency"]) == {"1", "16"}
    assert doc["latency"]["1"]["dense"]["n"] == doc["latency"]["1"]["control"]["n"] == doc["latency"]["1"]["pruned"]["n"] == 7
    # both engines ran in the loop, the dense one twice as often (A and the A' control): 2 batch sizes x
    # (1 load + 2 warm-up + 7 timed), then the accuracy batches
    ran = [Path(args[0]).stem for args in _calls(trt, "engine.execute")]
    assert ran.count("dense") >= 2 * 2 * 10 and ran.count("pruned") >= 2 * 10
    # accuracy through the engines is the ONNX models' own, on the same images
    test = DataOptions("fashion-mnist", test_limit=40).test()     # what deploy read for --test-limit 40
    for k in ("dense", "pruned"):
        predicted = ort.InferenceSession(str(run / f"{k}.onnx")).run(None, {"input": test.x})[0].argmax(1)
        assert doc[k]["accuracy"] == pytest.approx(100 * np.mean(predicted == test.y))
        assert doc[k]["peak_rss_mb"] is None      # host RSS is not a GPU engine's memory
        gemms = sum(n.op_type == "Gemm" for n in onnx.load(str(run / f"{k}.onnx")).graph.node)
        facts = doc["engine_facts"][k]
        assert facts["device_memory_bytes"] == 1 << 20 and facts["layers"] == gemms and facts["precisions"] == {"FP16": gemms}
        assert (run / f"{k}.layers.json").is_file() and (run / f"{k}.plan").is_file()
    assert any("the pruned engine has" in n for n in doc["notes"])
    assert "engine device memory" in (run / "report.md").read_text()
    assert main(["explain", str(run)]) == 0
    assert "TensorRT engines: dense 3 layers (3 FP16" in " ".join(capsys.readouterr().out.split())


def test_measure_pair_ratio_follows_engine_cost_and_catches_a_swap_fake_tensorrt(tmp_path, monkeypatch, fmnist_small):
    # The fake engines run their ONNX models, so GPU time here is the models' real cost: the dense
    # model has 30x the MACs of the pruned one.
    from edgeprune.backends.tensorrt import TensorRTBackend, engine_of
    from edgeprune.measure.pair import measure_pair

    target = replace(ORIN, build=replace(ORIN.build, precision="fp16"),
                     run=replace(RUN, iterations=30, warmup=3, batch_sizes=(1, 64), percentiles=(50.0, 99.9)))
    plans = _prepared_run(tmp_path, target)
    test = fmnist_small.test().head(64)
    want = macs(SMALL) / macs(BIG)

    def timed(dense, pruned, cuda=None):
        install_fake_gpu(monkeypatch, "10.3.0", cuda)
        engines = {label: engine_of(p, tmp_path, build_engine(p, tmp_path), target, tmp_path / p.onnx)
                   for label, p in (("dense", dense), ("pruned", pruned))}
        m = measure_pair(TensorRTBackend(), engines, target, test.x, test.y, tmp_path)
        a, a2, b = (LatencyStats.from_ns(t, target.run.percentiles) for t in m.times_ns[64])
        return a, a2, b

    def follows_cost(ratio, want):      # within 3x of the MAC ratio, and 3.3x away from 1 on its side
        return want / 3 < ratio < 0.3 if want < 1 else 1 / 0.3 < ratio < want * 3

    a, a2, b = timed(plans["dense"], plans["pruned"])
    assert follows_cost(b.p50 / a.p50, want) and 0.5 < a2.p50 / a.p50 < 2.0
    a, _, b = timed(plans["pruned"], plans["dense"])
    assert follows_cost(b.p50 / a.p50, 1 / want) and not follows_cost(b.p50 / a.p50, want)
    # A device clock that reads the same for every execution, as this fake's once did, gives 1.0.
    constant = FakeCuda()
    constant.elapsed_ms = lambda start, end: 0.25
    a, a2, b = timed(plans["dense"], plans["pruned"], constant)
    assert b.p50 / a.p50 == 1.0 and not follows_cost(b.p50 / a.p50, want)
    # ... and the figures are in the clock's milliseconds
    assert a.p50 == a2.max == b.extra["p99.9"] == 0.25
