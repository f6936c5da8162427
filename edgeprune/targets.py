"""Targets: one TOML file per device, validated into a frozen `Target`.

A target is data, not code. It names the backend that builds and runs engines, the software
stack the device is expected to have, the hardware it is, how engines are built (`[build]`) and
how they are measured (`[run]`). Every table accepts only the keys declared below, so a typo in a
target file is an error naming the key and the file instead of a silently ignored setting.

The shipped targets live in `edgeprune/shipped/targets/`; a user adds a device without touching the
package, in a folder named by `--targets-dir` or `EDGEPRUNE_TARGETS` (a file there wins over a
shipped one of the same name), or by passing the file's path. Adding a setting is adding a field
here and one line to the matching `_*_KEYS` table.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from edgeprune.backends.trt_versions import trt_generation, trt_parser_max_opset
from edgeprune.errors import InputError, UnknownNameError
from edgeprune.versions import version_tuple

# Backends a target may name. A name here need not be importable on this machine (TensorRT
# targets load on the GPU-less build host); `edgeprune.backends.get_backend` says whether it runs.
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "layout", "all")
MODEL_FORMATS = ("onnx", "ort")
SPARSITY_MODES = ("none", "2:4")           # TensorRT SPARSE_WEIGHTS needs 2:4 weights (Ampere+)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")
ORT_TARGET_PLATFORMS = ("", "amd64", "arm")  # "" = this host
# build.round_to = "host": the fp32 vector width of the CPU edgeprune runs on (edgeprune/host_simd.py).
ROUND_TO_HOST = "host"
TARGETS_ENV = "EDGEPRUNE_TARGETS"

_TOP_KEYS = {"description", "backend", "ssh", "device", "stack", "hardware", "build", "run"}
_DEVICE_KEYS = {"ssh", "python", "workdir"}

# Generic key tables: Jetson / ARM targets fill different subsets of the same known keys.
# Values are the accepted Python types after TOML parsing.
_STACK_KEYS: dict[str, tuple[type, ...]] = {
    "onnxruntime": (str,),  # version range, e.g. ">=1.18,<2"
    "max_opset": (int,),
    "ort_build": (str,),  # full | minimal | extended
    "available_eps": (list,),
    "python": (str,),
    "jetpack": (str,),
    "l4t": (str,),
    "tensorrt": (str,),
    "cuda": (str,),
    "cudnn": (str,),
}
_HARDWARE_KEYS: dict[str, tuple[type, ...]] = {
    "family": (str,),  # host | jetson | linux-arm | android | ...
    "arch": (str,),  # x86_64 | aarch64
    "module": (str,),
    "soc": (str,),
    "cpu": (str,),
    "cpu_cores": (int,),
    "big_cores": (list,),
    "ram_bytes": (int,),
    "gpu": (str,),
    "compute_capability": (str,),
    "dla_cores": (int,),
    "sparse_tensor_cores": (bool,),
    "power_modes": (list,),  # nominal nvpmodel mode names; `nvpmodel -p --verbose` lists the real ones
}

@dataclass(frozen=True)
class BuildPolicy:
    """How an engine is built and how its session is opened.

    `threads` = 0 lets the backend pick (ONNX Runtime: one per physical core). `cpu_mem_arena`
    applies to latency/accuracy sessions only: memory is always measured with the arena off,
    because the arena grows in powers of two and never shrinks.
    """

    precision: str = "fp32"
    threads: int = 1
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    spinning: bool = False
    cpu_mem_arena: bool = True
    model_format: str = "onnx"
    # ONNX Runtime: which CPU the optimised/.ort model is for; "arm" keeps x86-only layouts out.
    ort_target_platform: str = ""
    # INT8: calibration method (ORT names; TensorRT <= 10 uses its entropy calibrator for
    # "entropy") and the default calibration set when none is given (an .npz path; a relative one
    # not found from the working directory is one edgeprune ships, e.g. "calibration/fmnist.npz").
    calibration_method: str = "minmax"
    calibration: str = ""
    # Channel pruning for this device (`compress --target`) keeps widths multiples of this: the
    # SIMD width of its CPU or the tensor-core tile of its GPU. "host" in a file = this CPU's width.
    # 8 when a file does not say: a multiple of NEON's and SSE's 4 and of FP16 tensor-core tiles.
    round_to: int = 8
    # TensorRT
    sparsity: str = "none"          # "2:4": set SPARSE_WEIGHTS so TensorRT may pick sparse kernels
    dla_core: int = -1              # -1 = GPU only; >= 0 = that DLA core
    gpu_fallback: bool = True       # with a DLA core: layers DLA cannot run go to the GPU
    workspace_mb: int = 1024        # memory pool limit for tactics (MiB)
    timing_cache: bool = True       # reuse tactic timings across builds on the same device

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["execution_providers"] = list(self.execution_providers)
        return d


@dataclass(frozen=True)
class RunPolicy:
    """How latency is measured: `warmup` rounds, then at least `iterations` timed rounds and at
    least `min_seconds` of timing per batch size."""

    warmup: int = 20
    iterations: int = 200
    batch_sizes: tuple[int, ...] = (1, 64)
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)
    min_seconds: float = 0.0
    # Jetson: the nvpmodel mode (by name) and jetson_clocks state measurements are meant for;
    # latency differs ~10x across modes, so runs with different values must not be compared.
    power_mode: str = ""
    jetson_clocks: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        d["percentiles"] = list(self.percentiles)
        return d


@dataclass(frozen=True)
class DeviceAccess:
    """How to reach the board over SSH (`[device]`): the host as `ssh` takes it, its python, and
    the folder edgeprune keeps jobs and built engines in there."""

    python: str = "python3"
    workdir: str = "~/.cache/edgeprune"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    stack: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    build: BuildPolicy = field(default_factory=BuildPolicy)
    run: RunPolicy = field(default_factory=RunPolicy)
    ssh: str | None = None   # `[device] ssh`, or the older top-level `ssh` key
    path: Path | None = None
    device: DeviceAccess = field(default_factory=DeviceAccess)

    @property
    def trt_version(self) -> tuple[int, ...] | None:
        """`stack.tensorrt` as a tuple (`"10.3.0"` -> `(10, 3, 0)`), None when the stack names none."""
        text = self.stack.get("tensorrt")
        return version_tuple(text) if text else None

    @property
    def trt_generation(self) -> str | None:
        """The TensorRT API generation of the stack (see `trt_generation`), None without TensorRT."""
        version = self.trt_version
        return trt_generation(version) if version else None


TargetsDir = str | Path | Sequence[str | Path] | None


def target_dirs(targets_dir: TargetsDir = None) -> list[Path]:
    """The folders target names are looked up in, first match first: `targets_dir` (the CLI's
    `--targets-dir`), each folder of `EDGEPRUNE_TARGETS` (separated by os.pathsep), then the
    targets edgeprune ships. A user's folder that does not exist is an InputError."""
    from edgeprune.shipped import shipped_path

    given = [targets_dir] if isinstance(targets_dir, (str, Path)) else list(targets_dir or [])
    env = [p for p in os.environ.get(TARGETS_ENV, "").split(os.pathsep) if p]
    for where, paths in (("--targets-dir", given), (TARGETS_ENV, env)):
        for p in paths:
            if not Path(p).is_dir():
                raise InputError(f"{where}: targets folder not found: {p}")
    return [Path(p) for p in given + env] + [shipped_path("targets")]


def _target_files(targets_dir: TargetsDir) -> dict[str, Path]:
    """Every target name in the search path and the file that wins for it."""
    found: dict[str, Path] = {}
    for d in target_dirs(targets_dir):
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def load_target(name_or_path: str | Path, targets_dir: TargetsDir = None) -> Target:
    """Load a target by name (`host-cpu`: the first `host-cpu.toml` in `target_dirs(targets_dir)`)
    or by file path."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"target file not found: {path}")
        return _load_file(path)
    files = _target_files(targets_dir)
    if text not in files:
        members = family_members(text, targets_dir)
        if members:
            raise UnknownNameError(f"target '{text}' is a family: {', '.join(members)} — name one")
        raise UnknownNameError(f"unknown target '{text}' (available: {', '.join(sorted(files)) or 'none'})")
    return _load_file(files[text])


def family_members(name: str, targets_dir: TargetsDir = None) -> list[str]:
    """The target names of family ``name``: those it prefixes (``jetson`` -> ``jetson-nano``, ...;
    ``raspberry-pi`` -> ``raspberry-pi-4``, ``raspberry-pi-5``), so a user's own ``jetson-*.toml`` joins
    the family without a list to edit. Empty for a name that is no family."""
    return sorted(n for n in _target_files(targets_dir) if n.startswith(f"{name}-"))


def list_targets(targets_dir: TargetsDir = None) -> list[Target]:
    """Every target by name, a user's file in place of a shipped one of the same name."""
    return [_load_file(p) for _, p in sorted(_target_files(targets_dir).items())]


def stack_summary(target: Target) -> str:
    """The software stack in a few words: `JetPack 6.2, TensorRT 10.3.0, CUDA 12.6` or `onnxruntime >=1.18,<2`."""
    st = target.stack
    if target.backend == "tensorrt":
        parts = [("JetPack", st.get("jetpack")), ("TensorRT", st.get("tensorrt")), ("CUDA", st.get("cuda"))]
        return ", ".join(f"{k} {v}" for k, v in parts if v)
    return f"{target.backend} {st.get(target.backend, 'any')}"


def build_policy_from_dict(data: dict[str, Any], source: str = "build policy") -> BuildPolicy:
    """Validate a `[build]` table (also used for the JSON the memory probe receives)."""
    return _parse_build(data, source)


def run_policy_from_dict(data: dict[str, Any], source: str = "run policy") -> RunPolicy:
    """Validate a `[run]` table (also used for the job a board receives)."""
    return _parse_run(data, source)


def _load_file(path: Path) -> Target:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    src = str(path)
    _no_unknown(data, _TOP_KEYS, src, "")
    backend = _get(data, "backend", str, src, "", required=True)
    if backend not in BACKENDS:
        raise InputError(f"{src}: unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    ssh = _get(data, "ssh", str, src, "")
    dev = _table(data, "device", src)
    _no_unknown(dev, _DEVICE_KEYS, src, "device")
    ssh = _get(dev, "ssh", str, src, "device", default=ssh)
    device = DeviceAccess(python=_get(dev, "python", str, src, "device", default=DeviceAccess.python),
                          workdir=_get(dev, "workdir", str, src, "device", default=DeviceAccess.workdir))
    target = Target(
        name=path.stem,
        description=_get(data, "description", str, src, "", default=""),
        backend=backend,
        stack=_parse_generic(_table(data, "stack", src), _STACK_KEYS, src, "stack"),
        hardware=_parse_generic(_table(data, "hardware", src), _HARDWARE_KEYS, src, "hardware"),
        build=_parse_build(_table(data, "build", src), src),
        run=_parse_run(_table(data, "run", src), src),
        ssh=ssh or None,
        path=path.resolve(),
        device=device,
    )
    _check_consistency(target, src)
    return target


def _check_consistency(t: Target, src: str) -> None:
    """Settings that are each valid but contradict each other or the hardware named."""
    b, hw = t.build, t.hardware
    for where, key, item in (("stack", "available_eps", str), ("hardware", "big_cores", int),
                             ("hardware", "power_modes", str)):
        values = (t.stack if where == "stack" else hw).get(key, [])
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in values):
            raise InputError(f"{src}: {where}.{key} must be a list of {item.__name__}")
    if t.backend == "tensorrt":
        if not t.stack.get("tensorrt"):
            raise InputError(f"{src}: backend 'tensorrt' needs stack.tensorrt (the device's TensorRT version, e.g. \"10.3.0\")")
        ceiling = trt_parser_max_opset(t.stack["tensorrt"])
        if t.stack.get("max_opset", 0) > ceiling:
            raise InputError(f"{src}: stack.max_opset {t.stack['max_opset']} is above {ceiling}, the highest opset "
                             f"TensorRT {t.stack['tensorrt']}'s ONNX parser reads")
    if b.sparsity == "2:4" and hw.get("sparse_tensor_cores") is False:
        raise InputError(f"{src}: build.sparsity = \"2:4\" needs sparse tensor cores (Ampere or newer), but "
                         f"hardware.sparse_tensor_cores is false; use sparsity = \"none\"")
    if b.dla_core >= 0:
        if t.backend != "tensorrt":
            raise InputError(f"{src}: build.dla_core needs backend 'tensorrt'; use dla_core = -1")
        if "dla_cores" in hw and b.dla_core >= hw["dla_cores"]:
            raise InputError(f"{src}: build.dla_core = {b.dla_core}, but hardware.dla_cores = {hw['dla_cores']} "
                             f"(cores are numbered from 0; -1 = GPU)")
    modes = hw.get("power_modes")
    if t.run.power_mode and modes and t.run.power_mode not in modes:
        raise InputError(f"{src}: run.power_mode '{t.run.power_mode}' is not one of hardware.power_modes "
                         f"({', '.join(map(str, modes))})")
    if b.ort_target_platform and t.backend != "onnxruntime":
        raise InputError(f"{src}: build.ort_target_platform applies to backend 'onnxruntime' only")


def _parse_generic(table: dict, known: dict[str, tuple[type, ...]], src: str, prefix: str) -> dict:
    _no_unknown(table, set(known), src, prefix)
    for key, value in table.items():
        _check_type(value, known[key], src, f"{prefix}.{key}")
    if prefix == "stack" and "max_opset" in table and table["max_opset"] < 1:
        raise InputError(f"{src}: stack.max_opset must be >= 1, got {table['max_opset']}")
    return dict(table)


def _parse_build(table: dict, src: str) -> BuildPolicy:
    known = {f.name for f in fields(BuildPolicy)}
    _no_unknown(table, known, src, "build")
    d = BuildPolicy()
    precision = _get(table, "precision", str, src, "build", default=d.precision)
    _choice(precision, PRECISIONS, src, "build.precision")
    level = _get(table, "graph_optimization_level", str, src, "build", default=d.graph_optimization_level)
    _choice(level, GRAPH_OPTIMIZATION_LEVELS, src, "build.graph_optimization_level")
    model_format = _get(table, "model_format", str, src, "build", default=d.model_format)
    _choice(model_format, MODEL_FORMATS, src, "build.model_format")
    threads = _get(table, "threads", int, src, "build", default=d.threads)
    inter = _get(table, "inter_op_threads", int, src, "build", default=d.inter_op_threads)
    if threads < 0 or inter < 0:
        raise InputError(f"{src}: build.threads and build.inter_op_threads must be >= 0 (0 = backend default)")
    eps = _get(table, "execution_providers", list, src, "build", default=list(d.execution_providers))
    if not eps or not all(isinstance(e, str) and e for e in eps):
        raise InputError(f"{src}: build.execution_providers must be a non-empty list of provider names")
    return BuildPolicy(
        precision=precision,
        threads=threads,
        inter_op_threads=inter,
        graph_optimization_level=level,
        execution_providers=tuple(eps),
        spinning=_get(table, "spinning", bool, src, "build", default=d.spinning),
        cpu_mem_arena=_get(table, "cpu_mem_arena", bool, src, "build", default=d.cpu_mem_arena),
        model_format=model_format,
        ort_target_platform=_choice_key(table, "ort_target_platform", ORT_TARGET_PLATFORMS, src, d),
        calibration_method=_choice_key(table, "calibration_method", CALIBRATION_METHODS, src, d),
        calibration=_get(table, "calibration", str, src, "build", default=d.calibration),
        round_to=_round_to(table, src, d),
        sparsity=_choice_key(table, "sparsity", SPARSITY_MODES, src, d),
        dla_core=_min_int(table, "dla_core", -1, src, d),
        gpu_fallback=_get(table, "gpu_fallback", bool, src, "build", default=d.gpu_fallback),
        workspace_mb=_min_int(table, "workspace_mb", 1, src, d),
        timing_cache=_get(table, "timing_cache", bool, src, "build", default=d.timing_cache),
    )


def _round_to(table: dict, src: str, d: BuildPolicy) -> int:
    value = _get(table, "round_to", (int, str), src, "build", default=d.round_to)
    if value == ROUND_TO_HOST:
        from edgeprune.host_simd import host_simd

        return host_simd().lanes
    if isinstance(value, str) or value < 1:
        raise InputError(f"{src}: build.round_to must be an integer >= 1 (1 = off) or \"{ROUND_TO_HOST}\" "
                         f"(this CPU's fp32 vector width), got {value!r}")
    return value


def _choice_key(table: dict, key: str, choices: tuple[str, ...], src: str, d: BuildPolicy) -> str:
    value = _get(table, key, str, src, "build", default=getattr(d, key))
    _choice(value, choices, src, f"build.{key}")
    return value


def _min_int(table: dict, key: str, lowest: int, src: str, d: BuildPolicy) -> int:
    value = _get(table, key, int, src, "build", default=getattr(d, key))
    if value < lowest:
        raise InputError(f"{src}: build.{key} must be >= {lowest}, got {value}")
    return value


def _parse_run(table: dict, src: str) -> RunPolicy:
    known = {f.name for f in fields(RunPolicy)}
    _no_unknown(table, known, src, "run")
    d = RunPolicy()
    warmup = _get(table, "warmup", int, src, "run", default=d.warmup)
    iterations = _get(table, "iterations", int, src, "run", default=d.iterations)
    if warmup < 0:
        raise InputError(f"{src}: run.warmup must be >= 0, got {warmup}")
    if iterations < 1:
        raise InputError(f"{src}: run.iterations must be >= 1, got {iterations}")
    batches = _get(table, "batch_sizes", list, src, "run", default=list(d.batch_sizes))
    if not batches or not all(_is_int(b) and b >= 1 for b in batches):
        raise InputError(f"{src}: run.batch_sizes must be a non-empty list of integers >= 1")
    pcts = _get(table, "percentiles", list, src, "run", default=list(d.percentiles))
    if not pcts or not all(_is_number(p) and 0 < p <= 100 for p in pcts):
        raise InputError(f"{src}: run.percentiles must be a non-empty list of numbers in (0, 100]")
    min_seconds = _get(table, "min_seconds", (int, float), src, "run", default=d.min_seconds)
    if min_seconds < 0:
        raise InputError(f"{src}: run.min_seconds must be >= 0, got {min_seconds}")
    return RunPolicy(
        warmup=warmup,
        iterations=iterations,
        batch_sizes=tuple(sorted(set(batches))),
        percentiles=tuple(sorted({float(p) for p in pcts})),
        min_seconds=float(min_seconds),
        power_mode=_get(table, "power_mode", str, src, "run", default=d.power_mode),
        jetson_clocks=_get(table, "jetson_clocks", bool, src, "run", default=d.jetson_clocks),
    )


def _table(data: dict, key: str, src: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InputError(f"{src}: '{key}' must be a table ([{key}]), got {type(value).__name__}")
    return value


def _no_unknown(table: dict, known: set[str], src: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise InputError(f"{src}: unknown key '{where}' (known: {', '.join(sorted(known))})")


def _get(table: dict, key: str, types, src: str, prefix: str, *, default=None, required: bool = False):
    where = f"{prefix}.{key}" if prefix else key
    if key not in table:
        if required:
            raise InputError(f"{src}: missing required key '{where}'")
        return default
    value = table[key]
    _check_type(value, types if isinstance(types, tuple) else (types,), src, where)
    return value


def _check_type(value: Any, types: tuple[type, ...], src: str, where: str) -> None:
    # bool is an int in Python; `threads = true` is a mistake, not 1.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        want = " or ".join(t.__name__ for t in types)
        raise InputError(f"{src}: '{where}' must be {want}, got {type(value).__name__} {value!r}")


def _choice(value: str, choices: tuple[str, ...], src: str, where: str) -> None:
    if value not in choices:
        raise InputError(f"{src}: '{where}' must be one of {', '.join(choices)}, got '{value}'")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
