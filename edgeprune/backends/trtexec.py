"""`trtexec` for an EnginePlan: the exact command lines per TensorRT generation, and parsers for
what trtexec writes (DEPLOY.md §2).

Flags per generation follow trtexec's `--help` (`samples/common/sampleOptions.cpp`) and NVIDIA's
migration guides: 8.2 has `--workspace`, `--buildOnly` and a single `--percentile`; from 8.4 the
memory pools (`--memPoolSize`) replace `--workspace` (removed in 10.0); 11.x removed `--fp16`,
`--int8`, `--calib` (strongly typed networks) and made CUDA graphs, spin-wait and a separate
profiling run the default.

The parsers read the `--exportTimes`, `--exportProfile` and `--exportLayerInfo` JSON files, the
"=== Performance summary ===" lines and the builder's "(Sparsity)" lines. trtexec writes its JSON
by hand with `std::ostream` (`sampleReporting.cpp`), so a non-finite number comes out as `inf` or
`nan` and a layer name is not escaped: the readers accept both.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.backends.trt_plan import EnginePlan
from edgeprune.errors import InputError

TRTEXEC = "trtexec"


def shape_spec(name: str, dims: list[int]) -> str:
    """trtexec's shape syntax: `input:1x1x28x28`."""
    return f"{name}:{'x'.join(map(str, dims))}"


def build_command(plan: EnginePlan) -> list[str]:
    """The trtexec command that builds `plan.engine` from `plan.onnx` with the plan's flags."""
    gen = plan.generation
    cmd = [TRTEXEC, f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}"]
    if gen == "8.2":
        cmd.append("--explicitBatch")            # the ONNX parser needs explicit batch in 8.x
    if plan.dynamic_batch:
        for key in ("min", "opt", "max"):
            cmd.append(f"--{key}Shapes={shape_spec(plan.input_name, plan.profile[key])}")
    if gen == "8.2":
        cmd.append(f"--workspace={plan.workspace_mb}")
    else:
        cmd.append(f"--memPoolSize=workspace:{plan.workspace_mb}")   # MiB
    if "FP16" in plan.builder_flags:
        cmd.append("--fp16")
    if "INT8" in plan.builder_flags:
        cmd.append("--int8")
        # Without --calib trtexec calibrates on random inputs: right speed, meaningless accuracy.
        cmd.append(f"--calib={plan.calibration.cache}")
    if plan.sparsity == "2:4":
        cmd.append("--sparsity=enable")
    cmd += _dla_flags(plan)
    if "GPU_FALLBACK" in plan.builder_flags:
        cmd.append("--allowGPUFallback")
    if plan.timing_cache:
        cmd.append(f"--timingCacheFile={plan.timing_cache}")
    cmd += ["--profilingVerbosity=detailed", f"--exportLayerInfo={plan.layer_info}"]
    cmd.append("--buildOnly" if gen == "8.2" else "--skipInference")
    return cmd


def bench_command(plan: EnginePlan, batch: int, *, control: bool = False) -> list[str]:
    """The trtexec command that times the built engine at `batch` and exports times and profile;
    ``control``: the dense engine's second run, the A/A control (`{model}.b{batch}.control.*`)."""
    gen = plan.generation
    cmd = [TRTEXEC, f"--loadEngine={plan.engine}"]
    if plan.dynamic_batch:
        cmd.append(f"--shapes={shape_spec(plan.input_name, plan.shape(batch))}")
    cmd += _dla_flags(plan)
    cmd += [f"--warmUp={plan.warmup_ms}", f"--duration={plan.duration_s}", f"--iterations={plan.iterations}"]
    if gen == "8.2":
        # 8.2 reports one percentile (the median is always printed).
        cmd.append(f"--percentile={_num(max(plan.percentiles))}")
    else:
        cmd.append(f"--percentile={','.join(_num(p) for p in plan.percentiles)}")
    if gen != "11":
        if plan.dla_core < 0:
            cmd.append("--useCudaGraph")          # default (and the flag a no-op) in 11.x
        cmd += ["--useSpinWait", "--separateProfileRun"]
    elif plan.dla_core >= 0:
        cmd.append("--noCudaGraph")               # DLA work cannot be captured in a CUDA graph
    stem = f"{plan.model}.b{batch}" + (".control" if control else "")
    cmd += [f"--exportTimes={stem}.times.json", f"--exportProfile={stem}.profile.json"]
    return cmd


def _dla_flags(plan: EnginePlan) -> list[str]:
    return [f"--useDLACore={plan.dla_core}"] if plan.dla_core >= 0 else []


def _num(p: float) -> str:
    return f"{p:g}"


def build_script(plans: list[EnginePlan], python_build: bool) -> str:
    """`trtexec_build.sh`: build every plan's engine on the device, keeping the build logs.

    With INT8 through a calibrator (TensorRT <= 10) the cache must come from real images, which
    trtexec cannot read: the script first builds through edgeprune's Python API (which writes the
    cache), unless the cache is already there. `python_build` says whether any plan needs that.
    """
    lines = _script_head(plans, "Build the TensorRT engines")
    for plan in plans:
        lines.append(f"# {plan.model}: {plan.precision}, TensorRT {plan.tensorrt} (API generation {plan.generation})")
        if python_build and plan.int8_mode == "calibrator":
            lines.append(f"[ -f {shlex.quote(plan.calibration.cache)} ] || "
                         f"python3 -m edgeprune.backends.tensorrt build engine_plan.json --model {plan.model}")
        lines.append(f"{shlex.join(build_command(plan))} > {shlex.quote(plan.build_log)} 2>&1")
    return "\n".join(lines) + "\n"


def bench_script(plans: list[EnginePlan]) -> str:
    """`trtexec_bench.sh`: time every engine at every batch size, dense and pruned alternating, then
    the dense engine again: its A/A control, which shows how far two runs of one engine drift."""
    lines = _script_head(plans, "Benchmark the built engines")
    for batch in plans[0].batch_sizes:
        runs = [(plan, False) for plan in plans] + [(plan, True) for plan in plans if plan.model == "dense"]
        for plan, control in runs:
            log = f"{plan.model}.b{batch}{'.control' if control else ''}.bench.log"
            lines.append(f"{shlex.join(bench_command(plan, batch, control=control))} > {shlex.quote(log)} 2>&1")
    return "\n".join(lines) + "\n"


def _script_head(plans: list[EnginePlan], what: str) -> list[str]:
    p = plans[0]
    return [
        "#!/usr/bin/env bash",
        f"# {what} for target {p.target} (TensorRT {p.tensorrt}). Generated by edgeprune: run it on the",
        "# device, in this directory. Record `nvpmodel -q` and `jetson_clocks --show` with the results.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]


# ---------------------------------------------------------------- parsers
@dataclass
class Stats:
    """One metric over the timed iterations, in milliseconds."""

    n: int
    mean: float
    median: float
    min: float
    max: float
    percentiles: dict[str, float] = field(default_factory=dict)   # "p99" -> ms

    @classmethod
    def of(cls, values: list[float] | np.ndarray, percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)) -> Stats:
        a = np.asarray(values, dtype=np.float64)
        if a.size == 0:
            raise InputError("no timed iterations to summarise")
        return cls(n=int(a.size), mean=float(a.mean()), median=float(np.median(a)), min=float(a.min()),
                   max=float(a.max()), percentiles={f"p{_num(p)}": float(np.percentile(a, p)) for p in percentiles})


@dataclass
class TimesResult:
    """`--exportTimes`: per-iteration GPU compute time, host latency (H2D + compute + D2H),
    enqueue time and transfers; throughput = iterations / host walltime of the timed window."""

    iterations: int
    compute_ms: Stats
    latency_ms: Stats
    enqueue_ms: Stats
    h2d_ms: Stats
    d2h_ms: Stats
    walltime_s: float
    throughput_qps: float
    dropped_warmup: int = 0
    compute_samples_ms: list[float] = field(default_factory=list)   # each timed iteration's GPU compute time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_trtexec_times(path: str | Path, *, warmup_ms: float = 0.0,
                        percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)) -> TimesResult:
    """Read a trtexec `--exportTimes` file.

    TensorRT 8.2 writes the warm-up iterations too (later versions drop them); pass the
    `--warmUp` value and iterations that started computing before it are dropped, as trtexec's
    own summary does.
    """
    rows = _json_file(path, "--exportTimes")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: not a trtexec --exportTimes file (expected a JSON array of objects)")
    need = ("startH2dMs", "endD2hMs", "startComputeMs", "computeMs", "latencyMs", "h2dMs", "d2hMs",
            "startEnqMs", "endEnqMs")
    missing = [k for k in need if rows and k not in rows[0]]
    if missing:
        raise InputError(f"{path}: not a trtexec --exportTimes file (missing {', '.join(missing)})")
    timed = [r for r in rows if r["startComputeMs"] >= warmup_ms]
    if not timed:
        raise InputError(f"{path}: no timed iterations (all {len(rows)} started before the {warmup_ms:g} ms warm-up)")

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in timed]

    wall_ms = float(timed[-1]["endD2hMs"]) - float(timed[0]["startH2dMs"])
    return TimesResult(
        iterations=len(timed),
        compute_ms=Stats.of(col("computeMs"), percentiles),
        latency_ms=Stats.of(col("latencyMs"), percentiles),
        enqueue_ms=Stats.of([r["endEnqMs"] - r["startEnqMs"] for r in timed], percentiles),
        h2d_ms=Stats.of(col("h2dMs"), percentiles),
        d2h_ms=Stats.of(col("d2hMs"), percentiles),
        walltime_s=wall_ms / 1000.0,
        throughput_qps=len(timed) / wall_ms * 1000.0 if wall_ms > 0 else math.nan,
        dropped_warmup=len(rows) - len(timed),
        compute_samples_ms=col("computeMs"),
    )


@dataclass
class LayerTime:
    name: str
    time_ms: float            # summed over the profiled iterations
    average_ms: float
    median_ms: float | None   # absent in TensorRT 8.2
    percentage: float


@dataclass
class ProfileResult:
    """`--exportProfile`: per-layer times over `count` profiled iterations, slowest first."""

    count: int
    layers: list[LayerTime]

    @property
    def total_average_ms(self) -> float:
        return sum(layer.average_ms for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PROFILE_ROW = re.compile(r'"name"\s*:\s*"(?P<name>.*)"\s*,\s*"timeMs"\s*:\s*(?P<rest>.*?)\s*\}\s*$')


def parse_trtexec_profile(path: str | Path) -> ProfileResult:
    """Read a trtexec `--exportProfile` file: `[{"count": N}, {"name", "timeMs", "averageMs",
    ["medianMs",] "percentage"}, ...]`."""
    text = _read(path)
    try:
        rows = json.loads(_finite(text))
    except json.JSONDecodeError:
        rows = _profile_rows_by_line(text, path)   # a layer name with a quote or backslash in it
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or "count" not in rows[0]:
        raise InputError(f"{path}: not a trtexec --exportProfile file (the first element must be {{\"count\": N}})")
    layers = []
    for r in rows[1:]:
        try:
            layers.append(LayerTime(name=str(r["name"]), time_ms=float(r["timeMs"]), average_ms=float(r["averageMs"]),
                                    median_ms=float(r["medianMs"]) if "medianMs" in r else None,
                                    percentage=float(r["percentage"])))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: layer entry {r!r} lacks name/timeMs/averageMs/percentage") from None
    layers.sort(key=lambda layer: layer.time_ms, reverse=True)
    return ProfileResult(count=int(rows[0]["count"]), layers=layers)


def _profile_rows_by_line(text: str, path) -> list[dict]:
    rows: list[dict] = []
    for line in text.splitlines():
        if '"count"' in line and not rows:
            m = re.search(r'"count"\s*:\s*(\d+)', line)
            rows.append({"count": int(m.group(1))} if m else {})
            continue
        m = _PROFILE_ROW.search(line)
        if m:
            try:
                rest = json.loads(_finite('{"timeMs" : ' + m.group("rest") + "}"))
            except json.JSONDecodeError:
                raise InputError(f"{path}: unreadable --exportProfile line: {line.strip()[:120]}") from None
            rows.append({"name": m.group("name"), **rest})
    if not rows:
        raise InputError(f"{path}: not a trtexec --exportProfile file")
    return rows


@dataclass
class EngineLayer:
    name: str
    layer_type: str
    tactic: str | None            # TacticName (detailed verbosity only)
    sparse_weights: bool | None   # HasSparseWeights (convolutions, detailed verbosity only)
    output_format: str | None     # "Format/Datatype" of the first output: says FP32/FP16/INT8


@dataclass
class LayerInfoResult:
    """`--exportLayerInfo` (engine inspector JSON): the engine's layers and its I/O tensor names.
    `io_key` is "Bindings" before TensorRT 11, "I/O Tensors" from 11."""

    layers: list[EngineLayer]
    io_tensors: list[str]
    io_key: str
    detailed: bool

    def layer_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.layer_type] = out.get(layer.layer_type, 0) + 1
        return out

    def precisions(self) -> dict[str, int]:
        """Layers per output precision (FP32, FP16, INT8, ...): what the builder chose for each layer."""
        out: dict[str, int] = {}
        for layer in self.layers:
            m = _PRECISION.search(layer.output_format or "")
            if m:
                name = _PRECISION_NAMES.get(m.group(1).lower(), m.group(1).upper())
                out[name] = out.get(name, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The data type inside a layer's "Format/Datatype" ("Row major linear FP32", "Channel major FP16 format ...").
_PRECISION = re.compile(r"\b(FP32|FP16|BF16|FP8|INT8|INT4|Float|Half)\b", re.IGNORECASE)
_PRECISION_NAMES = {"float": "FP32", "half": "FP16"}


def engine_facts(layer_info: str | Path | None, device_memory_bytes: int | None) -> dict[str, Any]:
    """The report's `engine_facts` entry of one engine: its device memory and its layers (count, per
    output precision, per type), from the engine inspector's JSON (Python API or `--exportLayerInfo`)."""
    facts: dict[str, Any] = {"device_memory_bytes": device_memory_bytes, "layers": None, "precisions": None,
                             "layer_types": None}
    if layer_info is not None and Path(layer_info).is_file():
        info = parse_trtexec_layer_info(layer_info)
        facts.update(layers=len(info.layers), precisions=info.precisions() or None,
                     layer_types=info.layer_types() if info.detailed else None)
    return facts


def parse_trtexec_layer_info(path: str | Path) -> LayerInfoResult:
    """Read a trtexec `--exportLayerInfo` file. With `--profilingVerbosity=detailed` every layer
    is an object (Name, LayerType, Inputs, Outputs, TacticName, ...); otherwise a name."""
    doc = _json_file(path, "--exportLayerInfo")
    if not isinstance(doc, dict) or "Layers" not in doc:
        raise InputError(f"{path}: not a trtexec --exportLayerInfo file (no \"Layers\")")
    key = "I/O Tensors" if "I/O Tensors" in doc else "Bindings"
    io = [t if isinstance(t, str) else str(t.get("Name", t)) for t in doc.get(key, [])]
    layers, detailed = [], False
    for entry in doc["Layers"]:
        if isinstance(entry, str):
            layers.append(EngineLayer(entry, "", None, None, None))
            continue
        detailed = True
        outputs = entry.get("Outputs") or [{}]
        sparse = entry.get("HasSparseWeights")
        layers.append(EngineLayer(
            name=str(entry.get("Name", "")), layer_type=str(entry.get("LayerType", "")),
            tactic=entry.get("TacticName"), sparse_weights=None if sparse is None else bool(sparse),
            output_format=outputs[0].get("Format/Datatype") if isinstance(outputs[0], dict) else None,
        ))
    return LayerInfoResult(layers=layers, io_tensors=io, io_key=key, detailed=detailed)


@dataclass
class SparsityResult:
    """The builder's two "(Sparsity)" INFO lines: layers whose weights have the 2:4 pattern, and
    layers for which the sparse kernel won the timing. None = the line is not in the log (the
    build did not enable sparsity, or the log level was above INFO)."""

    eligible: list[str] | None
    picked: list[str] | None


_ELIGIBLE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:(.*)$")
_PICKED = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:(.*)$")


def parse_sparsity(log_text: str) -> SparsityResult:
    """The "(Sparsity)" lines of a trtexec or TensorRT Python build log."""
    eligible = picked = None
    for line in log_text.splitlines():
        if m := _ELIGIBLE.search(line):
            eligible = _layer_list(m.group(1))
        elif m := _PICKED.search(line):
            picked = _layer_list(m.group(1))
    return SparsityResult(eligible, picked)


def _layer_list(text: str) -> list[str]:
    # Fused layer names hold " + " but never ", ".
    return [name.strip() for name in text.split(", ") if name.strip()]


_SUMMARY = re.compile(
    r"(?P<metric>Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency): "
    r"min = (?P<min>\S+) ms, max = (?P<max>\S+) ms, mean = (?P<mean>\S+) ms, median = (?P<median>\S+) ms"
    r"(?P<pcts>(?:, percentile\([\d.]+%\) = \S+ ms)*)")
_PCT = re.compile(r"percentile\((?P<p>[\d.]+)%\) = (?P<v>\S+) ms")


@dataclass
class SummaryResult:
    """"=== Performance summary ===" of a trtexec benchmark log."""

    throughput_qps: float
    metrics: dict[str, Stats]          # "GPU Compute Time", "Latency", ... (n = 0: not in the log)
    total_host_walltime_s: float | None
    total_gpu_compute_s: float | None
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_trtexec_summary(log_text: str) -> SummaryResult:
    """Throughput, min/max/mean/median/percentiles per metric, totals and trtexec's warnings
    ("GPU compute time is unstable ...", "Throughput may be bound by ...")."""
    throughput = None
    metrics: dict[str, Stats] = {}
    wall = gpu = None
    warnings = []
    for line in log_text.splitlines():
        if m := re.search(r"Throughput: (\S+) qps", line):
            throughput = float(m.group(1))
        elif m := _SUMMARY.search(line):
            pcts = {f"p{_num(float(p['p']))}": float(p["v"]) for p in _PCT.finditer(m.group("pcts"))}
            metrics[m.group("metric")] = Stats(0, float(m.group("mean")), float(m.group("median")),
                                               float(m.group("min")), float(m.group("max")), pcts)
        elif m := re.search(r"Total Host Walltime: (\S+) s", line):
            wall = float(m.group(1))
        elif m := re.search(r"Total GPU Compute Time: (\S+) s", line):
            gpu = float(m.group(1))
        elif m := re.search(r"\[W\] \* (.+)$", line):
            warnings.append(m.group(1).strip())
    if throughput is None or "GPU Compute Time" not in metrics:
        raise InputError("no trtexec performance summary in the log (was the benchmark run with --skipInference?)")
    return SummaryResult(throughput, metrics, wall, gpu, warnings)


def _read(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    return p.read_text(errors="replace")


def _finite(text: str) -> str:
    """C++ streams print non-finite floats as inf/nan; JSON spells them Infinity/NaN."""
    text = re.sub(r"(?<=[:\[,\s])-nan\b|(?<=[:\[,\s])nan\b", "NaN", text)
    return re.sub(r"(?<=[:\[,\s])(-?)inf\b", r"\1Infinity", text)


def _json_file(path: str | Path, what: str) -> Any:
    try:
        return json.loads(_finite(_read(path)))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a trtexec {what} file ({e.msg} at line {e.lineno})") from None
