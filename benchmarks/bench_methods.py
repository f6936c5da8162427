#!/usr/bin/env python
"""Methods benchmark: every registered pruning method against magnitude and random, at equal
sparsity with the same fine-tune budget, over several seeds.

For each model (fc5 and lenet300 at 50/75/90/95/98 %, lenet5 at 50/75/90 %) a dense model is
trained once and cached; every method in METHODS then prunes it with `api.compress` at each
sparsity and seed, fine-tuning for the same number of epochs, and the pruned checkpoint's top-1
accuracy is measured on the Fashion-MNIST test split. A method that is not registered in this
checkout is skipped (and says so), so the same script runs before and after new methods land.
Models a method physically compacts (a layer lost rows) are exported through `api.export` and
measured against the dense model with `api.profile` (ONNX Runtime, host-cpu: dense, dense again
as the A/A control, pruned, interleaved in one loop).

    .venv/bin/python benchmarks/bench_methods.py                      # full run (make bench-methods)
    .venv/bin/python benchmarks/bench_methods.py --quick --out runs/bench-methods-quick
    .venv/bin/python benchmarks/bench_methods.py --models lenet5 --methods spectral,magnitude-layer --merge

Writes OUT/methods.json (every run), OUT/methods.md (the README table) and OUT/methods.png
(accuracy against sparsity, one panel per model, error bars = std over seeds).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_e2e as E2E  # noqa: E402  (cache keys, logging)
from provenance import provenance, write_results  # noqa: E402

from edgeprune import api  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.fileio import atomic_write  # noqa: E402
from edgeprune.model_io import load_model  # noqa: E402
from edgeprune.pruning import PruneSpec, available_methods  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from edgeprune.training import evaluate  # noqa: E402

log = E2E.log
DATA = "fashion-mnist"
TARGET = "host-cpu"
SCHEMA = "edgeprune.bench-methods/1"
NOT_RUN = "not run: the run was cut short (results rendered with --saved-only)"
L1 = 5e-5   # LOMP's dense model: api.train(..., l1=5e-5), the λ of Zhang et al.'s FC configs (METHODS.md §1.4)


# ------------------------------------------------------------------------------ what is compared
@dataclass(frozen=True)
class MethodRun:
    """One row of the comparison: a registered method with its settings."""

    label: str                      # the row's name (--methods takes these)
    method: str                     # registry name (edgeprune.pruning.get_method)
    scope: str = "global"
    granularity: str = "weight"
    schedule: str = "oneshot"
    options: tuple[tuple[str, Any], ...] = ()   # PruneSpec.options, as pairs so the table stays immutable
    dense: str = "plain"            # which dense model it starts from: "plain", or "l1" (trained with L1 = 5e-5)
    models: tuple[str, ...] = ()    # only these models (empty: all)
    note: str = ""

    def spec(self, sparsity: float, seed: int) -> PruneSpec:
        return PruneSpec(method=self.method, sparsity=sparsity, granularity=self.granularity, scope=self.scope,
                         schedule=self.schedule, seed=seed, options=dict(self.options))

    def runs_on(self, model: str) -> bool:
        return not self.models or model in self.models


# Every method with its settings, in one place. All but activation run one-shot, and every one gets
# the same fine-tune budget (activation's gated schedule spends it on its pruning events and the
# retraining after them), so the rows differ in what they score, LOMP in its L1-trained start.
METHODS: list[MethodRun] = [
    MethodRun("magnitude-global", "magnitude", note="|w|, one threshold over all layers (Han et al. 2015)"),
    MethodRun("magnitude-layer", "magnitude", scope="layer",
              note="|w|, the same fraction in every layer (TF-MOT's per-layer magnitude, METHODS.md §2.6)"),
    MethodRun("random", "random", note="seeded random scores: the control every method must beat"),
    MethodRun("magnitude-channel", "magnitude", granularity="channel",
              note="whole neurons/channels by |w| norm, removed physically (the structured reference for "
                   "activation); reaches at most ~90 % of weights"),
    MethodRun("activation", "activation", schedule="gated", options=(("score", "neuron"), ("count", "active")),
              note="activation counts per neuron (Ganguli & Chong 2024), global ranking, its own accuracy-gated "
                   "schedule inside the same epoch budget; dead neurons are removed physically"),
    MethodRun("spectral", "spectral", scope="layer", models=("lenet5",),
              note="ASDS interpretation A (METHODS.md §3.3), per-layer thresholds; CNN only: MLPs have no "
                   "spatial maps to take a spectrum of"),
    MethodRun("lomp", "lomp", dense="l1", note="L1-regularised training (λ 5e-5) + one-shot global magnitude "
                                               "(Zhang et al. 2024)"),
]


@dataclass(frozen=True)
class ModelRun:
    name: str                       # zoo name
    sparsities: tuple[float, ...]
    dense_epochs: float
    finetune_epochs: float          # the fine-tune budget, the same for every method on this model
    epoch_cost: float               # relative CPU time of one epoch (~5 s for the MLPs, ~20 s for LeNet-5 on one
                                    # core) x budget: orders the worker tasks, most expensive first


MODELS: list[ModelRun] = [
    ModelRun("fc5", (0.5, 0.75, 0.9, 0.95, 0.98), 10.0, 1.0, 1.0),
    ModelRun("lenet300", (0.5, 0.75, 0.9, 0.95, 0.98), 10.0, 1.0, 1.0),
    # The CNN is LeNet-5, not resnet8: 0.7 M MACs per image against resnet8's 37 M, so ~20 s per
    # epoch on one core instead of ~290 s, which is what lets every method x sparsity x seed be
    # fine-tuned within the budget; and its 28x28 and 14x14 feature maps are what spectral needs.
    # Half an epoch (211 steps) of fine-tuning keeps its 63 runs near 15 min on one core.
    ModelRun("lenet5", (0.5, 0.75, 0.9), 5.0, 0.5, 4.0),
]


@dataclass
class Settings:
    quick: bool = False
    finetune_epochs: float | None = None   # None: each model's own budget (ModelRun), the same for every method
    seeds: tuple[int, ...] = (0, 1, 2)
    train_limit: int | None = None  # None: all 60k training images (54k train / 6k validation)
    test_limit: int | None = None   # None: the 10k test images
    dense_epochs_scale: float = 1.0
    quick_sparsities: tuple[float, ...] = (0.5, 0.9)
    quick_models: tuple[str, ...] = ("lenet300", "lenet5")   # one MLP and the CNN: fc5 adds nothing new to a smoke run
    batch_size: int = 128
    train_lr: float = 1e-3

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "Settings":
        s = cls(quick=args.quick)
        if args.quick:
            s.finetune_epochs, s.seeds, s.train_limit, s.test_limit, s.dense_epochs_scale = 0.2, (0,), 1200, 300, 0.05
        if args.seeds:
            s.seeds = tuple(int(x) for x in _list(args.seeds))
        if args.finetune_epochs is not None:
            s.finetune_epochs = args.finetune_epochs
        return s

    def sparsities(self, m: ModelRun) -> tuple[float, ...]:
        return self.quick_sparsities if self.quick else m.sparsities

    def finetune(self, m: ModelRun) -> float:
        return m.finetune_epochs if self.finetune_epochs is None else self.finetune_epochs

    def dense_epochs(self, m: ModelRun) -> float:
        return m.dense_epochs * self.dense_epochs_scale

    @property
    def data(self) -> api.DataOptions:
        return api.DataOptions(DATA, limit=self.train_limit, test_limit=self.test_limit)


# ------------------------------------------------------------------------------------ results
@dataclass
class Row:
    """One pruned model: method x sparsity x seed."""

    model: str
    label: str
    method: str
    seed: int
    target_sparsity: float
    sparsity: float | None = None            # achieved fraction of prunable weights removed
    test_accuracy: float | None = None       # PyTorch, test split
    dense_test_accuracy: float | None = None  # of the dense model it started from
    val_accuracy: float | None = None        # after fine-tuning
    val_accuracy_before_finetune: float | None = None
    prune_seconds: float | None = None       # CompressResult.prune_seconds: pruning alone
    total_seconds: float | None = None       # compress incl. data loading and fine-tuning
    params_nonzero: int | None = None
    mac_ratio: float | None = None           # executed MACs, pruned / dense (PyTorch count)
    compacted: bool = False                  # some layer lost rows: the model is physically smaller
    shapes: list[list[int]] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    checkpoint: str = ""
    error: str | None = None                 # the method refused this setting (e.g. sparsity out of reach)
    resumed: bool = False                    # reused from an earlier run's saved row (--resume)
    timed_in: str | None = None              # the run that timed prune_seconds: its start time and commit


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


_progress = E2E._progress


def dense_model(m: ModelRun, l1: float, s: Settings, work: Path) -> tuple[Path, dict]:
    """Train `m` once per settings (and L1 strength) with api.train; cached under WORK/dense/."""
    epochs = s.dense_epochs(m)
    key_settings = {"arch": f"zoo:{m.name}", "epochs": epochs, "lr": s.train_lr, "batch_size": s.batch_size,
                    "l1": l1, "seed": 0, "data": DATA, "train_limit": s.train_limit, "torch": torch.__version__}
    path = work / "dense" / f"{m.name}{'-l1' if l1 else ''}-{E2E.cache_key(key_settings)}.pt"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        log(f"{m.name}: dense{' (L1)' if l1 else ''} from cache {path.name}: test {info['test_accuracy']:.2f} %")
        return path, {**info, "cached": True}
    log(f"{m.name}: training dense{f' with L1 {l1:g}' if l1 else ''}, {epochs:g} epochs ...")
    r = api.train(f"zoo:{m.name}", path, data=s.data, epochs=epochs, lr=s.train_lr, batch_size=s.batch_size,
                  l1=l1, seed=0, force=True, progress=_progress())
    info = {"settings": key_settings, "train": asdict(r), "test_accuracy": r.test_accuracy}   # on s.data.test()
    atomic_write(info_path, (json.dumps(info, indent=2) + "\n").encode(), force=True)
    log(f"{m.name}: dense trained in {r.seconds:.0f} s: val {r.val_accuracy:.2f} %, test {info['test_accuracy']:.2f} %")
    return path, {**info, "cached": False}


def prune_one(m: ModelRun, mr: MethodRun, sparsity: float, seed: int, dense: Path, dense_acc: float,
              s: Settings, work: Path, test, resume: bool | str = False) -> Row:
    """api.compress one setting and measure test accuracy; the row is also saved beside the
    checkpoint, and with `resume` a saved row of the same setting is reused instead of recomputed
    (`resume="only"`: nothing is computed, a setting without a saved row is marked not run)."""
    row = Row(m.name, mr.label, mr.method, seed, sparsity, dense_test_accuracy=dense_acc)
    out = work / m.name / f"{mr.label}-{sparsity:g}-seed{seed}.pt"
    spec = mr.spec(sparsity, seed)
    key = E2E.cache_key({"spec": asdict(spec), "finetune_epochs": s.finetune(m), "batch_size": s.batch_size,
                         "data": asdict(s.data), "dense": dense.name})
    saved = out.with_suffix(".json")
    prev = json.loads(saved.read_text()) if resume and saved.exists() else {}
    if prev.get("key") == key:
        log(f"{m.name} {mr.label} {sparsity:.0%} seed {seed}: from {saved.name} (--resume)")
        return Row(**{**prev["row"], "resumed": True})
    if resume == "only":
        row.error = NOT_RUN
        return row
    try:
        res = api.compress(dense, spec, out, data=s.data, finetune_epochs=s.finetune(m),
                           batch_size=s.batch_size, force=True, progress=_progress())
    except EdgepruneError as e:   # a setting this method cannot reach is a result, not a crash
        row.error = str(e)
        log(f"{m.name} {mr.label} {sparsity:.0%} seed {seed}: not run: {e}")
        atomic_write(saved, json.dumps({"key": key, "row": asdict(row)}).encode(), force=True)
        return row
    pruned = load_model(out).model
    row.sparsity, row.test_accuracy = res.sparsity, evaluate(pruned, test)
    row.val_accuracy, row.val_accuracy_before_finetune = res.finetuned_val_accuracy, res.pruned_val_accuracy
    row.prune_seconds, row.total_seconds = res.prune_seconds, res.total_seconds
    row.params_nonzero, row.mac_ratio = res.params_after, res.macs_after / max(res.macs_before, 1)
    row.compacted = any(L["shape"] != L["shape_before"] for L in res.layers)
    row.shapes, row.details, row.checkpoint = [L["shape"] for L in res.layers], res.details, str(out)
    log(f"{m.name} {mr.label} {sparsity:.0%} seed {seed}: test {row.test_accuracy:.2f} % (dense {dense_acc:.2f}), "
        f"sparsity {res.sparsity:.4f}, prune {res.prune_seconds:.2f} s, total {res.total_seconds:.0f} s"
        + (", compacted" if row.compacted else ""))
    atomic_write(saved, json.dumps({"key": key, "row": asdict(row)}, default=str).encode(), force=True)
    return row


def prepare_model(m: ModelRun, methods: list[MethodRun], s: Settings, work: Path) -> dict:
    """Train (or load from the cache) the dense model(s) `methods` start from; returns the model's
    info, with each dense checkpoint's path and test accuracy."""
    torch.set_num_threads(1)
    info: dict[str, Any] = {"sparsities": list(s.sparsities(m)), "dense_epochs": s.dense_epochs(m),
                            "finetune_epochs": s.finetune(m)}
    for kind in dict.fromkeys(["plain"] + [mr.dense for mr in methods]):
        path, dinfo = dense_model(m, L1 if kind == "l1" else 0.0, s, work)
        info["dense" if kind == "plain" else "dense_l1"] = {**dinfo, "path": str(path)}
    return info


def run_method(m: ModelRun, mr: MethodRun, info: dict, s: Settings, work: Path, resume: bool | str) -> list[dict]:
    """Every sparsity x seed of one method on one model. Runs in a worker process with --jobs, so it
    returns plain data (rows as dicts)."""
    torch.set_num_threads(1)
    test = s.data.test()
    dense = info["dense_l1" if mr.dense == "l1" else "dense"]
    # seeds outermost: a run cut short still has whole seeds of every sparsity
    return [asdict(prune_one(m, mr, sp, seed, Path(dense["path"]), dense["test_accuracy"], s, work, test, resume))
            for seed in s.seeds for sp in s.sparsities(m)]


def deploy_compacted(m: ModelRun, rows: list[Row], dense: Path, s: Settings, work: Path) -> list[dict]:
    """ONNX size and ONNX Runtime latency of each physically compacted model (first seed) against the
    dense model: api.export, then api.profile (dense, dense again as the A/A control, pruned, interleaved)."""
    chosen = [r for r in rows if r.model == m.name and r.compacted and r.seed == s.seeds[0]]
    if s.quick:   # the smoke run proves the path on the most compacted model of each method only
        top = {r.label: max(x.target_sparsity for x in chosen if x.label == r.label) for r in chosen}
        chosen = [r for r in chosen if r.target_sparsity == top[r.label]]
    if not chosen:
        return []
    onnx_dir = work / m.name / "onnx"
    target = TARGET
    if s.quick:   # the same target with 30 timed rounds instead of 200: a smoke run times nothing worth keeping
        text = load_target(TARGET).path.read_text()
        target = str(atomic_write(work / f"{TARGET}-quick.toml", text.replace("iterations = 200", "iterations = 30")
                                  .replace("warmup = 20", "warmup = 5").encode(), force=True))
    dense_onnx = api.export(dense, onnx_dir / "dense.onnx", data=s.data, force=True).path
    out = []
    for r in chosen:
        log(f"{m.name} {r.label} {r.target_sparsity:.0%}: export + ONNX Runtime profile against dense ...")
        pruned_onnx = api.export(Path(r.checkpoint), onnx_dir / f"{Path(r.checkpoint).stem}.onnx", data=s.data,
                                 force=True).path
        rep = api.profile(dense_onnx, pruned_onnx, target, data=s.data, progress=_progress())
        lat = {str(b): {"dense_p50_ms": bl.dense.p50, "pruned_p50_ms": bl.pruned.p50, "ratio_p50": bl.ratio_p50,
                        "aa_ratio_p50": bl.aa_ratio_p50} for b, bl in sorted(rep.latency.items())}
        out.append({"model": m.name, "label": r.label, "target_sparsity": r.target_sparsity, "seed": r.seed,
                    "dense_bytes": rep.dense.size_bytes, "pruned_bytes": rep.pruned.size_bytes,
                    "size_ratio": rep.ratios.size, "mac_ratio": rep.ratios.macs, "latency": lat,
                    "dense_accuracy_ort": rep.dense.accuracy, "pruned_accuracy_ort": rep.pruned.accuracy,
                    "report": rep.to_dict()})
        b1 = lat.get("1", {})
        log(f"{m.name} {r.label} {r.target_sparsity:.0%}: ONNX {rep.ratios.size:.3f} x dense, b1 p50 ratio "
            f"{b1.get('ratio_p50', float('nan')):.3f} (A/A {b1.get('aa_ratio_p50', float('nan')):.3f})")
    return out


# ------------------------------------------------------------------------------------ summaries
def summarize(rows: list[Row]) -> list[dict]:
    """Mean and std (over seeds) per model x method x sparsity; cells a method could not run say why."""
    groups: dict[tuple[str, str, float], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.model, r.label, r.target_sparsity), []).append(r)
    out = []
    for (model, label, sp), rs in groups.items():
        ok = [r for r in rs if r.error is None]
        acc = np.array([r.test_accuracy for r in ok], dtype=float)
        prune_s = np.array([r.prune_seconds for r in ok], dtype=float)
        out.append({"model": model, "label": label, "target_sparsity": sp, "n": len(ok),
                    "test_accuracy_mean": float(acc.mean()) if ok else None,
                    "test_accuracy_std": float(acc.std(ddof=1)) if len(ok) > 1 else None,
                    "dense_test_accuracy": ok[0].dense_test_accuracy if ok else rs[0].dense_test_accuracy,
                    "sparsity_mean": float(np.mean([r.sparsity for r in ok])) if ok else None,
                    "prune_seconds_mean": float(prune_s.mean()) if ok else None,
                    "compacted": any(r.compacted for r in ok),
                    "error": None if ok else rs[0].error})
    return out


def _acc_cell(c: dict | None, seeds: int) -> str:
    if c is None:
        return ""
    if c["test_accuracy_mean"] is None:
        return "n/a"
    std = c["test_accuracy_std"]
    return (f"{c['test_accuracy_mean']:.2f}" + ("" if std is None else f" ± {std:.2f}")
            + (f" (n={c['n']})" if c["n"] < seeds else ""))


def markdown(record: dict) -> str:
    """The README table: test accuracy mean ± std per model, method and sparsity; pruning-step
    times; and the ONNX size and latency of physically compacted models."""
    s, summary = record["settings"], record["summary"]
    seeds = len(s["seeds"])
    lines = [f"Test accuracy (%), Fashion-MNIST test split ({record['test_images']} images), mean ± std over "
             f"{seeds} seed{'s' if seeds > 1 else ''} ({', '.join(map(str, s['seeds']))}); every method one-shot "
             f"(activation: its gated schedule), then the model's fine-tune budget, the same for every method "
             f"(`api.compress` defaults: Adam, cosine, lr 2e-3 for weight and 5e-4 for channel granularity, 8e-3 for "
             f"the gated schedule). "
             f"Sparsity = fraction of Conv/Linear weights removed.", ""]
    for model, info in record["models"].items():
        cells = [c for c in summary if c["model"] == model]
        if not cells:
            continue
        sps = sorted({c["target_sparsity"] for c in cells})
        dense = f"fine-tune {info['finetune_epochs']:g} epoch; dense {info['dense']['test_accuracy']:.2f} %"
        if "dense_l1" in info:
            dense += f"; L1-trained dense (lomp's start) {info['dense_l1']['test_accuracy']:.2f} %"
        lines += [f"**{model}** ({dense})", "",
                  "| method | " + " | ".join(f"{sp:.0%}" for sp in sps) + " |",
                  "|---|" + "---:|" * len(sps)]
        for label in dict.fromkeys(c["label"] for c in cells):
            by_sp = {c["target_sparsity"]: c for c in cells if c["label"] == label}
            lines.append(f"| {label} | " + " | ".join(_acc_cell(by_sp.get(sp), seeds) for sp in sps) + " |")
        lines.append("")
    # Rows reused with --resume or kept by --merge were timed by another run (another commit, another
    # machine load): their times say nothing against this run's, so the table names the run of each.
    runs: dict[str, set] = {}
    for r in record["rows"]:
        runs.setdefault(r["label"], set()).add(r.get("timed_in") or "not recorded")
    lines += ["Pruning step alone (`CompressResult.prune_seconds`: scoring and selection, no fine-tuning), mean "
              "seconds per run; compare times only between methods timed in the same run:", "",
              "| method | " + " | ".join(record["models"]) + " | timed in |",
              "|---|" + "---:|" * len(record["models"]) + "---|"]
    for label in dict.fromkeys(c["label"] for c in summary):
        row = []
        for model in record["models"]:
            t = [c["prune_seconds_mean"] for c in summary
                 if c["model"] == model and c["label"] == label and c["prune_seconds_mean"] is not None]
            row.append(f"{np.mean(t):.3f}" if t else "")
        row.append("; ".join(sorted(runs.get(label, {"not recorded"}))))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    if record["compacted"]:
        lines += ["Physically compacted models (seed " + str(s["seeds"][0]) + ") against the dense model through "
                  f"ONNX Runtime on `{TARGET}` (1 thread; `api.profile`: dense, dense again as the A/A control and "
                  "pruned, interleaved in one loop):", "",
                  "| model | method | sparsity | ONNX bytes | size ratio | MAC ratio | b1 p50 ratio (A/A) | "
                  "b64 p50 ratio (A/A) | ORT acc % (dense) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for d in record["compacted"]:
            lat = [d["latency"].get(b) for b in ("1", "64")]
            lat_cells = [f"{x['ratio_p50']:.3f} ({x['aa_ratio_p50']:.3f})" if x else "" for x in lat]
            lines.append(f"| {d['model']} | {d['label']} | {d['target_sparsity']:.0%} | {d['pruned_bytes']:,} | "
                         f"{d['size_ratio']:.3f} | {d['mac_ratio']:.3f} | {lat_cells[0]} | {lat_cells[1]} | "
                         f"{d['pruned_accuracy_ort']:.2f} ({d['dense_accuracy_ort']:.2f}) |")
        lines.append("")
    notes = [f"- `{r['label']}` skipped: {r['reason']}" for r in record["skipped"]]
    failed: dict[tuple[str, str], list[dict]] = {}
    for c in summary:
        if c["error"] and c["error"] != NOT_RUN:
            failed.setdefault((c["model"], c["label"]), []).append(c)
    if any(0 < c["n"] < seeds for c in summary):
        notes.append(f"- n=k: only k of the {seeds} seeds ran (the run was cut short; rendered with --saved-only).")
    for (model, label), cs in failed.items():
        where = ", ".join(f"{c['target_sparsity']:.0%}" for c in cs)
        notes.append(f"- {model} `{label}` n/a at {where}: {cs[0]['error']}")
    if notes:
        lines += notes + [""]
    resumed = sum(bool(r.get("resumed")) for r in record["rows"])
    host = record["provenance"]["machine"]
    lines.append(f"Wall time {record['wall_seconds'] / 60:.1f} min"
                 + (f" ({resumed} of {len(record['rows'])} runs reused from an earlier run with --resume)"
                    if resumed else "") + f" on {host['cpu']} "
                 f"({host['cpu_count']} cores, load average at the end {host['load_average_end']})"
                 + (" — QUICK smoke run, numbers not meaningful" if s["quick"] else "") + ".")
    return "\n".join(lines) + "\n"


def plot(record: dict, out: BinaryIO) -> None:
    """Accuracy against sparsity, one panel per model, error bars = std over seeds; x is the
    compression 1/(1-s) on a log axis so 95 % and 98 % do not crowd together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in record["models"] if any(c["model"] == m for c in record["summary"])]
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        cells = [c for c in record["summary"] if c["model"] == model and c["test_accuracy_mean"] is not None]
        for label in dict.fromkeys(c["label"] for c in cells):
            pts = sorted((c for c in cells if c["label"] == label), key=lambda c: c["target_sparsity"])
            x = [1 / (1 - c["target_sparsity"]) for c in pts]
            ax.errorbar(x, [c["test_accuracy_mean"] for c in pts], yerr=[c["test_accuracy_std"] or 0 for c in pts],
                        marker="o", ms=3, capsize=3, lw=1, label=label)
        ax.axhline(record["models"][model]["dense"]["test_accuracy"], color="k", ls="--", lw=0.8, label="dense")
        sps = sorted({c["target_sparsity"] for c in cells})
        ax.set_xscale("log")
        ax.set_xticks([1 / (1 - sp) for sp in sps], [f"{sp:.0%}" for sp in sps])
        ax.minorticks_off()
        ax.set_xlabel("sparsity (log of compression)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{model} ({record['models'][model]['finetune_epochs']:g} fine-tune epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = record["settings"]["seeds"]
    fig.suptitle(f"Fashion-MNIST, the same fine-tune budget for every method, "
                 f"mean ± std over {len(seeds)} seed(s)" + (" — QUICK" if record["settings"]["quick"] else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def pick(names: str | None, table: list, what: str) -> list:
    if not names:
        return list(table)
    known = {x.name if hasattr(x, "name") else x.label: x for x in table}
    unknown = [n for n in _list(names) if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown {what} {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in _list(names)]


def merge_previous(record: dict, path: Path) -> None:
    """Keep the previous run's rows for model x method pairs this run did not redo (same settings)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old.get("settings") != json.loads(json.dumps(record["settings"])):   # tuples read back as lists
        raise SystemExit(f"error: {path} was made with other settings; run without --merge")
    redone = {(r["model"], r["label"]) for r in record["rows"]}
    kept = [r for r in old["rows"] if (r["model"], r["label"]) not in redone]
    record["rows"] = kept + record["rows"]
    record["compacted"] = [d for d in old["compacted"] if (d["model"], d["label"]) not in redone] + record["compacted"]
    for name, info in old["models"].items():
        record["models"].setdefault(name, info)
        for k, v in info.items():
            record["models"][name].setdefault(k, v)
    ran = {m["label"] for m in record["methods"]}
    record["methods"] = [m for m in old["methods"] if m["label"] not in ran] + record["methods"]
    labels = {m["label"] for m in record["methods"]}
    record["skipped"] = list({x["label"]: x for x in old.get("skipped", []) + record["skipped"]
                              if x["label"] not in labels}.values())
    # the table's order (models, then METHODS), whichever run a row came from
    rank = {name: i for i, name in enumerate([m.name for m in MODELS] + [m.label for m in METHODS])}
    record["rows"].sort(key=lambda r: (rank.get(r["model"], 99), rank.get(r["label"], 99), r["target_sparsity"], r["seed"]))
    record["compacted"].sort(key=lambda d: (rank.get(d["model"], 99), rank.get(d["label"], 99), d["target_sparsity"]))
    record["methods"].sort(key=lambda m: rank.get(m["label"], 99))
    record["merged_from"] = old.get("provenance")


class _Done:
    """A finished result with a Future's `result()`, for --jobs 1."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="where methods.json / .md / .png go")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-methods",
                    help="dense models (cached) and pruned checkpoints")
    ap.add_argument("--quick", action="store_true",
                    help="1200 training / 300 test images, lenet300 and lenet5, 1 seed, 2 sparsities, fractions of an epoch")
    ap.add_argument("--models", help=f"comma-separated, from: {', '.join(m.name for m in MODELS)}")
    ap.add_argument("--methods", help=f"comma-separated, from: {', '.join(m.label for m in METHODS)}")
    ap.add_argument("--seeds", help="comma-separated pruning / fine-tune seeds (default 0,1,2; --quick 0)")
    ap.add_argument("--finetune-epochs", type=float,
                    help="one fine-tune budget for every model and method (default: 1 epoch MLPs, 0.5 LeNet-5)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes, one model x method each (default: 2, or 1 on a one-core machine)")
    ap.add_argument("--merge", action="store_true",
                    help="keep rows of OUT/methods.json for model x method pairs not run now")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows a previous run saved in WORK for identical settings (after an interruption)")
    ap.add_argument("--saved-only", action="store_true",
                    help="compute nothing: build the results from the rows saved in WORK (a run cut short)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite methods.md and methods.png from OUT/methods.json")
    args = ap.parse_args(argv)
    stem = "methods-quick" if args.quick else "methods"
    if args.render:
        record = json.loads((args.out / f"{stem}.json").read_text())
        write_outputs(record, args.out, stem)
        return 0
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    s = Settings.for_args(args)
    models = pick(args.models or (",".join(s.quick_models) if s.quick else None), MODELS, "model")
    methods = pick(args.methods, METHODS, "method")
    registered = set(available_methods())
    skipped = [{"label": mr.label, "reason": f"method '{mr.method}' is not registered in this checkout"}
               for mr in methods if mr.method not in registered]
    for x in skipped:
        log(f"skipped {x['label']}: {x['reason']}")
    methods = [mr for mr in methods if mr.method in registered]
    log(f"settings: {json.dumps(asdict(s))}; methods: {', '.join(mr.label for mr in methods)}")

    todo = {m.name: [mr for mr in methods if mr.runs_on(m.name)] for m in models}
    todo = {name: ms for name, ms in todo.items() if ms}
    by_name = {m.name: m for m in models}
    # Worker processes: first the dense models (one per model), then one task per model x method,
    # the most expensive first. The ONNX latency runs afterwards, one at a time, on a quieter machine.
    pool = (ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"))
            if args.jobs > 1 else None)
    try:
        run = (lambda fn, *a: pool.submit(fn, *a)) if pool else (lambda fn, *a: _Done(fn(*a)))
        infos = {name: run(prepare_model, by_name[name], ms, s, args.work) for name, ms in todo.items()}
        model_info = {name: f.result() for name, f in infos.items()}
        tasks = sorted(((by_name[name], mr) for name, ms in todo.items() for mr in ms),
                       key=lambda t: -t[0].epoch_cost * s.finetune(t[0]) * len(s.sparsities(t[0])))
        resume = "only" if args.saved_only else args.resume
        futures = [run(run_method, m, mr, model_info[m.name], s, args.work, resume) for m, mr in tasks]
        rows = [Row(**r) for f in futures for r in f.result()]
    finally:
        if pool:
            pool.shutdown()
    order = {(m.name, mr.label): i for i, (m, mr) in enumerate((m, mr) for m in models for mr in methods)}
    rows.sort(key=lambda r: (order[(r.model, r.label)], r.target_sparsity, r.seed))
    compacted: list[dict] = []
    for name, info in model_info.items():
        compacted += deploy_compacted(by_name[name], rows, Path(info["dense"]["path"]), s, args.work)
    test_images = len(s.data.test())
    prov = provenance()
    this_run = f"{prov['created']} at {(prov['git']['commit'] or 'an unknown commit')[:7]}"
    for r in rows:
        if r.timed_in is None:
            r.timed_in = this_run

    record: dict[str, Any] = {
        "schema": SCHEMA,
        "settings": {**asdict(s), "seeds": list(s.seeds)},
        "test_images": test_images, "models": model_info,
        "methods": [asdict(mr) | {"options": dict(mr.options)} for mr in methods], "skipped": skipped,
        "rows": [asdict(r) for r in rows], "compacted": compacted,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge_previous(record, out / f"{stem}.json")
    record["summary"] = summarize([Row(**r) for r in record["rows"]])
    record["wall_seconds"] = time.perf_counter() - t0
    record["provenance"] = prov
    write_results(out, stem, record)
    write_outputs(record, out, stem)
    log(f"wrote {out / (stem + '.json')}, {stem}.md, {stem}.png in {record['wall_seconds'] / 60:.1f} min")
    return 0


def write_outputs(record: dict, out: Path, stem: str) -> None:
    """The table (printed too) and the plot, both rendered from the JSON record alone."""
    text = markdown(record)
    atomic_write(out / f"{stem}.md", text.encode(), force=True)
    atomic_write(out / f"{stem}.png", lambda f: plot(record, f), force=True)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
