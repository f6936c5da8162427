"""edgeprune's TensorRT code, and the fake `tensorrt` the other tests drive it with, held to
TensorRT's published Python API: the `tensorrt-stubs` releases (stubs generated from the real
bindings) that the Makefile's TRT_STUBS names and `make trt-stubs` installs under .venv/trt-stubs.

No stubs exist for TensorRT 10.3, the version the shipped JetPack 6 targets name: the oldest 10.x
release with stubs (10.8) stands in for it, with the newest (10.13). The check itself is
tests/trt_api_check.py; the tests below also prove that it fails, with the name and the line,
when a name is missing, a call does not fit, or an 8.x-only name reaches the 10.x path.
"""

from __future__ import annotations

import ast
import enum
import re
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from edgeprune.backends.trt_plan import TRT_CALIBRATORS

from .fake_tensorrt import make_fake_tensorrt
from .trt_api_check import Stubs, check_code, check_fake

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ROOT / "edgeprune" / "backends"
# The fake's own records, which tests read and TensorRT has not (names starting with "_" are
# skipped too): anything else the fake offers must be TensorRT's.
FAKE_BOOKKEEPING = {"calls", "values", "cache", "shapes", "batch", "blob", "cuda"}   # cuda: the fake device


def _stub_versions() -> list[str]:
    m = re.search(r"^TRT_STUBS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile names no TRT_STUBS"
    return m.group(1).split()


@lru_cache(maxsize=None)
def _stubs(version: str) -> Stubs:
    root = Path(sys.prefix) / "trt-stubs" / version
    if not (root / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        pytest.fail(f"tensorrt-stubs {version} is not installed under {root.parent}: run `make trt-stubs`")
    return Stubs(root)


@pytest.fixture(params=_stub_versions())
def stubs(request) -> Stubs:
    return _stubs(request.param)


def _trt_modules(root: Path = ROOT) -> list[Path]:
    b = root / "edgeprune" / "backends"
    return sorted({*b.glob("tensorrt.py"), *b.glob("trt_*.py"), *b.glob("trtexec.py")})


def _dynamic_names() -> dict[str, list[str]]:
    """The names edgeprune's TensorRT code looks up by a computed name come from the plan: the
    builder flags plan_engine appends (string literals, read from its source) and the calibrator
    classes of TRT_CALIBRATORS."""
    tree = ast.parse((BACKENDS / "trt_plan.py").read_text())
    flags = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "flags.append":
            arg = node.args[0]
            assert isinstance(arg, ast.Constant), f"trt_plan.py:{node.lineno}: a builder flag the check cannot read"
            flags.append(arg.value)
    assert flags, "trt_plan.py appends no builder flags: the check would read none"
    return {"tensorrt": sorted(set(TRT_CALIBRATORS.values())), "BuilderFlag": sorted(set(flags))}


def _check(stubs: Stubs, root: Path = ROOT, **kw):
    return check_code(_trt_modules(root), stubs, root=root, dynamic_names=_dynamic_names(), **kw)


def test_the_10x_path_calls_only_what_tensorrt_10_has(stubs):
    report = _check(stubs)
    assert not report.problems, "\n".join(map(str, report.problems))
    used = {u.what for u in report.uses}
    # the check reached the whole build and run path, not a vacuous part of it
    for name in ("tensorrt.Builder", "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.int8_calibrator (set)",
                 "Runtime.deserialize_cuda_engine", "ICudaEngine.device_memory_size_v2",
                 "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
                 "IExecutionContext.execute_async_v3", "ICudaEngine.get_tensor_dtype", "BuilderFlag.SPARSE_WEIGHTS",
                 "tensorrt.IInt8EntropyCalibrator2", "ILogger.Severity.VERBOSE"):
        assert name in used, f"{name} not reached: {sorted(used)}"
    assert {u.what for u in report.dynamic} == {"tensorrt.<cal.calibrator>", "BuilderFlag.<name>"}


def test_8x_only_names_sit_only_on_the_8_2_path(stubs):
    """Checked with every branch reachable, the code uses names TensorRT 10 lacks; checked with
    the version guards evaluated for 10.x, none: the guards, and nothing else, keep them out."""
    unguarded = {str(u) for u in _check(stubs, guards=False).problems}
    guarded = _check(stubs)
    dead = {str(u) for u in guarded.dead if u.problem}
    assert unguarded and unguarded == dead, (sorted(unguarded), sorted(dead))
    names = {u.what for u in guarded.dead if u.problem}
    assert {"IBuilderConfig.max_workspace_size", "ICudaEngine.get_binding_index", "ICudaEngine.num_bindings",
            "IExecutionContext.execute_async_v2", "IExecutionContext.set_binding_shape"} <= names
    assert all(u.where.startswith("edgeprune/backends/tensorrt.py:") for u in guarded.dead)


def _mutated(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """A copy of the TensorRT modules with `old` replaced once in tensorrt.py; the line it is on."""
    for p in _trt_modules():
        dst = tmp_path / p.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    path = tmp_path / "edgeprune" / "backends" / "tensorrt.py"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return tmp_path, text[:text.index(old)].count("\n") + 1


@pytest.mark.parametrize("old, new, what", [
    ("trt.MemoryPoolType.WORKSPACE,", "trt.MemoryPoolType.WORKSPACE_SIZE,", "MemoryPoolType.WORKSPACE_SIZE"),
    ("ok = self.context.execute_async_v3(", "ok = self.context.execute_async_v4(", "IExecutionContext.execute_async_v4"),
    ("config.set_timing_cache(config.create_timing_cache(blob), False)",
     "config.set_timing_cache(config.create_timing_cache(blob))", "IBuilderConfig.set_timing_cache(...)"),
    ("ok = self.context.execute_async_v3(stream_handle=", "ok = self.context.execute_async_v3(stream=",
     "IExecutionContext.execute_async_v3(...)"),
    ("if builder.num_DLA_cores <= plan.dla_core:", "if builder.num_dla_cores <= plan.dla_core:", "Builder.num_dla_cores"),
    ("return int(engine.device_memory_size_v2)", "return int(engine.device_memory_size_v3)",
     "ICudaEngine.device_memory_size_v3"),
    # an 8.x-only name moved off its guard onto the 10.x path
    ('if plan.generation == "8.2":\n        config.max_workspace_size', 'if plan.dla_core < 99:\n        config.max_workspace_size',
     "IBuilderConfig.max_workspace_size"),
])
def test_a_name_tensorrt_10_lacks_fails_with_the_name_and_line(tmp_path, stubs, old, new, what):
    root, line = _mutated(tmp_path, old, new)
    if "max_workspace_size" in old:
        line += 1
    problems = [str(u) for u in _check(stubs, root).problems]
    assert problems == [p for p in problems if p.startswith(f"edgeprune/backends/tensorrt.py:{line}: {what}")], problems
    assert len(problems) == 1, problems


def test_a_read_only_property_written_fails(tmp_path, stubs):
    root, line = _mutated(tmp_path, "        runtime.DLA_core = plan.dla_core\n",
                          "        runtime.DLA_core = plan.dla_core\n        runtime.num_DLA_cores = 1\n")
    assert [str(u) for u in _check(stubs, root).problems] == [
        f"edgeprune/backends/tensorrt.py:{line + 1}: Runtime.num_DLA_cores: a read-only property in TensorRT "
        f"{stubs.trt_version}"]


def test_a_builder_flag_or_calibrator_the_plan_names_must_exist(stubs):
    names = _dynamic_names()
    names["BuilderFlag"].append("STRICT_TYPES")           # removed in TensorRT 10
    names["tensorrt"].append("IInt8LegacyCalibrator2")
    report = check_code(_trt_modules(), stubs, root=ROOT, dynamic_names=names)
    found = {(u.where.split(":")[0], u.what) for u in report.problems}
    assert found == {("edgeprune/backends/tensorrt.py", "BuilderFlag.STRICT_TYPES"),
                     ("edgeprune/backends/tensorrt.py", "tensorrt.IInt8LegacyCalibrator2")}


def _fake(stubs: Stubs):
    return make_fake_tensorrt(".".join(stubs.trt_version.split(".")[:3]))


def test_the_fake_offers_only_what_tensorrt_10_has(stubs):
    problems = check_fake(_fake(stubs), stubs, bookkeeping=FAKE_BOOKKEEPING)
    assert not problems, "\n".join(problems)


def test_the_fake_check_reports_a_name_kind_or_signature_tensorrt_lacks(stubs):
    fake = _fake(stubs)
    fake.Builder.build_engine = lambda self, network, config: None          # removed in 10.0
    fake.OnnxParser.parse_from_file = lambda self, path: True                # TensorRT's is (model)
    fake.BuilderFlag = enum.Enum("BuilderFlag", ["FP16", "STRICT_TYPES"])    # STRICT_TYPES: removed in 10.0
    fake.Builder.num_DLA_cores = lambda self: 2                              # a property in TensorRT
    engine = fake.Runtime(fake.Logger()).deserialize_cuda_engine(b"fake-plan")
    type(engine).get_binding_index = lambda self, name: 0                   # the 8.x binding API
    v = stubs.trt_version
    assert sorted(check_fake(fake, stubs, bookkeeping=FAKE_BOOKKEEPING)) == sorted([
        f"fake Builder.build_engine: TensorRT {v} has no such name",
        f"fake OnnxParser.parse_from_file(path): TensorRT {v} has parse_from_file(model)",
        f"fake BuilderFlag.STRICT_TYPES: TensorRT {v} has no such member",
        f"fake Builder.num_DLA_cores: a function in the fake, a property in TensorRT {v}",
        f"fake ICudaEngine.get_binding_index: TensorRT {v} has no such name",
    ])


def test_the_fake_check_sees_instance_attributes(stubs):
    fake = _fake(stubs)

    def __init__(self, network, logger):
        self.num_errors = 0
        self.error_count = 0         # not TensorRT's

    fake.OnnxParser.__init__ = __init__
    assert check_fake(fake, stubs, bookkeeping=FAKE_BOOKKEEPING) == [
        f"fake OnnxParser.error_count: TensorRT {stubs.trt_version} has no such name"]
