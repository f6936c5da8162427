"""The results schema, `edgeprune.report/1`: one dense-vs-pruned measurement on one target.

`Report.to_dict()` is a contract other tools read (history, bench, CI); add keys freely, never
rename or remove one without bumping `SCHEMA`. Ratios and the accuracy drop are derived from the
two sides, so they cannot disagree with them; `from_dict` recomputes rather than trusts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import InputError

SCHEMA = "edgeprune.report/1"


@dataclass
class LatencyStats:
    """Wall-clock time of one `run` call, in milliseconds, over `n` timed runs."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float = 0.0
    max: float = 0.0
    std: float = 0.0
    n: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # other percentiles, keyed "p99.9"

    @classmethod
    def from_ns(cls, samples_ns: list[int] | np.ndarray, percentiles: tuple[float, ...] = ()) -> LatencyStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        q = sorted({50.0, 90.0, 99.0, *map(float, percentiles)})
        values = dict(zip(q, np.percentile(ms, q)))
        extra = {_pkey(p): float(v) for p, v in values.items() if p not in (50.0, 90.0, 99.0)}
        return cls(
            p50=float(values[50.0]),
            p90=float(values[90.0]),
            p99=float(values[99.0]),
            mean=float(ms.mean()),
            min=float(ms.min()),
            max=float(ms.max()),
            std=float(ms.std()),
            n=int(ms.size),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}
        d.update(self.extra)
        d.update({"min": self.min, "max": self.max, "std": self.std, "n": self.n})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        known = {"p50", "p90", "p99", "mean", "min", "max", "std", "n"}
        extra = {k: float(v) for k, v in d.items() if k not in known and k.startswith("p")}
        return cls(
            p50=float(d["p50"]),
            p90=float(d["p90"]),
            p99=float(d["p99"]),
            mean=float(d["mean"]),
            min=float(d.get("min", 0.0)),
            max=float(d.get("max", 0.0)),
            std=float(d.get("std", 0.0)),
            n=int(d.get("n", 0)),
            extra=extra,
        )


@dataclass
class BatchLatency:
    """Latency at one batch size: dense (A), dense again as an A/A control (A'), pruned (B),
    measured interleaved in one loop. `aa_ratio_p50` far from 1 means the machine was noisy.
    For an INT8 build, `pruned` is the INT8 engine and `pruned_fp32` the same pruned model in fp32
    (C), timed in the same loop."""

    batch: int
    dense: LatencyStats
    control: LatencyStats
    pruned: LatencyStats
    pruned_fp32: LatencyStats | None = None
    # Per-round medians (ms) of each timed series ("dense", "pruned"): the samples a rank test
    # between two runs compares (`measure.timing.round_medians`); None in reports written before.
    rounds_ms: dict[str, list[float]] | None = None

    @property
    def ratio_p50(self) -> float | None:
        return ratio(self.pruned.p50, self.dense.p50)

    @property
    def aa_ratio_p50(self) -> float | None:
        return ratio(self.control.p50, self.dense.p50)

    @property
    def int8_ratio_p50(self) -> float | None:
        """INT8 / fp32 p50 of the pruned model (None without an INT8 build)."""
        return None if self.pruned_fp32 is None else ratio(self.pruned.p50, self.pruned_fp32.p50)

    def to_dict(self) -> dict[str, Any]:
        d = self._base_dict()
        if self.pruned_fp32 is not None:
            d["pruned_fp32"] = self.pruned_fp32.to_dict()
            d["int8_ratio_p50"] = self.int8_ratio_p50
            d["int8_ratio_p90"] = ratio(self.pruned.p90, self.pruned_fp32.p90)
            d["pruned_fp32_samples_per_s"] = _per_s(self.batch, self.pruned_fp32.p50)
        if self.rounds_ms is not None:
            d["rounds_ms"] = {k: list(v) for k, v in self.rounds_ms.items()}
        return d

    def _base_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "dense": self.dense.to_dict(),
            "control": self.control.to_dict(),
            "pruned": self.pruned.to_dict(),
            "ratio_p50": self.ratio_p50,
            "ratio_p90": ratio(self.pruned.p90, self.dense.p90),
            "ratio_p99": ratio(self.pruned.p99, self.dense.p99),
            "aa_ratio_p50": self.aa_ratio_p50,
            "dense_samples_per_s": _per_s(self.batch, self.dense.p50),
            "pruned_samples_per_s": _per_s(self.batch, self.pruned.p50),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchLatency:
        return cls(
            batch=int(d["batch"]),
            dense=LatencyStats.from_dict(d["dense"]),
            control=LatencyStats.from_dict(d["control"]),
            pruned=LatencyStats.from_dict(d["pruned"]),
            pruned_fp32=LatencyStats.from_dict(d["pruned_fp32"]) if d.get("pruned_fp32") else None,
            rounds_ms={str(k): [float(x) for x in v] for k, v in d["rounds_ms"].items()} if d.get("rounds_ms") else None,
        )


@dataclass
class ModelSide:
    """One model's figures.

    `params` is the number of **nonzero** parameters (what a sparse format would store);
    `total_params` counts zeros too. `macs` are the **executed** multiply-accumulates at batch 1:
    a dense backend multiplies by zeros, so zeroed weights do not lower them; removed neurons and
    channels do; None when they could not be counted (shape inference did not reach every
    compute node), so that no ratio is taken with a partial count. `latency_ms` is at the report's `latency_batch` (batch 1 unless the target does
    not measure it). `accuracy` is top-1 in percent through the built engine; None where it was not
    measured (a run collected from trtexec's files). `peak_rss_mb`/`model_rss_mb` are None where host
    memory is not the engine's memory (TensorRT: see `Report.engine_facts`).
    """

    path: str
    sha256: str
    latency_ms: LatencyStats
    peak_rss_mb: float | None
    model_rss_mb: float | None
    accuracy: float | None
    size_bytes: int
    size_xz_bytes: int
    engine_bytes: int
    params: int
    total_params: int
    macs: int | None
    opset: int

    @property
    def zero_fraction(self) -> float:
        return 1.0 - self.params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "latency_ms": self.latency_ms.to_dict(),
            "peak_rss_mb": self.peak_rss_mb,
            "model_rss_mb": self.model_rss_mb,
            "accuracy": self.accuracy,
            "size_bytes": self.size_bytes,
            "size_xz_bytes": self.size_xz_bytes,
            "engine_bytes": self.engine_bytes,
            "params": self.params,
            "nonzero_params": self.params,  # same number; the explicit name for readers of the JSON
            "total_params": self.total_params,
            "zero_fraction": self.zero_fraction,
            "macs": self.macs,
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSide:
        return cls(
            path=str(d.get("path", "")),
            sha256=str(d.get("sha256", "")),
            latency_ms=LatencyStats.from_dict(d["latency_ms"]),
            peak_rss_mb=_float_or_none(d["peak_rss_mb"]),
            model_rss_mb=_float_or_none(d.get("model_rss_mb", 0.0)),
            accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
            size_bytes=int(d["size_bytes"]),
            size_xz_bytes=int(d.get("size_xz_bytes", 0)),
            engine_bytes=int(d.get("engine_bytes", 0)),
            params=int(d["params"]),
            total_params=int(d.get("total_params", d["params"])),
            macs=None if d["macs"] is None else int(d["macs"]),
            opset=int(d.get("opset", 0)),
        )


@dataclass
class Ratios:
    """pruned / dense. Below 1 is better for all of them."""

    latency_p50: float | None
    macs: float | None
    params: float | None
    size: float | None
    size_xz: float | None
    peak_rss: float | None
    model_rss: float | None

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class Agreement:
    """How often dense and pruned engines pick the same class, the largest output difference, and the
    mean cosine similarity of their output vectors: label-free, so a model without labels is judged too."""

    top1: float  # fraction in [0, 1]
    max_abs_logit_diff: float
    samples: int
    cosine: float | None = None   # mean over samples; None in reports written before it was measured

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Agreement:
        return cls(top1=float(d["top1"]), max_abs_logit_diff=float(d["max_abs_logit_diff"]), samples=int(d["samples"]),
                   cosine=None if d.get("cosine") is None else float(d["cosine"]))


@dataclass
class Report:
    target: str
    backend: str
    method: str | None
    sparsity: float | None  # asked-for sparsity (args or ONNX metadata); else the measured one
    dense: ModelSide
    pruned: ModelSide
    latency: dict[int, BatchLatency]
    agreement: Agreement | None = None
    latency_batch: int = 1
    granularity: str | None = None
    target_description: str = ""
    stack: dict[str, str] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    accuracy_metric: str = "top-1"   # what `accuracy` is: top-1 in percent, or the task's --metric pkg.mod:fn
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA
    # INT8 builds: `pruned` is the INT8 engine; `pruned_fp32` the same pruned model in fp32, measured
    # in the same run; `int8` how it was quantised (calibration, nodes) and its agreement with fp32.
    precision: str = "fp32"
    pruned_fp32: ModelSide | None = None
    int8: dict[str, Any] | None = None
    # Where it ran: {host (as the user gave it, None = this machine), hostname (the machine's own),
    # stack (fingerprint of `stack`), power_mode}; and whether each engine came from the cache.
    device: dict[str, Any] | None = None
    engine_cache: dict[str, str] | None = None
    # TensorRT: per engine ("dense", "pruned") {device_memory_bytes, layers, precisions, layer_types}:
    # the engine's own memory and what the builder made of the network.
    engine_facts: dict[str, dict[str, Any]] | None = None
    # Jetson: {mean_w, energy_mj_per_inference, idle_w, rails, power_mode, models: {dense, pruned}};
    # the top-level figures are the pruned model's, each model measured in a window of its own.
    power: dict[str, Any] | None = None
    # The pruned engine's per-sample correctness on the evaluation set: {"samples", "digest" (of the
    # set), "pruned_correct" (base64 of np.packbits, sample order)}; what a McNemar test pairs.
    evaluation: dict[str, Any] | None = None

    @property
    def ratios(self) -> Ratios:
        d, p = self.dense, self.pruned
        return Ratios(
            latency_p50=ratio(p.latency_ms.p50, d.latency_ms.p50),
            macs=ratio(p.macs, d.macs),
            params=ratio(p.params, d.params),
            size=ratio(p.size_bytes, d.size_bytes),
            size_xz=ratio(p.size_xz_bytes, d.size_xz_bytes),
            peak_rss=ratio(p.peak_rss_mb, d.peak_rss_mb),
            model_rss=ratio(p.model_rss_mb, d.model_rss_mb),
        )

    @property
    def accuracy_drop_pt(self) -> float | None:
        """Dense minus pruned top-1, in percentage points (positive = pruned is worse)."""
        if self.dense.accuracy is None or self.pruned.accuracy is None:
            return None
        return self.dense.accuracy - self.pruned.accuracy

    @property
    def measured_sparsity(self) -> float:
        return self.pruned.zero_fraction

    @property
    def int8_accuracy_drop_pt(self) -> float | None:
        """Pruned fp32 minus pruned INT8 top-1, in points (None without an INT8 build)."""
        f = self.pruned_fp32
        if f is None or f.accuracy is None or self.pruned.accuracy is None:
            return None
        return f.accuracy - self.pruned.accuracy

    def _int8_dict(self) -> dict[str, Any] | None:
        if self.pruned_fp32 is None:
            return None
        return {
            **(self.int8 or {}),
            "accuracy_drop_pt": self.int8_accuracy_drop_pt,
            "latency_ratio_p50": {str(b): bl.int8_ratio_p50 for b, bl in sorted(self.latency.items())},
            "size_ratio": ratio(self.pruned.size_bytes, self.pruned_fp32.size_bytes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "created": self.created,
            "target": self.target,
            "target_description": self.target_description,
            "backend": self.backend,
            "method": self.method,
            "sparsity": self.sparsity,
            "measured_sparsity": self.measured_sparsity,
            "granularity": self.granularity,
            "latency_batch": self.latency_batch,
            "dense": self.dense.to_dict(),
            "pruned": self.pruned.to_dict(),
            "ratios": self.ratios.to_dict(),
            "accuracy_drop_pt": self.accuracy_drop_pt,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "latency": {str(b): bl.to_dict() for b, bl in sorted(self.latency.items())},
            "stack": dict(self.stack),
            "run": dict(self.run),
            "notes": list(self.notes),
            "accuracy_metric": self.accuracy_metric,
            "precision": self.precision,
            "pruned_fp32": self.pruned_fp32.to_dict() if self.pruned_fp32 else None,
            "int8": self._int8_dict(),
            "device": dict(self.device) if self.device else None,
            "engine_cache": dict(self.engine_cache) if self.engine_cache else None,
            "engine_facts": self.engine_facts,
            "power": self.power,
            "evaluation": dict(self.evaluation) if self.evaluation else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        schema = d.get("schema")
        if schema != SCHEMA:
            raise InputError(f"report schema is {schema!r}, this edgeprune reads {SCHEMA!r}")
        try:
            return cls(
                target=str(d["target"]),
                backend=str(d.get("backend", "")),
                method=d.get("method"),
                sparsity=None if d.get("sparsity") is None else float(d["sparsity"]),
                dense=ModelSide.from_dict(d["dense"]),
                pruned=ModelSide.from_dict(d["pruned"]),
                latency={int(b): BatchLatency.from_dict(v) for b, v in d.get("latency", {}).items()},
                agreement=Agreement.from_dict(d["agreement"]) if d.get("agreement") else None,
                latency_batch=int(d.get("latency_batch", 1)),
                granularity=d.get("granularity"),
                target_description=str(d.get("target_description", "")),
                stack={str(k): str(v) for k, v in d.get("stack", {}).items()},
                run=dict(d.get("run", {})),
                notes=[str(n) for n in d.get("notes", [])],
                accuracy_metric=str(d.get("accuracy_metric", "top-1")),
                created=str(d.get("created", "")),
                schema=schema,
                precision=str(d.get("precision", "fp32")),
                pruned_fp32=ModelSide.from_dict(d["pruned_fp32"]) if d.get("pruned_fp32") else None,
                int8={k: v for k, v in d["int8"].items() if k not in _DERIVED_INT8} if d.get("int8") else None,
                device=dict(d["device"]) if d.get("device") else None,
                engine_cache=dict(d["engine_cache"]) if d.get("engine_cache") else None,
                engine_facts=dict(d["engine_facts"]) if d.get("engine_facts") else None,
                power=dict(d["power"]) if d.get("power") else None,
                evaluation=dict(d["evaluation"]) if d.get("evaluation") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"report is missing or has a malformed field: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))


# Recomputed from the two sides on load, like `ratios`.
_DERIVED_INT8 = ("accuracy_drop_pt", "latency_ratio_p50", "size_ratio")


def read_report(path: str | Path) -> Report:
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        return Report.from_json(p.read_text())
    except FileNotFoundError:
        raise InputError(f"report not found: {p}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON: {e}") from None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is unknown (None) or b is zero."""
    # An unknown side (MACs that could not be counted) or a zero denominator has no ratio, and
    # NaN/inf are not JSON: None ("n/a") it is.
    if a is None or not b:
        return None
    return float(a) / float(b)


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def _per_s(batch: int, p50_ms: float) -> float:
    return batch / (p50_ms / 1000.0) if p50_ms > 0 else 0.0


def _pkey(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"
