"""Targets load from TOML, and every mistake in a target file names the key and the file."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from pathlib import Path

import pytest

from edgeprune.backends.base import target_status
from edgeprune.errors import InputError, UnknownNameError
from edgeprune.host_simd import host_simd
from edgeprune.backends.trt_versions import TRT_GENERATIONS, trt_generation, trt_parser_max_opset
from edgeprune.targets import BuildPolicy, RunPolicy, Target, list_targets, load_target, stack_summary
from edgeprune.versions import version_in_range

from .conftest import SHIPPED

GOOD = """
description = "test device"
backend = "onnxruntime"

[stack]
onnxruntime = ">=1.18,<2"
max_opset = 21

[hardware]
family = "host"

[build]
precision = "fp32"
threads = 2
graph_optimization_level = "extended"
execution_providers = ["CPUExecutionProvider"]

[run]
warmup = 5
iterations = 50
batch_sizes = [1, 8]
percentiles = [50, 90, 99, 99.9]
"""


def write(tmp_path: Path, text: str, name: str = "dev") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_host_cpu_ships_with_the_contract_settings():
    t = load_target("host-cpu")
    assert isinstance(t, Target)
    assert t.name == "host-cpu" and t.backend == "onnxruntime" and t.description
    assert t.stack["max_opset"] >= 18 and "onnxruntime" in t.stack
    assert t.build == BuildPolicy(
        precision="fp32", threads=1, graph_optimization_level="all", execution_providers=("CPUExecutionProvider",),
        round_to=host_simd().lanes,
    )
    assert (t.run.warmup, t.run.iterations, t.run.batch_sizes, t.run.percentiles) == (20, 200, (1, 64), (50, 90, 99))
    assert t.ssh is None and t.path is not None and t.path.name == "host-cpu.toml"


def test_list_targets_includes_host_cpu():
    assert "host-cpu" in [t.name for t in list_targets()]


def test_load_by_path_and_by_name_in_a_directory(tmp_path):
    p = write(tmp_path, GOOD)
    by_path = load_target(str(p))
    by_name = load_target("dev", targets_dir=tmp_path)
    assert by_path == by_name
    assert by_path.build.threads == 2 and by_path.build.graph_optimization_level == "extended"
    assert by_path.run.batch_sizes == (1, 8) and by_path.run.percentiles == (50, 90, 99, 99.9)


def test_targets_dirs_from_environment_add_to_the_shipped_ones(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write(a, GOOD, name="from-env")
    write(b, GOOD.replace("threads = 2", "threads = 3"), name="from-env")   # shadowed by a's
    write(b, GOOD, name="other")
    monkeypatch.setenv("EDGEPRUNE_TARGETS", os.pathsep.join([str(a), "", str(b)]))
    assert load_target("from-env").build.threads == 2 and load_target("other").path == (b / "other.toml").resolve()
    names = [t.name for t in list_targets()]
    assert names == sorted(names) and {"from-env", "other", "host-cpu", "jetson-nano"} <= set(names)
    assert names.count("from-env") == 1


def test_a_users_file_wins_over_a_shipped_one_of_the_same_name(tmp_path, monkeypatch):
    mine = write(tmp_path, GOOD.replace("threads = 2", "threads = 3"), name="host-cpu")
    assert load_target("host-cpu").build.threads == 1                            # the shipped one
    assert load_target("host-cpu", targets_dir=tmp_path).path == mine.resolve()  # --targets-dir
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(tmp_path))
    assert load_target("host-cpu").build.threads == 3                            # EDGEPRUNE_TARGETS
    listed = {t.name: t for t in list_targets()}
    assert listed["host-cpu"].path == mine.resolve() and "raspberry-pi-5" in listed
    # --targets-dir is searched before EDGEPRUNE_TARGETS
    first = tmp_path / "first"
    first.mkdir()
    write(first, GOOD.replace("threads = 2", "threads = 4"), name="host-cpu")
    assert load_target("host-cpu", targets_dir=first).build.threads == 4


def test_a_targets_folder_that_does_not_exist_is_an_input_error(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="--targets-dir: targets folder not found"):
        load_target("host-cpu", targets_dir=tmp_path / "nope")
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(tmp_path / "gone"))
    with pytest.raises(InputError, match="EDGEPRUNE_TARGETS: targets folder not found"):
        list_targets()


def test_unknown_target_lists_the_available_ones(tmp_path):
    write(tmp_path, GOOD, name="alpha")
    write(tmp_path, GOOD, name="beta")
    with pytest.raises(UnknownNameError, match=r"unknown target 'gamma' \(available: alpha, android-arm64, beta, "
                                               r"host-cpu, jetson-agx-orin"):
        load_target("gamma", targets_dir=tmp_path)


def test_missing_target_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_target(str(tmp_path / "nope.toml"))


def test_defaults_fill_omitted_tables(tmp_path):
    t = load_target(str(write(tmp_path, 'backend = "onnxruntime"\n')))
    assert t.build == BuildPolicy() and t.run == RunPolicy() and t.stack == {} and t.description == ""


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('colour = "red"\n' + GOOD, "colour"),
        (GOOD.replace("threads = 2", "threads = 2\nthread = 4"), "build.thread"),
        (GOOD.replace("warmup = 5", "warmup = 5\nrepeats = 3"), "run.repeats"),
        (GOOD.replace("max_opset = 21", "max_opset = 21\ntensor_rt = '10.3'"), "stack.tensor_rt"),
        (GOOD.replace('family = "host"', 'family = "host"\nram = 4'), "hardware.ram"),
    ],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_target(str(p))
    assert f"unknown key '{key}'" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("threads = 2", 'threads = "2"', "'build.threads' must be int"),
        ("threads = 2", "threads = true", "'build.threads' must be int"),
        ("threads = 2", "threads = -1", "threads"),
        ('backend = "onnxruntime"', 'backend = "tflite"', "unknown backend 'tflite'"),
        ('backend = "onnxruntime"', "", "missing required key 'backend'"),
        ('graph_optimization_level = "extended"', 'graph_optimization_level = "max"', "graph_optimization_level"),
        ('precision = "fp32"', 'precision = "fp8"', "build.precision"),
        ('execution_providers = ["CPUExecutionProvider"]', "execution_providers = []", "execution_providers"),
        ("batch_sizes = [1, 8]", "batch_sizes = [0]", "batch_sizes"),
        ("percentiles = [50, 90, 99, 99.9]", "percentiles = [150]", "percentiles"),
        ("iterations = 50", "iterations = 0", "iterations"),
        ("max_opset = 21", 'max_opset = "21"', "'stack.max_opset' must be int"),
        ('family = "host"', "family = 3", "'hardware.family' must be str"),
    ],
)
def test_wrong_values_are_input_errors(tmp_path, old, new, match):
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(InputError, match=match):
        load_target(str(p))


def test_a_table_given_as_a_value_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="'build' must be a table"):
        load_target(str(write(tmp_path, 'backend = "onnxruntime"\nbuild = 3\n')))


def test_invalid_toml_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not valid TOML"):
        load_target(str(write(tmp_path, "backend = \n")))


def test_device_tables_take_the_generic_keys(tmp_path):
    jetson = """
description = "Jetson Orin Nano 8GB, JetPack 6.1"
backend = "tensorrt"
ssh = "nvidia@orin.local"
[stack]
jetpack = "6.1"
tensorrt = "10.3.0"
cuda = "12.6"
max_opset = 20
[hardware]
family = "jetson"
module = "jetson-orin-nano-8gb"
compute_capability = "8.7"
dla_cores = 0
sparse_tensor_cores = true
ram_bytes = 8000000000
[build]
precision = "fp16"
"""
    t = load_target(str(write(tmp_path, jetson, name="orin")))
    assert t.backend == "tensorrt" and t.ssh == "nvidia@orin.local"
    assert t.hardware["sparse_tensor_cores"] is True and t.stack["tensorrt"] == "10.3.0"


def test_version_ranges():
    assert version_in_range("1.31.1", ">=1.18,<2")
    assert not version_in_range("2.0.0", ">=1.18,<2")
    assert not version_in_range("1.17.3", ">=1.18")
    assert version_in_range("1.31.1", "==1.31.*") and not version_in_range("1.30.0", "==1.31.*")
    assert version_in_range("10.3.0.26", ">=10.3,!=10.4")


def test_status_says_whether_a_target_can_run_here(tmp_path):
    assert target_status(load_target("host-cpu")) == "ready"
    gpu = GOOD.replace('["CPUExecutionProvider"]', '["CUDAExecutionProvider"]')
    assert "CUDAExecutionProvider" in target_status(load_target(str(write(tmp_path, gpu, "gpu"))))
    trt = 'backend = "tensorrt"\nssh = "nvidia@orin"\n[stack]\ntensorrt = "10.3.0"\n'
    assert target_status(load_target(str(write(tmp_path, trt, "trt")))) == "remote (nvidia@orin)"
    if importlib.util.find_spec("tensorrt") is None:
        local_trt = load_target(str(write(tmp_path, 'backend = "tensorrt"\n[stack]\ntensorrt = "10.3.0"\n', "trt-local")))
        assert target_status(local_trt) == "unavailable: TensorRT is not installed on this machine"
    remote = GOOD.replace('backend = "onnxruntime"', 'backend = "onnxruntime"\nssh = "pi@raspberrypi"')
    assert target_status(load_target(str(write(tmp_path, remote, "pi")))) == "remote (pi@raspberrypi)"


# ------------------------------------------------------------------ the shipped device files
TARGET_FILES = sorted((SHIPPED / "targets").glob("*.toml"))
JETSONS = ["jetson-nano", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"]


def test_the_issue_targets_ship():
    assert {p.stem for p in TARGET_FILES} >= {*JETSONS, "raspberry-pi-4", "raspberry-pi-5", "android-arm64", "host-cpu"}


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_every_target_file_loads_and_is_consistent(path):
    t = load_target(path)
    assert t.name == path.stem and t.description and t.stack.get("max_opset")
    if t.backend == "tensorrt":
        assert t.hardware["family"] == "jetson" and t.hardware["compute_capability"]
        assert {"jetpack", "l4t", "tensorrt", "cuda", "cudnn"} <= set(t.stack)
        assert t.build.precision in ("fp16", "int8") and t.build.calibration == "calibration/fmnist.npz"
        assert (SHIPPED / t.build.calibration).is_file()
        # 2:4 sparse kernels exist only on Ampere-class GPUs: Orin (CC 8.7).
        assert (t.build.sparsity == "2:4") == t.hardware["sparse_tensor_cores"] == (t.hardware["compute_capability"] == "8.7")
        assert t.stack["max_opset"] <= trt_parser_max_opset(t.stack["tensorrt"])
        assert t.run.power_mode in t.hardware["power_modes"] and t.run.jetson_clocks
    else:
        assert t.trt_version is None and t.trt_generation is None
        assert t.build.precision == "fp32" and t.build.dla_core == -1


def test_jetson_stacks_follow_the_jetpack_matrix():
    ts = {n: load_target(n) for n in JETSONS}
    assert {n: t.trt_generation for n, t in ts.items()} == {
        "jetson-nano": "8.2", "jetson-xavier-nx": "8.5-10", "jetson-agx-xavier": "8.5-10",
        "jetson-orin-nano": "8.5-10", "jetson-orin-nx": "8.5-10", "jetson-agx-orin": "8.5-10"}
    assert ts["jetson-nano"].trt_version == (8, 2, 1) and ts["jetson-nano"].stack["max_opset"] == 13
    assert ts["jetson-nano"].build.precision == "fp16"  # Maxwell: no INT8 tensor cores
    assert [ts[n].hardware["dla_cores"] for n in JETSONS] == [0, 2, 2, 0, 2, 2]


def test_arm_cpu_targets_build_for_arm():
    for name in ("raspberry-pi-4", "raspberry-pi-5", "android-arm64"):
        t = load_target(name)
        assert t.backend == "onnxruntime" and t.build.ort_target_platform == "arm"
        assert t.build.graph_optimization_level != "all"  # "all" bakes in x86-only layouts
        assert t.build.threads == len(t.hardware["big_cores"])
    assert load_target("raspberry-pi-4").build.model_format == "onnx"
    assert load_target("raspberry-pi-5").build.model_format == "ort"
    assert load_target("android-arm64").build.execution_providers[0] == "XnnpackExecutionProvider"


def test_a_target_for_another_cpu_builds_here_and_says_whose_latency_it_is(tmp_path):
    other = "aarch64" if platform.machine().lower() not in ("aarch64", "arm64") else "x86_64"
    text = GOOD.replace('family = "host"', f'family = "linux-arm"\narch = "{other}"')
    status = target_status(load_target(str(write(tmp_path, text))))
    assert status == f"builds here; latency is this host's, not the {other} device's"


def test_trt_generations():
    assert [trt_generation(v) for v in ("8.2.1", "8.4.3", "8.5.2", "8.6.2", "9.2", "10.3.0", "10.16", "11.0", "11.4.1")] == [
        "8.2", "8.2", "8.5-10", "8.5-10", "8.5-10", "8.5-10", "8.5-10", "11", "11"]
    assert trt_generation((10, 3)) == "8.5-10" and set(TRT_GENERATIONS) == {"8.2", "8.5-10", "11"}
    for old in ("8.0.1", "7.1.3"):
        with pytest.raises(InputError, match="older than 8.2"):
            trt_generation(old)
    with pytest.raises(InputError, match="not a TensorRT version"):
        trt_generation("latest")
    assert [trt_parser_max_opset(v) for v in ("8.2.1", "8.5.2", "10.3.0", "10.15", "11.1")] == [13, 17, 20, 24, 25]


JETSON = """
description = "test jetson"
backend = "tensorrt"
[stack]
tensorrt = "10.3.0"
max_opset = 20
[hardware]
family = "jetson"
dla_cores = 2
sparse_tensor_cores = true
power_modes = ["MAXN", "15W"]
[build]
precision = "fp16"
sparsity = "2:4"
dla_core = 1
[run]
power_mode = "MAXN"
jetson_clocks = true
"""


def test_jetson_keys_parse(tmp_path):
    t = load_target(str(write(tmp_path, JETSON)))
    assert (t.build.dla_core, t.build.sparsity, t.run.power_mode, t.run.jetson_clocks) == (1, "2:4", "MAXN", True)
    assert t.hardware["power_modes"] == ["MAXN", "15W"] and t.trt_version == (10, 3, 0)
    assert stack_summary(t) == "TensorRT 10.3.0" and stack_summary(load_target("host-cpu")) == "onnxruntime >=1.18,<2"


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('tensorrt = "10.3.0"\n', "", "needs stack.tensorrt"),
        ("max_opset = 20", "max_opset = 21", "above 20, the highest opset TensorRT 10.3.0"),
        ('tensorrt = "10.3.0"', 'tensorrt = "7.1.3"', "older than 8.2"),
        ("sparse_tensor_cores = true", "sparse_tensor_cores = false", "needs sparse tensor cores"),
        ("dla_core = 1", "dla_core = 2", "hardware.dla_cores = 2"),
        ("dla_core = 1", "dla_core = -2", "build.dla_core must be >= -1"),
        ('power_modes = ["MAXN", "15W"]', "power_modes = [15]", "hardware.power_modes must be a list of str"),
        ('power_mode = "MAXN"', "power_mode = 0", "'run.power_mode' must be str"),
        ('power_mode = "MAXN"', 'power_mode = "MAX"', "run.power_mode 'MAX' is not one of hardware.power_modes (MAXN, 15W)"),
        ("jetson_clocks = true", "jetson_clock = true", "unknown key 'run.jetson_clock'"),
        ('sparsity = "2:4"', 'sparsity = "4:8"', "'build.sparsity' must be one of none, 2:4"),
        ('precision = "fp16"', 'precision = "fp16"\nort_target_platform = "arm"', "applies to backend 'onnxruntime' only"),
    ],
)
def test_contradictions_in_a_jetson_file_are_input_errors(tmp_path, old, new, match):
    assert old in JETSON
    with pytest.raises(InputError, match=re.escape(match)):
        load_target(str(write(tmp_path, JETSON.replace(old, new, 1))))


def test_dla_core_needs_tensorrt(tmp_path):
    with pytest.raises(InputError, match="dla_core needs backend 'tensorrt'"):
        load_target(str(write(tmp_path, GOOD.replace("threads = 2", "threads = 2\ndla_core = 0"))))


# ------------------------------------------------------------------ build.round_to: the channel multiple
def test_each_shipped_target_names_the_channel_multiple_of_its_hardware():
    multiples = {t.name: t.build.round_to for t in list_targets()}
    assert multiples["host-cpu"] == host_simd().lanes                      # round_to = "host"
    assert {n: multiples[n] for n in ("raspberry-pi-4", "raspberry-pi-5", "android-arm64")} == dict.fromkeys(
        ("raspberry-pi-4", "raspberry-pi-5", "android-arm64"), 4)          # NEON: 4 fp32 lanes
    # INT8 tensor cores: 16; the Nano (FP16, no tensor cores): 8
    assert {n: multiples[n] for n in JETSONS} == {n: 8 if n == "jetson-nano" else 16 for n in JETSONS}


@pytest.mark.parametrize(("value", "want"), [("4", 4), ("1", 1), ('"host"', None)])
def test_round_to_takes_an_integer_or_host(tmp_path, value, want):
    t = load_target(str(write(tmp_path, GOOD.replace("threads = 2", f"threads = 2\nround_to = {value}"))))
    assert t.build.round_to == (want if want is not None else host_simd().lanes)


@pytest.mark.parametrize("value", ["0", '"avx"', "8.0", "true"])
def test_a_bad_round_to_names_the_key_and_the_file(tmp_path, value):
    p = write(tmp_path, GOOD.replace("threads = 2", f"threads = 2\nround_to = {value}"))
    with pytest.raises(InputError, match=rf"{re.escape(str(p))}: .*build.round_to"):
        load_target(str(p))


def test_a_file_without_round_to_keeps_multiples_of_8(tmp_path):
    assert load_target(str(write(tmp_path, GOOD))).build.round_to == 8


@pytest.mark.parametrize("l4t, trt, model, member", [
    ("36.4.3", "10.3.0.30", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
    ("36.4.3", "10.3.0.30", "NVIDIA Jetson AGX Orin Developer Kit", "jetson-agx-orin"),
    ("36.4.3", "10.3.0.30", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "jetson-orin-nano"),
    ("35.5.0", "8.5.2.2", "NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
    ("32.7.1", "8.2.1.8", "NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
])
def test_family_resolves_to_the_member_the_probed_board_is(monkeypatch, l4t, trt, model, member):
    """`deploy --target jetson --host H`: the stack narrows the family, the board's device-tree model
    (recorded strings of each module; a board is the boundary here) picks among modules of one JetPack."""
    from edgeprune import api
    from edgeprune.run import remote

    probe = {"hostname": "board", "machine": "aarch64", "tensorrt": trt, "onnxruntime": None, "l4t": l4t, "model": model}
    monkeypatch.setattr(remote, "probe_board", lambda board: probe)
    assert api._family_member("jetson", None, "orin", None, None) == member
    probe["model"] = None        # the same stack on three modules, nothing to tell them apart: one line naming them
    if l4t == "36.4.3":
        with pytest.raises(InputError, match="several members of family 'jetson': jetson-agx-orin, jetson-orin-nano, "
                                             "jetson-orin-nx — pass one as --target"):
            api._family_member("jetson", None, "orin", None, None)
