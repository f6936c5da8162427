#!/usr/bin/env python
"""INT8 benchmark: static Q/DQ INT8 against fp32 on the CNN of bench_e2e, side by side in one run.

The model is bench_e2e's resnet8 (32/64/128) on Fashion-MNIST (same training, same cache), and its
channel-pruned version (~50 % of MACs removed: magnitude, channel granularity, MAC budget, global
scope, round_to 8, 2 fine-tune epochs, as `compress --granularity channel --budget macs
--sparsity 0.5`). Variants, all quantised by `edgeprune.quantize.quantize_qdq` on
calibration/fmnist.npz (512 training images) with MinMax calibration:

* the plain per-channel QDQ quantisation (onnxruntime.quantization's defaults: int8 activations,
  no pre-processing) and the steps of the tuned setting, one change at a time;
* the compacted model in fp32 and in the tuned INT8.

Every timed variant runs in one interleaved loop per batch size with the dense fp32 engine twice
(A/A control), on target host-cpu (ONNX Runtime, 1 thread). Accuracy: top-1 on the 10k test
images through the same engines; the calibration methods other than MinMax are accuracy-only rows
(their graphs are the tuned one, so their latency is the tuned one's).

    .venv/bin/python benchmarks/bench_int8.py --out benchmarks/results     # make bench-int8
    .venv/bin/python benchmarks/bench_int8.py --quick --out runs/bench-int8-quick

Writes OUT/int8.json and OUT/int8.md (int8-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import bench_e2e as e2e  # noqa: E402
from provenance import write_results  # noqa: E402
from edgeprune import api  # noqa: E402
from edgeprune.backends import get_backend  # noqa: E402
from edgeprune.measure.timing import tile_rows  # noqa: E402
from edgeprune.fileio import file_digest  # noqa: E402
from edgeprune.model_io import load_model  # noqa: E402
from edgeprune.onnx_stats import model_stats  # noqa: E402
from edgeprune.measure.accuracy import predict  # noqa: E402
from edgeprune.measure.timing import time_interleaved  # noqa: E402
from edgeprune.pruning import PruneSpec  # noqa: E402
from edgeprune.quantize import PLAIN, TUNED, load_calibration, quantize_qdq  # noqa: E402
from edgeprune.report.schema import LatencyStats  # noqa: E402
from edgeprune.shipped import shipped_path  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402

WORK = ROOT / "runs" / "bench-int8"
CALIBRATION = shipped_path("calibration", "fmnist.npz")
BATCHES = (1, 64)
# The figures (never tuned to make a run pass)
INT8_RATIO_MAX = {64: 0.55, 1: 0.70}
INT8_MAX_DROP_PT = 0.5
COMPACT_SPEEDUP_MIN = {64: 3.0, 1: 2.0}
COMPACT_MAX_DROP_PT = 1.5
DISTURBED_AA = 0.05      # an A/A p50 ratio further than this from 1: the run was disturbed, re-run it

log = e2e.log


@dataclass
class Row:
    name: str
    label: str
    model: str                      # dense | compacted
    precision: str                  # fp32 | int8
    onnx: Path | None
    settings: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    timed: bool = True
    quantized: int | None = None
    fp32_compute: list[str] = field(default_factory=list)
    quantize_seconds: float | None = None
    macs: int | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    agreement_with_fp32: float | None = None
    latency: dict[int, dict[str, float]] = field(default_factory=dict)


def ablation() -> list[tuple[str, str, dict[str, Any]]]:
    """The plain setting, then the tuned one reached one change at a time."""
    steps = [("plain", "plain per-channel QDQ (library defaults: s8 activations, no pre-processing)", dict(PLAIN))]
    current = dict(PLAIN)
    for key, label in (("activation_type", "+ uint8 activations"), ("preprocess", "+ quant_pre_process")):
        current = {**current, key: TUNED[key]}
        if current != steps[-1][2]:
            steps.append((f"step-{key}", label, dict(current)))
    assert current == TUNED, "the ablation must end at the tuned setting"
    steps[-1] = ("tuned", f"tuned = {steps[-1][1]} (edgeprune's default)", current)
    return steps


def compacted_checkpoint(dense: Path, s: e2e.Settings, data: e2e.Data, round_to: int) -> tuple[Path, dict]:
    """`compress --granularity channel --budget macs --sparsity 0.5 --round-to N` on the dense model, cached."""
    spec = PruneSpec(method="magnitude", granularity="channel", budget="macs", sparsity=s.resnet_mac_sparsity,
                     round_to=round_to, scope="global", seed=s.seed)
    key = e2e.cache_key({"dense": file_digest(dense), "spec": asdict(spec), "epochs": s.finetune_epochs,
                         "train_limit": s.train_limit})
    out = WORK / f"compacted-{key}.pt"
    info_path = out.with_suffix(".json")
    if out.exists() and info_path.exists():
        log(f"compacted model from cache {out.relative_to(ROOT)}")
        return out, json.loads(info_path.read_text())   # holds the widths too
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"compress: channel, MAC budget {s.resnet_mac_sparsity:.0%}, round_to {round_to}, fine-tune "
        f"{s.finetune_epochs:g} epochs ...")
    res = api.compress(dense, spec, out, data=data.options, finetune_epochs=s.finetune_epochs,
                       batch_size=s.batch_size, force=True, progress=e2e._progress())
    widths = e2e.conv_widths(load_model(out).model)
    info = {"spec": asdict(spec), "mac_ratio": res.macs_after / res.macs_before, "widths": widths,
            "val_accuracy": res.finetuned_val_accuracy,
            "dense_val_accuracy": res.dense_val_accuracy, "seconds": res.total_seconds}
    info_path.write_text(json.dumps(info, indent=2))
    return out, info


def build_rows(s: e2e.Settings, data: e2e.Data, record: dict, round_tos: list[int]) -> list[Row]:
    dense_pt, dense_info = e2e.dense_checkpoint("resnet8", {"widths": list(s.resnet_widths)}, s.resnet_epochs, s, data)
    record["dense_training"] = dense_info
    dense_onnx = e2e.export_variant(load_model(dense_pt), WORK / "dense.onnx", data)
    record["compacted"] = {}
    compacted = []
    for n in round_tos:
        pt, info = compacted_checkpoint(dense_pt, s, data, n)
        record["compacted"][str(n)] = info
        compacted.append((n, info, e2e.export_variant(load_model(pt), WORK / f"compacted-r{n}.onnx", data)))
    calib = load_calibration(CALIBRATION)
    record["calibration_samples"] = len(calib)

    rows = [Row("dense-fp32", "dense fp32", "dense", "fp32", dense_onnx),
            Row("dense-fp32-aa", "dense fp32 (A/A control)", "dense", "fp32", dense_onnx)]

    def quantized(name: str, label: str, model: str, src: Path, settings: dict, method: str, timed: bool) -> Row:
        res = quantize_qdq(src, WORK / f"{name}.onnx", calib, method=method, **settings)
        log(f"{name}: {len(res.quantized)} nodes quantised, fp32 compute {res.excluded or 'none'}, {res.seconds:.1f} s")
        return Row(name, label, model, "int8", res.path, settings=settings, method=method, timed=timed,
                   quantized=len(res.quantized), fp32_compute=res.excluded, quantize_seconds=res.seconds)

    for name, label, settings in ablation():
        rows.append(quantized(f"dense-int8-{name}", f"dense INT8, {label}", "dense", dense_onnx, settings, "minmax", True))
    for n, info, onnx_path in compacted:
        what = f"compacted, round_to {n} (MACs {info['mac_ratio']:.3f}, widths {'/'.join(map(str, info['widths']))})"
        rows.append(Row(f"compacted-r{n}-fp32", f"{what} fp32", f"compacted-r{n}", "fp32", onnx_path))
        rows.append(quantized(f"compacted-r{n}-int8", f"{what} INT8, tuned", f"compacted-r{n}", onnx_path, dict(TUNED),
                              "minmax", True))
    for method in ("entropy", "percentile"):
        rows.append(quantized(f"dense-int8-{method}", f"dense INT8, tuned, {method} calibration (accuracy only)",
                              "dense", dense_onnx, dict(TUNED), method, False))
    return rows


def measure(rows: list[Row], data: e2e.Data, s: e2e.Settings) -> dict[str, Any]:
    target = load_target(e2e.TARGET)
    backend = get_backend(target.backend)
    sessions = {}
    for r in rows:
        engine = backend.build(r.onnx, target, WORK / "engines" / r.name)
        sessions[r.name] = backend.open(engine, target)
    stats = {path: model_stats(path) for path in {r.onnx for r in rows}}   # the A/A row shares dense's file
    for r in rows:
        r.size_bytes = stats[r.onnx].size_bytes
    fp32_macs = {r.model: stats[r.onnx].macs for r in rows if r.precision == "fp32"}
    for r in rows:
        r.macs = fp32_macs[r.model]
    timed = [r for r in rows if r.timed]
    x = data.test.x
    info: dict[str, Any] = {"rounds": {}, "order": " ".join(r.name for r in timed) + ", rotated each round",
                            "warmup": s.warmup, "iterations": s.iterations, "min_seconds": s.min_seconds,
                            "threads": target.build.threads, "load_average_before": e2e.load_average()}
    for bs in BATCHES:
        log(f"latency at batch {bs}: {len(timed)} sessions interleaved ...")
        times = time_interleaved([sessions[r.name] for r in timed], tile_rows(x, bs), s.warmup, s.iterations,
                                 s.min_seconds)
        info["rounds"][str(bs)] = int(len(times[0]))
        for r, t in zip(timed, times):
            st = LatencyStats.from_ns(t, target.run.percentiles)
            r.latency[bs] = {"p50_ms": st.p50, "p90_ms": st.p90, "p99_ms": st.p99, "mean_ms": st.mean, "n": st.n}
    info["load_average_after"] = e2e.load_average()
    log(f"accuracy through ONNX Runtime on {len(x)} test images ...")
    preds = {}
    for r in rows:
        if r.name.endswith("-aa"):
            continue
        preds[r.name] = predict(sessions[r.name], x, min(e2e.EVAL_BATCH, len(x))).argmax(1)
        r.accuracy = float(100.0 * np.mean(preds[r.name] == data.test.y))
    for r in rows:
        if r.name.endswith("-aa"):
            r.accuracy = next(d.accuracy for d in rows if d.name == "dense-fp32")
        elif r.precision == "int8":
            r.agreement_with_fp32 = float(np.mean(preds[r.name] == preds[f"{r.model}-fp32"]))
    info["stack"] = backend.stack(target)
    return info


def checks(rows: list[Row]) -> list[e2e.Check]:
    by = {r.name: r for r in rows}
    dense, aa, plain, tuned = by["dense-fp32"], by["dense-fp32-aa"], by["dense-int8-plain"], by["dense-int8-tuned"]
    out: list[e2e.Check] = []
    for bs in BATCHES:
        r = aa.latency[bs]["p50_ms"] / dense.latency[bs]["p50_ms"]
        out.append(e2e.Check(f"A/A control b{bs} within ±{DISTURBED_AA:.0%} (run not disturbed)",
                             abs(r - 1) <= DISTURBED_AA, f"{r:.3f}", True))
    for bs in (64, 1):
        for v, info in ((tuned, False), (plain, True)):
            r = v.latency[bs]["p50_ms"] / dense.latency[bs]["p50_ms"]
            out.append(e2e.Check(f"{v.name}: latency int8/fp32 b{bs} <= {INT8_RATIO_MAX[bs]}", r <= INT8_RATIO_MAX[bs],
                                 f"{r:.3f} (p50 {v.latency[bs]['p50_ms']:.3f} vs {dense.latency[bs]['p50_ms']:.3f} ms)",
                                 info))
    for v, info in ((tuned, False), (plain, True)):
        drop = dense.accuracy - v.accuracy
        out.append(e2e.Check(f"{v.name}: accuracy drop <= {INT8_MAX_DROP_PT} pt", drop <= INT8_MAX_DROP_PT,
                             f"{dense.accuracy:.2f} % -> {v.accuracy:.2f} % ({drop:+.2f} pt)", info))
    for compact in (r for r in rows if r.model.startswith("compacted") and r.precision == "int8"):
        for bs in (64, 1):
            speedup = dense.latency[bs]["p50_ms"] / compact.latency[bs]["p50_ms"]
            out.append(e2e.Check(f"{compact.name} vs dense fp32: speed-up b{bs} >= {COMPACT_SPEEDUP_MIN[bs]:g}x",
                                 speedup >= COMPACT_SPEEDUP_MIN[bs],
                                 f"{speedup:.2f}x (p50 {compact.latency[bs]['p50_ms']:.3f} vs "
                                 f"{dense.latency[bs]['p50_ms']:.3f} ms)"))
        drop = dense.accuracy - compact.accuracy
        out.append(e2e.Check(f"{compact.name}: accuracy drop vs dense fp32 <= {COMPACT_MAX_DROP_PT} pt",
                             drop <= COMPACT_MAX_DROP_PT,
                             f"{dense.accuracy:.2f} % -> {compact.accuracy:.2f} % ({drop:+.2f} pt)"))
    return out


COLUMNS = ["variant", "precision", "MACs (M)", "test acc %", "drop pt", "agree fp32", "b1 p50 ms", "b1 / dense",
           "b64 p50 ms", "b64 / dense", "ONNX"]


def table_rows(rows: list[Row]) -> list[list[str]]:
    dense = next(r for r in rows if r.name == "dense-fp32")
    out = []
    for r in rows:
        cells = [r.label, r.precision, f"{r.macs / 1e6:.2f}", f"{r.accuracy:.2f}",
                 "" if r is dense or r.name.endswith("-aa") else f"{dense.accuracy - r.accuracy:+.2f}",
                 "" if r.agreement_with_fp32 is None else f"{r.agreement_with_fp32:.2%}"]
        for bs in BATCHES:
            if r.timed:
                p = r.latency[bs]["p50_ms"]
                cells += [f"{p:.3f}", f"{p / dense.latency[bs]['p50_ms']:.3f}"]
            else:
                cells += ["—", "—"]
        cells.append(f"{r.size_bytes / 1024:.0f} KiB")
        out.append(cells)
    return out


def markdown(rows: list[Row], results: list[e2e.Check], summary: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "|".join(["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in table_rows(rows)]
    lines += ["", f"resnet8 (32/64/128) on Fashion-MNIST; accuracy on {summary['test_images']} test images through "
                  f"ONNX Runtime {ort.__version__}; latency p50 on target `host-cpu` (1 thread), every timed variant in "
                  f"one interleaved loop ({summary['rounds']}); ratios are to dense fp32; INT8 = "
                  f"`edgeprune.quantize.quantize_qdq`, static QDQ, per-channel weights, calibrated on "
                  f"{summary['calibration_samples']} images of calibration/fmnist.npz.",
              *e2e.checks_table(results), "", e2e.wall_line(summary, load_average=True)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="tiny subsets: a smoke run")
    p.add_argument("--iterations", type=int)
    p.add_argument("--min-seconds", type=float)
    p.add_argument("--finetune-epochs", type=float, help="fine-tune epochs of the compacted model (default 2, as bench)")
    p.add_argument("--resnet-epochs", type=float, help="dense training epochs (default 3, as bench)")
    p.add_argument("--train-limit", type=int, help="train on a seeded subset of this many images (default: all)")
    p.add_argument("--round-to", default="8,16", help="compacted variants: channel multiples, comma-separated (8: "
                                                      "AVX2's NCHWc block, 16: AVX-512's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    s = e2e.Settings.for_args(argparse.Namespace(quick=args.quick, scopes=None, resnet_epochs=args.resnet_epochs,
                                                 lenet_epochs=None,
                                                 finetune_epochs=args.finetune_epochs, iterations=args.iterations,
                                                 min_seconds=args.min_seconds))
    if not args.quick and args.min_seconds is None:
        s.min_seconds = 10.0
    if args.train_limit is not None:
        s.train_limit = args.train_limit
    data = e2e.Data(s)
    record: dict[str, Any] = {"settings": asdict(s)}
    rows = build_rows(s, data, record, [int(n) for n in args.round_to.split(",")])
    run = measure(rows, data, s)
    results = checks(rows)
    import os

    from edgeprune.backends.onnxruntime import cpu_name

    summary = {"quick": s.quick, "test_images": len(data.test), "wall_seconds": time.perf_counter() - e2e.T0,
               "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_average": run["load_average_after"],
               "rounds": ", ".join(f"{n} rounds at batch {b}" for b, n in run["rounds"].items()),
               "calibration_samples": record["calibration_samples"]}
    doc = {"benchmark": "int8", "summary": summary, "run": run, "record": record, "tuned": TUNED, "plain": PLAIN,
           "rows": [{**asdict(r), "onnx": str(r.onnx.relative_to(ROOT)) if r.onnx else None,
                     "latency": {str(k): v for k, v in r.latency.items()}} for r in rows],
           "checks": [asdict(c) | {"verdict": c.verdict} for c in results]}
    md = markdown(rows, results, summary)
    write_results(args.out, "int8-quick" if s.quick else "int8", doc, md)
    e2e.console.print(md, highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
