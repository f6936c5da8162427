"""Targets load from TOML, and every mistake in a target file names the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeprune.errors import InputError, UnknownNameError
from edgeprune.targets import (
    BuildPolicy,
    RunPolicy,
    Target,
    list_targets,
    load_target,
    target_status,
    version_in_range,
)

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
        precision="fp32", threads=1, graph_optimization_level="all", execution_providers=("CPUExecutionProvider",)
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


def test_targets_dir_from_environment(tmp_path, monkeypatch):
    write(tmp_path, GOOD, name="from-env")
    monkeypatch.setenv("EDGEPRUNE_TARGETS", str(tmp_path))
    assert load_target("from-env").name == "from-env"
    assert [t.name for t in list_targets()] == ["from-env"]


def test_unknown_target_lists_the_available_ones(tmp_path):
    write(tmp_path, GOOD, name="alpha")
    write(tmp_path, GOOD, name="beta")
    with pytest.raises(UnknownNameError, match=r"unknown target 'gamma' \(available: alpha, beta\)"):
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
    assert target_status(load_target(str(write(tmp_path, trt, "trt")))).startswith("unavailable")
    remote = GOOD.replace('backend = "onnxruntime"', 'backend = "onnxruntime"\nssh = "pi@raspberrypi"')
    assert target_status(load_target(str(write(tmp_path, remote, "pi")))) == "remote (pi@raspberrypi)"
