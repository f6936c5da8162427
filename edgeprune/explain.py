"""`explain`: what a pruned model got, and why its measured speed-up on a target is what it is.

Reads a run directory (`report.json` and the two ONNX models that `deploy` writes beside it) and
turns the weights, the graph and the measurements into findings, one line each with its reason:
compacted layers and the share of MACs they removed; zeros the backend densifies; INT8 (Q/DQ
nodes); layers eligible for 2:4 sparse tensor cores and whether the target has them; widths off
the channel multiple the target wants (its build.round_to); and the measured latency ratio against the MAC ratio and the A/A noise band.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeprune.errors import EdgepruneError, InputError, first_line
from edgeprune.host_simd import host_simd
from edgeprune.onnx_layers import OnnxLayer, quant_nodes, weighted_layers
from edgeprune.onnx_stats import node_macs
from edgeprune.measure.verdict import noise_band, noisy_machine, verdict, within_noise
from edgeprune.pruning.semistructured import ALIGN, MIN_WIDTH, LayerCheck, check_weight
from edgeprune.report.schema import Report, read_report
from edgeprune.targets import Target, TargetsDir, load_target

# Fewer zeros than this (beyond the dense model's own) are not worth a finding.
ZERO_FINDING = 0.05
# A latency ratio within this factor of the MAC ratio "tracks" it.
MAC_TRACKING = 0.25
# Below this dense p50, per-call overhead rather than arithmetic dominates a CPU run.
TINY_MS = 0.1
_DENSIFIES = {
    "onnxruntime": "ONNX Runtime densifies sparse weights at load and multiplies by zeros like by any weight",
    "tensorrt": "TensorRT runs dense kernels over unstructured zeros (only 2:4 weights on sparse tensor cores "
                "skip any)",
}


@dataclass
class Finding:
    """One thing the pruned model got (or did not), and why it matters for speed."""

    topic: str
    text: str
    reason: str

    def line(self) -> str:
        return f"{self.topic}: {self.text}; {self.reason}"


@dataclass
class LayerChange:
    """A weighted layer of the dense model against the pruned one (weights as [out, in, *kernel])."""

    name: str
    op: str
    dense_shape: list[int]
    pruned_shape: list[int]
    dense_macs: int | None        # None: shape inference did not reach the node
    pruned_macs: int | None
    zero_fraction: float          # of the pruned layer's weights

    @property
    def compacted(self) -> bool:
        return self.dense_shape != self.pruned_shape


@dataclass
class Explanation:
    run_dir: str
    target: str
    backend: str
    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerChange] = field(default_factory=list)
    checks: list[LayerCheck] = field(default_factory=list)   # 2:4 check of the pruned layers

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "target": self.target, "backend": self.backend,
                "findings": [asdict(f) | {"line": f.line()} for f in self.findings],
                "layers": [asdict(L) | {"compacted": L.compacted} for L in self.layers],
                "two_four": [c.to_dict() for c in self.checks]}


def explain_run(run_dir: str | Path, target: str | Path | None = None, targets_dir: TargetsDir = None) -> Explanation:
    """Explain the run in ``run_dir``. ``target`` (a name or .toml path) overrides the target the
    report names, e.g. when it was given as a file that has moved; ``targets_dir`` is searched for a
    target name before the shipped targets."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run directory not found: {run}")
    report = read_report(run)
    dense, pruned = (_model(run, side, getattr(report, side).path) for side in ("dense", "pruned"))
    pl = weighted_layers(pruned)
    layers = _layer_changes(dense, pruned, pl)
    checks = [check_weight(L.name, L.op, L.weight) for L in pl]
    int8, quantized, uninspected = _int8(report, pruned)
    name = target or report.target
    try:
        tgt: Target | str = load_target(name, targets_dir)
    except EdgepruneError as e:
        tgt = f"target '{name}' could not be loaded ({e})"
    widths, off = _widths(layers, tgt)
    zeros = _zeros(report, layers, checks)
    findings = [_compaction(layers), zeros, int8, uninspected, _two_four(checks, tgt), widths, _engines(report)]
    findings = [f for f in findings if f is not None]
    findings += _speed(report, off, quantized, zeros is not None)
    return Explanation(str(run), report.target, report.backend, findings, layers, checks)


def _model(run: Path, side: str, recorded: str) -> onnx.ModelProto:
    path = run / f"{side}.onnx"
    if not path.is_file():
        path = Path(recorded)
    if not path.is_file():
        raise InputError(f"{run}: no {side}.onnx, and the report's {side} model {recorded or '(none)'} is gone")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def _layer_changes(dense: onnx.ModelProto, pruned: onnx.ModelProto, pl: list[OnnxLayer]) -> list[LayerChange]:
    """Dense against pruned, layer by layer; `pl` is `weighted_layers(pruned)`, which the caller needs too."""
    dl = weighted_layers(dense)
    if not dl or len(dl) != len(pl):
        raise InputError(f"the pruned model has {len(pl)} Conv/Gemm/MatMul layers with constant weights and the "
                         f"dense one {len(dl)}: nothing to compare layer by layer")
    by_name = {L.name: L for L in pl}
    # the same architecture exported twice keeps its weight names; otherwise fall back to graph order
    pairs = [(d, by_name[d.name]) for d in dl] if all(d.name in by_name for d in dl) else list(zip(dl, pl))
    dm, pm = node_macs(dense), node_macs(pruned)
    return [LayerChange(d.name, d.op, list(d.weight.shape), list(p.weight.shape), dm.get(d.node), pm.get(p.node),
                        1.0 - np.count_nonzero(p.weight) / max(p.weight.size, 1)) for d, p in pairs]


def _compaction(layers: list[LayerChange]) -> Finding:
    compacted = [L for L in layers if L.compacted]
    if not compacted:
        return Finding("compaction", f"no layer was compacted: all {len(layers)} weight tensors keep their dense "
                       "shapes", "no channel or neuron was removed, so the model executes the dense model's MACs")
    shapes = ", ".join(f"{L.name} {_shape(L.dense_shape)}->{_shape(L.pruned_shape)}" for L in compacted)
    uncounted = [L.name for L in layers if L.dense_macs is None or L.pruned_macs is None]
    if uncounted:
        removed = f"an unknown share of the layer MACs (the MACs of {', '.join(uncounted)} could not be counted)"
    else:
        total = sum(L.dense_macs for L in layers)
        removed = f"{sum(L.dense_macs - L.pruned_macs for L in layers) / max(total, 1):.0%} of the dense model's layer MACs"
    return Finding("compaction", f"{len(compacted)} of {len(layers)} layers compacted ({shapes}), removing {removed}",
                   "physically smaller tensors: every backend executes fewer multiply-adds")


def _zeros(report: Report, layers: list[LayerChange], checks: list[LayerCheck]) -> Finding | None:
    pruned_total = sum(int(np.prod(L.pruned_shape)) for L in layers)
    zeros = sum(L.zero_fraction * np.prod(L.pruned_shape) for L in layers) / max(pruned_total, 1)
    if zeros - report.dense.zero_fraction < ZERO_FINDING:
        return None
    two_four = any(c.satisfies for c in checks) and all(c.satisfies or c.groups == 0 for c in checks)
    pattern = "in the 2:4 pattern" if two_four else "unstructured"
    why = _DENSIFIES.get(report.backend, f"the {report.backend} backend runs dense kernels")
    xz = report.ratios.size_xz
    size = f"; they shrink the xz-compressed file to {xz:.2f}x the dense one's" if xz else ""
    return Finding("zeros", f"{zeros:.0%} of the pruned model's layer weights are zero ({pattern})",
                   f"zeros are densified: {why}, so they bring no speed-up{size}")


def _int8(report: Report, pruned: onnx.ModelProto) -> tuple[Finding, bool, Finding | None]:
    """The INT8 finding, whether the pruned side is INT8, and a finding for an engine that could not be
    inspected. The report's precision is what the run built; the graphs show the quantization nodes."""
    found = {"pruned.onnx": quant_nodes(pruned)}   # deploy's fp32 export: an INT8 build quantizes a copy
    int8_onnx = (report.int8 or {}).get("int8_onnx")
    if int8_onnx and Path(str(int8_onnx)).is_file():
        found[Path(str(int8_onnx)).name] = quant_nodes(onnx.load(str(int8_onnx)))
    uninspected = None
    recorded = str(report.run.get("engines", {}).get("pruned", ""))
    if recorded:
        engine = Path(recorded)
        graph, why = _engine_graph(engine)
        if graph is not None:
            found["the pruned engine"] = quant_nodes(graph)
        else:
            uninspected = Finding("engine", f"the pruned engine {engine.name} was not inspected", why)
    where = {k: v for k, v in found.items() if v}
    nodes = "; ".join(f"{sum(v.values())} quantization nodes in {k} ({', '.join(f'{n} {op}' for op, n in v.items())})"
                      for k, v in where.items())
    if report.precision == "int8" or where:
        built = "built in INT8 (the report's precision)" if report.precision == "int8" else ""
        text = "; ".join(t for t in (built, nodes) if t)
        return Finding("int8", f"INT8: {text}", "8-bit kernels move a quarter of fp32's bytes and run faster where "
                                                "the backend has them; accuracy is in the report"), True, uninspected
    return Finding("int8", f"no INT8: the report's precision is {report.precision}; no quantization nodes in "
                           f"{' or '.join(found)}", "it computes in floating point"), False, uninspected


def _engine_graph(engine: Path) -> tuple[onnx.ModelProto | None, str]:
    """The engine as an ONNX graph, or None and why it cannot be read as one."""
    if not engine.is_file():
        return None, f"it is no longer at {engine}"
    if engine.suffix != ".onnx":
        kind = "ORT format" if engine.suffix == ".ort" else f"a '{engine.suffix}' file"
        return None, f"it is in {kind}, which explain cannot read (it reads ONNX graphs); the findings rest on the " \
                     "ONNX models and the report"
    try:
        return onnx.load(str(engine)), ""
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        return None, f"it is not a readable ONNX graph ({type(e).__name__}: {first_line(e)})"


def _two_four(checks: list[LayerCheck], tgt: Target | str) -> Finding:
    """`tgt`: the target, or why it could not be loaded."""
    n_ok = sum(c.satisfies for c in checks)
    n_fast = sum(c.likely_faster for c in checks)
    text = (f"{n_ok} of {len(checks)} layers satisfy 2:4, {n_fast} of them wide (>= {MIN_WIDTH}) and aligned "
            f"enough for sparse kernels to win")
    if isinstance(tgt, str):
        return Finding("2:4", text, f"{tgt}: cannot say whether it has sparse tensor cores")
    cores = tgt.hardware.get("sparse_tensor_cores")
    if not cores:
        setting = "false" if cores is False else "unset"
        reason = f"{tgt.name} has no sparse tensor cores (hardware.sparse_tensor_cores {setting}): a 2:4 pattern is " \
                 "stored, not exploited"
    elif tgt.build.sparsity != "2:4":
        reason = f"{tgt.name} has sparse tensor cores, but build.sparsity is '{tgt.build.sparsity}': the engine " \
                 "will not try sparse kernels"
    elif n_fast == 0:
        reason = f"{tgt.name} builds with 2:4 sparsity, but no layer is wide enough: TensorRT keeps dense kernels " \
                 f"below about {MIN_WIDTH} channels"
    else:
        reason = f"{tgt.name} builds with 2:4 sparsity: TensorRT may pick sparse kernels for those layers (its " \
                 "build log says which it picked)"
    return Finding("2:4", text, reason)


def _widths(layers: list[LayerChange], tgt: Target | str) -> tuple[Finding | None, list[str]]:
    """Widths pruning changed to something off the target's channel multiple (the dense model's own
    are not pruning's doing). Without a loadable target, 8 (FP16 tensor-core tiles, AVX2)."""
    multiple, wants = ALIGN, f"{ALIGN}, the common multiple of AVX2 and FP16 tensor-core tiles ({tgt})"
    if not isinstance(tgt, str):
        multiple, wants = tgt.build.round_to, f"{tgt.build.round_to}, the multiple {tgt.name} wants (build.round_to"
        if tgt.hardware.get("family") == "host":
            simd = host_simd()
            wants += f"; this CPU: {simd.isa}, {simd.lanes} fp32 lanes"
        wants += ")"
    off = []
    for L in layers:
        for axis, what in ((0, "out"), (1, "in")):
            w = L.pruned_shape[axis]
            if w != L.dense_shape[axis] and w % multiple:
                off.append(f"{L.name} {what} {w}")
    if off:
        return Finding("widths", f"pruned widths not multiples of {wants}: {', '.join(off)}",
                       "ONNX Runtime blocks CPU channels by the SIMD width (x86 NCHWc: 8 with AVX2, 16 with "
                       "AVX-512) and TensorRT's tensor-core tiles want 8 (FP16) or 16 (INT8); such layers can run "
                       f"slower than their MACs predict (compress --target or --round-to {multiple} avoids them)"), off
    if any(L.compacted for L in layers):
        return Finding("widths", f"all compacted widths are multiples of {wants}",
                       "they stay on the target's full SIMD blocks and tensor-core tiles"), off
    return None, off


def _engines(report: Report) -> Finding | None:
    """What TensorRT built (a run whose report records its engines): layers after fusion, their
    precisions and the engines' device memory."""
    f = report.engine_facts or {}
    d, p = f.get("dense") or {}, f.get("pruned") or {}
    if not d or not p:
        return None

    def side(e: dict) -> str:
        prec = ", ".join(f"{n} {k}" for k, n in sorted((e.get("precisions") or {}).items())) or "precisions unknown"
        mem = e.get("device_memory_bytes")
        layers = "? layers" if e.get("layers") is None else f"{e['layers']} layers"
        return f"{layers} ({prec})" + ("" if mem is None else f", {mem / 2**20:.2f} MiB device memory")

    return Finding("engine", f"TensorRT engines: dense {side(d)}; pruned {side(p)}",
                   "layers are counted after TensorRT's fusion; a pruned network keeps its layer count unless "
                   "whole layers were removed, so its gain is in each layer's width")


def _speed(report: Report, widths: list[str], int8: bool, zeros: bool) -> list[Finding]:
    """Per batch size: the measured ratio against the A/A band and the MAC ratio, and why."""
    m = report.ratios.macs
    findings = []
    for bs in sorted(report.latency):
        bl = report.latency[bs]
        r, aa = bl.ratio_p50, bl.aa_ratio_p50
        if r is None or aa is None:
            continue
        band = noise_band(aa)
        head = (f"batch {bs}: p50 {bl.dense.p50:.3g} -> {bl.pruned.p50:.3g} ms, ratio {r:.2f} (A/A {aa:.2f}, "
                f"band ±{band:.0%}), MAC ratio {'unknown' if m is None else f'{m:.2f}'}")
        if m is None:
            findings.append(Finding("speed-up", f"{head}: {verdict(r, aa)}", "the MACs of a model could not be counted "
                                    "(see the report's notes), so the ratio cannot be set against the work removed"))
            continue
        text = f"{head}: {verdict(r, aa)}"
        if within_noise(r, aa):
            if m >= 0.99:
                reason = "the pruned model executes as many MACs as the dense one" + (
                    ", and its zeros are densified" if zeros else "")
            elif widths:
                reason = "fewer MACs, but the widths pruning left are off the target's channel multiple and fall off fast kernels"
            elif bl.dense.p50 < TINY_MS:
                reason = f"fewer MACs, but at {bl.dense.p50:.3g} ms a call the fixed per-run overhead dominates"
            else:
                reason = "fewer MACs, but the removed work is not where the time goes (memory or overhead bound)"
        elif r < 1.0:
            per_mac = r / m
            if int8 and m >= 0.99:
                reason = "the MACs are unchanged: INT8 kernels make each one cheaper"
            elif m >= 0.99:
                reason = "outside the noise band, yet nothing in the model is smaller: repeat the run"
            elif abs(per_mac - 1.0) <= MAC_TRACKING:
                reason = f"it tracks the MAC ratio (latency/MAC {per_mac:.2f}): the removed channels were compute"
            elif per_mac > 1.0:
                reason = f"less than the MAC ratio promises (latency/MAC {per_mac:.2f}): " + (
                    "widths off the target's channel multiple fall off fast kernels" if widths
                    else "per-call overhead and non-MAC work (activations, memory traffic) did not shrink")
            else:
                reason = (f"more than the MAC ratio predicts (latency/MAC {per_mac:.2f}): smaller tensors fit "
                          "caches better")
        else:
            reason = ("widths off the target's channel multiple fall off fast kernels" if widths
                      else "nothing pruning did explains a slow-down: check the A/A control and repeat the run")
        if noisy_machine(aa):
            reason += f" (the A/A control is off by {abs(aa - 1.0):.0%}: the machine was noisy)"
        findings.append(Finding("speed-up", text, reason))
    return findings


def _shape(dims: list[int]) -> str:
    return "x".join(map(str, dims))
