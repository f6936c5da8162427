#!/usr/bin/env python
"""End-to-end benchmark: edgeprune against peer pruners, measured side by side in one run.

Two architectures on Fashion-MNIST, each pruned by edgeprune and by a peer library at the same
budget and fine-tuned with the same loop, optimizer, learning rate and seed:

* resnet8 (channels 32/64/128): edgeprune channel pruning to ~50 % of MACs (round_to from target
  host-cpu: this CPU's SIMD width, 16 on AVX-512; scope "layer" and "global") vs Torch-Pruning
  (MetaPruner, group L2 magnitude) at the nearest MAC count it reaches: its uniform pruner with its
  default (no round_to), and with round_to at edgeprune's multiple (uniform or global, whichever
  lands nearer).
* lenet300: edgeprune unstructured global magnitude 90 % vs torch.nn.utils.prune.global_unstructured
  (L1, 90 %), both exported through edgeprune.export.

Every ONNX model of one architecture is timed in a single interleaved loop (dense, dense again as
an A/A control, then the pruned variants) with ONNX Runtime on target host-cpu (1 thread), and
its accuracy measured on the Fashion-MNIST test split through ONNX Runtime.

    .venv/bin/python benchmarks/bench_e2e.py --out benchmarks/results          # full: ~30 min, ~15 min once cached
    .venv/bin/python benchmarks/bench_e2e.py --quick --out runs/bench-quick    # smoke run (< 3 min)

Writes OUT/e2e.json and OUT/e2e.md (OUT/e2e-quick.* with --quick). Dense checkpoints are cached
in runs/bench-cache/, keyed by their training settings.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402

from edgeprune import api  # noqa: E402
from edgeprune.backends import get_backend  # noqa: E402
from edgeprune.measure.timing import tile_rows  # noqa: E402
from edgeprune.data import load_dataset, train_val_split  # noqa: E402
from edgeprune.export import export as export_onnx  # noqa: E402
from edgeprune.model_io import ArchRef, Checkpoint, LoadedModel, load_model  # noqa: E402
from edgeprune.onnx_stats import model_stats  # noqa: E402
from edgeprune.measure.accuracy import predict  # noqa: E402
from edgeprune.measure.timing import time_interleaved  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from edgeprune.pruning import PruneSpec  # noqa: E402
from edgeprune.pruning.structured import budget_count  # noqa: E402
from edgeprune.report.schema import LatencyStats  # noqa: E402
from edgeprune.training import TrainConfig, evaluate, finetune_lr  # noqa: E402
from edgeprune.training import train as train_loop  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import load_average, write_results  # noqa: E402

DATA = "fashion-mnist"
TARGET = "host-cpu"
CACHE_DIR = ROOT / "runs" / "bench-cache"
WORK_DIR = ROOT / "runs" / "bench-e2e"
BATCHES = (1, 64)
PARITY_SAMPLES = 256
EVAL_BATCH = 256
# The checks (stated in the task; never tuned to make a run pass)
LAT_VS_MAC_FACTOR = 1.25     # pruned/dense latency ratio <= 1.25 x pruned/dense MAC ratio
RESNET_MAX_DROP_PT = 1.0
LENET_MAX_DROP_PT = 1.5
NOISE_FLOOR = 0.02           # as in edgeprune.measure.verdict: a ratio within max(|A/A - 1|, 2 %) of 1 is noise

# Logs and redirected output (make bench > file, nohup) get a fixed width instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 240)
log_console = Console(stderr=True, width=None if sys.stderr.isatty() else 240)
T0 = time.perf_counter()


def log(msg: str) -> None:
    log_console.print(f"[dim][{time.perf_counter() - T0:7.1f}s][/dim] {msg}", highlight=False)


# ----------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    quick: bool = False
    seed: int = 0
    train_limit: int | None = None       # None: the full 60k training images (54k train + 6k val)
    test_limit: int | None = None        # None: the full 10k test split
    batch_size: int = 128
    train_lr: float = 1e-3
    finetune_lr: float | None = None     # None: api.compress's default for the granularity
    finetune_epochs: float = 2.0
    resnet_epochs: float = 3.0
    resnet_widths: tuple[int, ...] = (32, 64, 128)
    resnet_mac_sparsity: float = 0.5
    round_to: int = field(default_factory=lambda: load_target("host-cpu").build.round_to)  # this CPU's SIMD width
    scopes: tuple[str, ...] = ("layer", "global")
    lenet_epochs: float = 10.0
    lenet_sparsity: float = 0.9
    warmup: int = 20
    iterations: int = 200                # at least this many timed rounds per batch size ...
    min_seconds: float = 20.0            # ... and at least this long
    accuracy_samples: int | None = None  # None: the whole test split

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "Settings":
        s = cls(quick=args.quick)
        if args.quick:
            s.train_limit, s.test_limit = 2000, 500
            s.resnet_epochs, s.lenet_epochs, s.finetune_epochs = 1.0, 1.0, 0.5
            s.warmup, s.iterations, s.min_seconds = 5, 30, 0.0
        if args.scopes:
            s.scopes = tuple(x.strip() for x in args.scopes.split(",") if x.strip())
        for name in ("resnet_epochs", "lenet_epochs", "finetune_epochs", "iterations", "min_seconds", "round_to"):
            value = getattr(args, name, None)
            if value is not None:
                setattr(s, name, type(getattr(s, name))(value))
        return s


@dataclass
class Variant:
    """One row of the results: an ONNX model plus what we know about how it was made."""

    arch: str
    name: str                 # dense | edgeprune-layer | edgeprune-global | tp-uniform | tp-round | torch-prune
    label: str                # what the table shows
    onnx: Path | None
    how: str = ""
    widths: list[int] | None = None
    torch_macs: float | None = None      # Torch-Pruning's counter, one sample (edgeprune's "macs" budget)
    val_accuracy: float | None = None    # PyTorch, validation split, after fine-tuning
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # filled by measure()
    stats: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    agreement: float | None = None
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    correct: Any = field(default=None, repr=False)   # per test image, for paired comparisons; not in JSON


# -------------------------------------------------------------------------------------------- data
class Data:
    def __init__(self, s: Settings):
        self.options = api.DataOptions(DATA, limit=s.train_limit, test_limit=s.test_limit)
        # the same calls api.train / api.compress make, so every variant sees the same split
        self.train, self.val = train_val_split(load_dataset(DATA, "train", None, s.train_limit))
        self.test = load_dataset(DATA, "test", None, s.test_limit)
        if s.accuracy_samples:
            self.test = self.test.head(s.accuracy_samples)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.input_shape)


# -------------------------------------------------------------------------------------- helpers
def cache_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dense_checkpoint(arch: str, arch_kwargs: dict, epochs: float, s: Settings, data: Data) -> tuple[Path, dict]:
    """Train `arch` once per settings and cache the checkpoint under runs/bench-cache/."""
    settings = {"arch": f"zoo:{arch}", "kwargs": arch_kwargs, "epochs": epochs, "lr": s.train_lr,
                "batch_size": s.batch_size, "seed": s.seed, "data": DATA, "train_limit": s.train_limit,
                "torch": torch.__version__}
    key = cache_key(settings)
    path = CACHE_DIR / f"{arch}-{key}.pt"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        try:
            load_model(path)
            info = json.loads(meta_path.read_text())
            log(f"{arch}: dense checkpoint from cache {path.relative_to(ROOT)} "
                f"(trained {info['train']['seconds']:.0f} s, {epochs:g} epochs)")
            return path, {**info, "cached": True}
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is retrained
            log(f"{arch}: cached checkpoint unusable ({e}); retraining")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"{arch}: training dense model, {epochs:g} epochs on {len(data.train)} images ...")
    res = api.train(f"zoo:{arch}", path, data=data.options, epochs=epochs, lr=s.train_lr,
                    batch_size=s.batch_size, seed=s.seed, arch_kwargs=arch_kwargs, force=True,
                    progress=_progress())
    info = {"settings": settings, "key": key, "train": asdict(res)}
    meta_path.write_text(json.dumps(info, indent=2))
    log(f"{arch}: trained in {res.seconds:.0f} s, val {res.val_accuracy:.2f} %, test (torch) {res.test_accuracy:.2f} %")
    return path, {**info, "cached": False}


def _progress() -> bool:
    return sys.stderr.isatty()


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def linear_widths(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]


def wrap(model: nn.Module, arch: str, kwargs: dict, input_shape: tuple[int, ...], meta: dict) -> LoadedModel:
    """A peer-pruned in-memory model, dressed as a LoadedModel so edgeprune.export can write it."""
    ckpt = Checkpoint(kind="module", input_shape=tuple(input_shape), state_dict={},
                      arch=ArchRef(f"zoo:{arch}", kwargs), meta=meta)
    return LoadedModel(model, ckpt, Path(f"<{meta.get('method', 'peer')}>"))


def export_variant(loaded: LoadedModel, out: Path, data: Data) -> Path:
    res = export_onnx(loaded, out, check_inputs=data.test.x[:PARITY_SAMPLES], force=True)
    assert res.parity is not None and res.parity.ok
    return res.path


def lr_for(s: Settings, granularity: str) -> float:
    """The fine-tune learning rate every variant of one granularity shares (peers included)."""
    return s.finetune_lr if s.finetune_lr is not None else finetune_lr(granularity)


def finetune(model: nn.Module, s: Settings, data: Data, what: str, granularity: str) -> float:
    """The fine-tune api.compress runs: edgeprune.training.train, Adam + cosine, same lr and seed."""
    log(f"{what}: fine-tuning {s.finetune_epochs:g} epochs ...")
    t = time.perf_counter()
    train_loop(model, data.train, TrainConfig(epochs=s.finetune_epochs, lr=lr_for(s, granularity), batch_size=s.batch_size,
                                              seed=s.seed), progress=_progress(), description=f"fine-tune {what}")
    return time.perf_counter() - t


def signed_zero_stats(onnx_path: Path) -> dict[str, int]:
    """How many float weights are -0.0, and the xz size the file would have with every zero +0.0.

    A masked weight zeroed as `w * 0` keeps w's sign bit; -0.0 and +0.0 are different bytes, so a
    mix of both compresses worse. The second figure is what a sign-free zeroing would give.
    """
    import lzma

    import onnx
    from onnx import numpy_helper

    from edgeprune.onnx_stats import XZ_PRESET

    model = onnx.load(str(onnx_path))
    neg = 0
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f":
            neg += int(np.count_nonzero((a == 0) & np.signbit(a)))
            init.CopyFrom(numpy_helper.from_array(a + a.dtype.type(0.0), init.name))  # -0.0 + 0.0 = +0.0
    raw = model.SerializeToString()
    return {"negative_zeros": neg,
            "size_xz_bytes_if_positive_zeros": len(lzma.compress(raw, format=lzma.FORMAT_XZ, preset=XZ_PRESET))}


# ------------------------------------------------------------------------------------ measuring
def measure(arch: str, variants: list[Variant], data: Data, s: Settings) -> dict[str, Any]:
    """Build every variant's engine for host-cpu, time them all in one interleaved loop per batch
    size (dense first, the dense engine opened twice as the A/A control), then accuracy through
    ONNX Runtime on the test split and ONNX statistics."""
    target = load_target(TARGET)
    backend = get_backend(target.backend)
    work = WORK_DIR / arch / "engines"
    for v in variants:
        if v.onnx is None:
            continue
        problems = backend.validate(v.onnx, target)
        if problems:
            raise RuntimeError(f"{arch}/{v.name}: {v.onnx.name} does not fit {TARGET}: {problems}")
    real = [v for v in variants if v.onnx is not None]
    engines = {v.name: backend.build(v.onnx, target, work / v.name) for v in real}
    dense = real[0]
    control = next(v for v in variants if v.name == "dense-aa")
    order = [dense, control] + [v for v in real[1:]]
    sessions = [backend.open(engines[dense.name], target), backend.open(engines[dense.name], target)]
    sessions += [backend.open(engines[v.name], target) for v in real[1:]]
    x = data.test.x
    load_before = load_average()
    run_info: dict[str, Any] = {"rounds": {}, "order": " ".join(v.name for v in order) + ", rotated each round",
                                "warmup": s.warmup, "iterations": s.iterations, "min_seconds": s.min_seconds,
                                "threads": target.build.threads, "load_average_before": load_before}
    for bs in BATCHES:
        log(f"{arch}: latency at batch {bs}, {len(sessions)} sessions interleaved ...")
        times = time_interleaved(sessions, tile_rows(x, bs), s.warmup, s.iterations, s.min_seconds)
        run_info["rounds"][str(bs)] = int(len(times[0]))
        stats = [LatencyStats.from_ns(t, target.run.percentiles) for t in times]
        for v, st in zip(order, stats):
            v.latency[bs] = {"p50_ms": st.p50, "p90_ms": st.p90, "p99_ms": st.p99, "mean_ms": st.mean,
                             "std_ms": st.std, "n": st.n}
        for v in order:
            v.latency[bs]["ratio_p50"] = v.latency[bs]["p50_ms"] / dense.latency[bs]["p50_ms"]
            v.latency[bs]["ratio_p90"] = v.latency[bs]["p90_ms"] / dense.latency[bs]["p90_ms"]
    run_info["load_average_after"] = load_average()
    log(f"{arch}: accuracy through ONNX Runtime on {len(x)} test images ...")
    logits = {}
    for v, sess in zip(order, sessions):
        if v is control:
            continue
        logits[v.name] = predict(sess, x, min(EVAL_BATCH, len(x)))
        v.correct = logits[v.name].argmax(1) == data.test.y
        v.accuracy = float(100.0 * np.mean(v.correct))
        v.agreement = float(np.mean(logits[v.name].argmax(1) == logits[dense.name].argmax(1)))
    for v in real:
        v.stats = model_stats(v.onnx).to_dict() | signed_zero_stats(v.onnx)
    control.stats, control.accuracy, control.agreement = dense.stats, dense.accuracy, 1.0
    run_info["stack"] = backend.stack(target)
    return run_info


# ---------------------------------------------------------------------------------------- resnet8
def tp_uniform(dense_path: Path, example: torch.Tensor, target_macs: float,
               round_to: int | None = None) -> tuple[nn.Module, float, float, bool]:
    """Torch-Pruning at `target_macs`: returns (model, pruning_ratio, MACs, global_pruning).

    Without `round_to`, the uniform (local) pruner with its pruning_ratio bisected. With `round_to`,
    Torch-Pruning keeps every width a multiple of it, and the MAC count is no longer monotone in the
    ratio (it rounds each layer's kept channels down, so 32 -> 16 already at a ratio of 0.01 with
    round_to 16): both the uniform and the global pruner are scanned over a grid of ratios and the
    nearest MAC count wins."""
    base_model = load_model(dense_path).model

    def pruned(ratio: float, global_pruning: bool = False) -> nn.Module:
        m = copy.deepcopy(base_model)
        m.eval()
        pruner = tp.pruner.MetaPruner(m, example, tp.importance.GroupMagnitudeImportance(p=2),
                                      global_pruning=global_pruning, pruning_ratio=ratio, ignored_layers=[m.fc],
                                      round_to=round_to)
        pruner.step()
        return m

    cache: dict[tuple[float, bool], float] = {}

    def macs(ratio: float, global_pruning: bool = False) -> float:
        key = (ratio, global_pruning)
        if key not in cache:
            cache[key] = budget_count(pruned(ratio, global_pruning), example, "macs")
        return cache[key]

    if round_to:
        grid = [(k / 200, g) for g in (False, True) for k in range(1, 181)]
        ratio, glob = min(grid, key=lambda rg: (abs(macs(*rg) - target_macs), rg[1], rg[0]))
        return pruned(ratio, glob), ratio, macs(ratio, glob), glob
    lo, hi = 0.0, 0.9
    for _ in range(30):
        mid = (lo + hi) / 2
        if macs(mid) > target_macs:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    ratio = min((lo, hi), key=lambda r: abs(macs(r) - target_macs))
    return pruned(ratio), ratio, macs(ratio), False


def tp_peer(name: str, round_to: int | None, ref: Variant, dense_path: Path, example: torch.Tensor,
            base_macs: float, arch: str, kwargs: dict, s: Settings, data: Data) -> Variant:
    """A Torch-Pruning peer row at `ref`'s MAC count, with the same fine-tune as edgeprune's rows."""
    log(f"{arch}: {name}: bisecting Torch-Pruning's pruning_ratio (round_to {round_to}) to "
        f"{ref.torch_macs / base_macs:.3f} of MACs ...")
    t = time.perf_counter()
    model, ratio, macs, glob = tp_uniform(dense_path, example, ref.torch_macs, round_to)
    bisect_s = time.perf_counter() - t
    pre_val = evaluate(model, data.val)
    ft_s = finetune(model, s, data, name, "channel")
    val = evaluate(model, data.val)
    loaded = wrap(model, arch, kwargs, data.input_shape,
                  {"method": "torch-pruning-magnitude", "granularity": "channel", "sparsity": 1 - macs / base_macs})
    t = time.perf_counter()
    label = f"Torch-Pruning {'global' if glob else 'uniform'}" + (f", round_to {round_to}" if round_to else "")
    v = Variant(arch, name, label, export_variant(loaded, WORK_DIR / arch / f"{name}.onnx", data),
                how=f"tp.pruner.MetaPruner(GroupMagnitudeImportance(p=2), global_pruning={glob}, "
                    f"pruning_ratio={ratio:.4f}, round_to={round_to}, fc ignored) + {s.finetune_epochs:g} ep fine-tune "
                    f"lr {lr_for(s, 'channel'):g}",
                widths=conv_widths(model), torch_macs=macs, val_accuracy=val)
    v.seconds = {"bisect": bisect_s, "finetune": ft_s, "export": time.perf_counter() - t}
    v.extra = {"pruning_ratio": ratio, "round_to": round_to, "global_pruning": glob, "matched_to": ref.name,
               "val_accuracy_before_finetune": pre_val, "torch_mac_ratio": macs / base_macs}
    log(f"{arch}: {name}: pruning_ratio {ratio:.4f}, MACs {macs / base_macs:.3f} of dense, widths {v.widths}, "
        f"val {pre_val:.2f} % -> {val:.2f} %")
    return v


def run_resnet8(s: Settings, data: Data, record: dict) -> list[Variant]:
    arch, kwargs = "resnet8", {"widths": list(s.resnet_widths)}
    work = WORK_DIR / arch
    work.mkdir(parents=True, exist_ok=True)
    dense_path, dense_info = dense_checkpoint(arch, kwargs, s.resnet_epochs, s, data)
    record["dense_training"] = dense_info
    dense_loaded = load_model(dense_path)
    example = dense_loaded.example_input
    base_macs = budget_count(dense_loaded.model, example, "macs")

    t = time.perf_counter()
    dense = Variant(arch, "dense", "dense", export_variant(dense_loaded, work / "dense.onnx", data),
                    how=f"{s.resnet_epochs:g} epochs, Adam lr {s.train_lr:g}, cosine, batch {s.batch_size}, seed {s.seed}",
                    widths=conv_widths(dense_loaded.model), torch_macs=base_macs,
                    val_accuracy=dense_info["train"]["val_accuracy"])
    dense.seconds["export"] = time.perf_counter() - t
    dense.seconds["train"] = dense_info["train"]["seconds"]
    variants = [dense, Variant(arch, "dense-aa", "dense (A/A control)", None, how="dense engine, second session")]

    for scope in s.scopes:
        spec = PruneSpec(method="magnitude", granularity="channel", budget="macs", sparsity=s.resnet_mac_sparsity,
                         round_to=s.round_to, scope=scope, seed=s.seed)
        name = f"edgeprune-{scope}"
        log(f"{arch}: {name}: prune to {s.resnet_mac_sparsity:.0%} of MACs removed, round_to {s.round_to}, "
            f"fine-tune {s.finetune_epochs:g} epochs ...")
        out = work / f"{name}.pt"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = api.compress(dense_path, spec, out, data=data.options, finetune_epochs=s.finetune_epochs,
                               lr=lr_for(s, "channel"), batch_size=s.batch_size, force=True, progress=_progress())
        loaded = load_model(out)
        t = time.perf_counter()
        v = Variant(arch, name, f"edgeprune channel, scope {scope}", export_variant(loaded, work / f"{name}.onnx", data),
                    how=f"PruneSpec(magnitude, channel, budget=macs, sparsity={s.resnet_mac_sparsity}, "
                        f"round_to={s.round_to}, scope={scope}) + {s.finetune_epochs:g} ep fine-tune lr {lr_for(s, 'channel'):g}",
                    widths=conv_widths(loaded.model), torch_macs=float(res.macs_after),
                    val_accuracy=res.finetuned_val_accuracy)
        v.seconds = {"compress": res.total_seconds, "prune": res.prune_seconds, "export": time.perf_counter() - t}
        v.extra = {"val_accuracy_before_finetune": res.pruned_val_accuracy, "dense_val_accuracy": res.dense_val_accuracy,
                   "torch_mac_ratio": res.macs_after / res.macs_before,
                   "warnings": [str(w.message) for w in caught]}
        log(f"{arch}: {name}: MACs {res.macs_after / res.macs_before:.3f} of dense, widths {v.widths}, "
            f"val {res.pruned_val_accuracy:.2f} % -> {res.finetuned_val_accuracy:.2f} % after fine-tune")
        variants.append(v)

    # the peers: Torch-Pruning's uniform pruner at the MAC count edgeprune's first scope reached, as
    # the library does by default and with round_to at edgeprune's multiple (equal widths policy)
    ref = variants[2]
    variants.append(tp_peer("tp-uniform", None, ref, dense_path, example, base_macs, arch, kwargs, s, data))
    variants.append(tp_peer("tp-round", s.round_to, ref, dense_path, example, base_macs, arch, kwargs, s, data))

    t = time.perf_counter()
    record["run"] = measure(arch, variants, data, s)
    record["measure_seconds"] = time.perf_counter() - t
    return variants


# --------------------------------------------------------------------------------------- lenet300
def run_lenet300(s: Settings, data: Data, record: dict) -> list[Variant]:
    arch, kwargs = "lenet300", {}
    work = WORK_DIR / arch
    work.mkdir(parents=True, exist_ok=True)
    dense_path, dense_info = dense_checkpoint(arch, kwargs, s.lenet_epochs, s, data)
    record["dense_training"] = dense_info
    dense_loaded = load_model(dense_path)
    t = time.perf_counter()
    dense = Variant(arch, "dense", "dense", export_variant(dense_loaded, work / "dense.onnx", data),
                    how=f"{s.lenet_epochs:g} epochs, Adam lr {s.train_lr:g}, cosine, batch {s.batch_size}, seed {s.seed}",
                    widths=linear_widths(dense_loaded.model), val_accuracy=dense_info["train"]["val_accuracy"])
    dense.seconds = {"train": dense_info["train"]["seconds"], "export": time.perf_counter() - t}
    variants = [dense, Variant(arch, "dense-aa", "dense (A/A control)", None, how="dense engine, second session")]

    # edgeprune: unstructured global magnitude
    spec = PruneSpec(method="magnitude", granularity="weight", scope="global", sparsity=s.lenet_sparsity, seed=s.seed)
    log(f"{arch}: edgeprune: global magnitude {s.lenet_sparsity:.0%} + {s.finetune_epochs:g} epochs fine-tune ...")
    out = work / "edgeprune-global.pt"
    res = api.compress(dense_path, spec, out, data=data.options, finetune_epochs=s.finetune_epochs,
                       lr=lr_for(s, "weight"), batch_size=s.batch_size, force=True, progress=_progress())
    loaded = load_model(out)
    t = time.perf_counter()
    v = Variant(arch, "edgeprune-global", "edgeprune unstructured, global",
                export_variant(loaded, work / "edgeprune-global.onnx", data),
                how=f"PruneSpec(magnitude, weight, scope=global, sparsity={s.lenet_sparsity}) + "
                    f"{s.finetune_epochs:g} ep fine-tune lr {lr_for(s, 'weight'):g} (masks re-applied each step)",
                widths=linear_widths(loaded.model), val_accuracy=res.finetuned_val_accuracy)
    v.seconds = {"compress": res.total_seconds, "prune": res.prune_seconds, "export": time.perf_counter() - t}
    v.extra = {"weight_sparsity": res.sparsity, "val_accuracy_before_finetune": res.pruned_val_accuracy}
    log(f"{arch}: edgeprune: sparsity {res.sparsity:.4f}, val {res.pruned_val_accuracy:.2f} % -> "
        f"{res.finetuned_val_accuracy:.2f} %")
    variants.append(v)

    # peer: torch.nn.utils.prune.global_unstructured, L1, same amount, same fine-tune
    log(f"{arch}: torch-prune: global_unstructured L1 {s.lenet_sparsity:.0%} + {s.finetune_epochs:g} epochs fine-tune ...")
    model = load_model(dense_path).model
    params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    t = time.perf_counter()
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=s.lenet_sparsity)
    prune_s = time.perf_counter() - t
    pre_val = evaluate(model, data.val)
    # The reparametrisation (weight = weight_orig * weight_mask, recomputed in a forward pre-hook)
    # keeps the pruned weights at zero through the fine-tune: torch's own way of enforcing masks.
    ft_s = finetune(model, s, data, "torch-prune", "weight")
    for m, name in params:
        torch_prune.remove(m, name)  # bake the masks in: hooks left in would export weight and mask
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict()), "prune.remove left hooks behind"
    val = evaluate(model, data.val)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    ep_layers = [m for m in load_model(out).model.modules() if isinstance(m, nn.Linear)]
    same_mask = sum(int(((a.weight == 0) == (b.weight == 0)).sum()) for (a, _), b in zip(params, ep_layers)) / total
    loaded = wrap(model, arch, kwargs, data.input_shape,
                  {"method": "torch-prune-l1", "granularity": "weight", "sparsity": zeros / total})
    t = time.perf_counter()
    v = Variant(arch, "torch-prune", "torch.nn.utils.prune global L1",
                export_variant(loaded, work / "torch-prune.onnx", data),
                how=f"prune.global_unstructured(L1Unstructured, amount={s.lenet_sparsity}) + {s.finetune_epochs:g} ep "
                    f"fine-tune lr {lr_for(s, 'weight'):g} (masks via prune's reparametrisation), prune.remove before export",
                widths=linear_widths(model), val_accuracy=val)
    v.seconds = {"prune": prune_s, "finetune": ft_s, "export": time.perf_counter() - t}
    v.extra = {"weight_sparsity": zeros / total, "val_accuracy_before_finetune": pre_val,
               "same_zero_pattern_as_edgeprune": same_mask}
    log(f"{arch}: torch-prune: sparsity {zeros / total:.4f}, val {pre_val:.2f} % -> {val:.2f} %, "
        f"zero pattern equal to edgeprune's for {same_mask:.4%} of weights")
    variants.append(v)

    t = time.perf_counter()
    record["run"] = measure(arch, variants, data, s)
    record["measure_seconds"] = time.perf_counter() - t
    return variants


# ------------------------------------------------------------------------------------------ checks
@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    informational: bool = False   # shown, but not one of the task's pass/fail checks

    @property
    def verdict(self) -> str:
        return ("PASS" if self.passed else "FAIL") if not self.informational else ("info: yes" if self.passed else "info: no")


def mcnemar(a: Variant, b: Variant) -> tuple[int, int, float]:
    """Paired comparison on the same test images: (a right & b wrong, a wrong & b right, exact
    two-sided McNemar p-value). A large p means the accuracy difference is within chance."""
    from math import comb

    only_a = int(np.sum(a.correct & ~b.correct))
    only_b = int(np.sum(~a.correct & b.correct))
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return only_a, only_b, p


def _aa_band(dense_aa: Variant, bs: int) -> float:
    return max(abs(dense_aa.latency[bs]["ratio_p50"] - 1.0), NOISE_FLOOR)


def mac_ratio(v: Variant, dense: Variant) -> float:
    return v.stats["macs"] / dense.stats["macs"]


def checks_resnet(vs: dict[str, Variant]) -> list[Check]:
    dense, aa = vs["dense"], vs["dense-aa"]
    peers = [v for n, v in vs.items() if n.startswith("tp-")]
    out: list[Check] = []
    rows = [v for n, v in vs.items() if n.startswith("edgeprune")]
    for v in rows + peers:
        info = v in peers
        mr = mac_ratio(v, dense)
        for bs in BATCHES:
            r = v.latency[bs]["ratio_p50"]
            out.append(Check(f"resnet8 {v.name}: latency ratio b{bs} <= {LAT_VS_MAC_FACTOR} x MAC ratio",
                             r <= LAT_VS_MAC_FACTOR * mr,
                             f"{r:.3f} vs {LAT_VS_MAC_FACTOR} x {mr:.3f} = {LAT_VS_MAC_FACTOR * mr:.3f} "
                             f"(A/A {aa.latency[bs]['ratio_p50']:.3f})", info))
        drop = dense.accuracy - v.accuracy
        out.append(Check(f"resnet8 {v.name}: accuracy drop <= {RESNET_MAX_DROP_PT} pt", drop <= RESNET_MAX_DROP_PT,
                         f"{dense.accuracy:.2f} % -> {v.accuracy:.2f} % ({drop:+.2f} pt)", info))
    for peer in peers:
        for v in rows:
            only_v, only_p, pval = mcnemar(v, peer)
            out.append(Check(f"resnet8 {v.name} vs {peer.name}: accuracy >=", v.accuracy >= peer.accuracy,
                             f"{v.accuracy:.2f} % vs {peer.accuracy:.2f} % ({v.accuracy - peer.accuracy:+.2f} pt; "
                             f"MAC ratio {mac_ratio(v, dense):.3f} vs {mac_ratio(peer, dense):.3f}; "
                             f"only {v.name} right on {only_v} images, only {peer.name} on {only_p}, "
                             f"McNemar p = {pval:.2f})"))
            for bs in BATCHES:
                a, b = v.latency[bs]["p50_ms"], peer.latency[bs]["p50_ms"]
                out.append(Check(f"resnet8 {v.name} vs {peer.name}: latency b{bs} <=", a <= b,
                                 f"p50 {a:.3f} ms vs {b:.3f} ms (ratio to dense {v.latency[bs]['ratio_p50']:.3f} vs "
                                 f"{peer.latency[bs]['ratio_p50']:.3f}; A/A band ±{_aa_band(aa, bs):.1%})"))
    return out


def checks_lenet(vs: dict[str, Variant]) -> list[Check]:
    dense, aa = vs["dense"], vs["dense-aa"]
    out: list[Check] = []
    for v in [vs["edgeprune-global"], vs["torch-prune"]]:
        info = v.name != "edgeprune-global"
        drop = dense.accuracy - v.accuracy
        out.append(Check(f"lenet300 {v.name}: accuracy drop <= {LENET_MAX_DROP_PT} pt", drop <= LENET_MAX_DROP_PT,
                         f"{dense.accuracy:.2f} % -> {v.accuracy:.2f} % ({drop:+.2f} pt)", info))
    for v in [vs["edgeprune-global"], vs["torch-prune"]]:
        for bs in BATCHES:
            r = v.latency[bs]["ratio_p50"]
            band = _aa_band(aa, bs)
            out.append(Check(f"lenet300 {v.name}: latency ratio b{bs} ~ 1 (zeros are still multiplied)",
                             abs(r - 1.0) <= band,
                             f"{r:.3f}; A/A {aa.latency[bs]['ratio_p50']:.3f}, band ±{band:.1%}", True))
        out.append(Check(f"lenet300 {v.name}: xz size < dense raw",
                         v.stats["size_xz_bytes"] < dense.stats["size_bytes"],
                         f"xz {v.stats['size_xz_bytes'] / 1024:.0f} KiB = "
                         f"{v.stats['size_xz_bytes'] / dense.stats['size_bytes']:.3f} x dense raw "
                         f"{dense.stats['size_bytes'] / 1024:.0f} KiB", True))
        nz, alt = v.stats["negative_zeros"], v.stats["size_xz_bytes_if_positive_zeros"]
        out.append(Check(f"lenet300 {v.name}: zeros stored as +0.0 only", nz == 0,
                         f"{nz} of {v.stats['params'] - v.stats['nonzero_params']} zeros are -0.0; with +0.0 "
                         f"the xz file would be {alt / 1024:.0f} KiB ({alt / v.stats['size_xz_bytes'] - 1:+.1%})", True))
    return out


# ----------------------------------------------------------------------------------------- output
COLUMNS = ["model", "variant", "MACs (M)", "MAC ratio", "widths", "test acc %", "drop pt",
           "b1 p50 ms", "b1 ratio", "b64 p50 ms", "b64 ratio", "ONNX", "ONNX xz", "xz / dense raw"]


def table_rows(variants: list[Variant]) -> list[list[str]]:
    out = []
    for v in variants:
        dense = next(d for d in variants if d.arch == v.arch and d.name == "dense")
        aa = v.name == "dense-aa"
        dash = "—"
        cells = [v.arch, v.label]
        if aa:
            cells += [dash, dash, dash, dash, dash]
        else:
            cells += [f"{v.stats['macs'] / 1e6:.2f}", f"{mac_ratio(v, dense):.3f}", "/".join(map(str, v.widths or [])),
                      f"{v.accuracy:.2f}", "" if v is dense else f"{dense.accuracy - v.accuracy:+.2f}"]
        for bs in BATCHES:
            lat = v.latency[bs]
            cells += [f"{lat['p50_ms']:.3f}", f"{lat['ratio_p50']:.3f}"]
        if aa:
            cells += [dash, dash, dash]
        else:
            cells += [_kib(v.stats["size_bytes"]), _kib(v.stats["size_xz_bytes"]),
                      f"{v.stats['size_xz_bytes'] / dense.stats['size_bytes']:.3f}"]
        out.append(cells)
    return out


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def markdown(rows: list[list[str]], checks: list[Check], summary: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", f"Fashion-MNIST, accuracy on {summary['test_images']} test images through ONNX Runtime "
                  f"{ort.__version__}; latency p50 on target `{TARGET}` (1 thread), all variants of one model "
                  f"timed in one interleaved loop; ratios are to the dense row; the A/A row is the dense engine "
                  f"timed a second time (noise band). MACs: Conv/Gemm multiply-adds per image in the ONNX graph. "
                  f"Widths: output channels (resnet8: every conv incl. shortcuts) / neurons (lenet300).",
              *checks_table(checks), "", wall_line(summary)]
    return "\n".join(lines) + "\n"


def checks_table(checks: list[Check]) -> list[str]:
    """The Markdown table of a benchmark's checks, after a blank line."""
    return ["", "| check | verdict | numbers |", "|---|---|---|"] + [f"| {c.name} | {c.verdict} | {c.detail} |" for c in checks]


def wall_line(summary: dict, load_average: bool = False) -> str:
    """The closing line of a benchmark's Markdown: wall time, CPU, cores (and load average)."""
    load = f", load average {summary['load_average']}" if load_average else ""
    quick = " — QUICK smoke run, numbers not meaningful" if summary["quick"] else ""
    return (f"Total wall time {summary['wall_seconds'] / 60:.1f} min on {summary['cpu']} "
            f"({summary['cpu_count']} cores){load}{quick}.")


def print_results(rows: list[list[str]], checks: list[Check], summary: dict) -> None:
    title = "edgeprune end-to-end benchmark — Fashion-MNIST, ONNX Runtime host-cpu (1 thread)"
    if summary["quick"]:
        title += " — QUICK (numbers not meaningful)"
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i < 2 or c == "widths" else "right",
                     overflow="fold", max_width=28 if c == "widths" else None)
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            t.add_section()
        prev = r[0]
        t.add_row(*r)
    console.print(t)
    for c in checks:
        style = "green" if c.passed else ("red" if not c.informational else "yellow")
        console.print(f"[{style}]{c.verdict:>9}[/{style}]  {c.name}: {c.detail}", highlight=False)
    console.print(f"total wall time {summary['wall_seconds']:.0f} s ({summary['wall_seconds'] / 60:.1f} min)")


def variant_json(v: Variant) -> dict:
    d = asdict(v)
    d["onnx"] = str(v.onnx.relative_to(ROOT)) if v.onnx else None
    d["latency"] = {str(k): val for k, val in v.latency.items()}
    d.pop("correct", None)
    return d


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where e2e.json / e2e.md go")
    p.add_argument("--quick", action="store_true", help="tiny subsets and < 1 epoch: a smoke run in a few minutes")
    p.add_argument("--only", choices=["resnet8", "lenet300"], help="run one architecture only")
    p.add_argument("--scopes", help="edgeprune scopes for resnet8, comma-separated (default layer,global)")
    p.add_argument("--resnet-epochs", type=float)
    p.add_argument("--lenet-epochs", type=float)
    p.add_argument("--finetune-epochs", type=float)
    p.add_argument("--round-to", type=int, help="channel multiple (default: host-cpu's build.round_to, this CPU's SIMD width)")
    p.add_argument("--iterations", type=int, help="minimum timed rounds per batch size (default 200)")
    p.add_argument("--min-seconds", type=float, help="minimum timing per batch size (default 20 s)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    args = p.parse_args(argv)
    s = Settings.for_args(args)
    torch.manual_seed(s.seed)
    np.random.seed(s.seed)

    log(f"settings: {json.dumps(asdict(s))}")
    data = Data(s)
    log(f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images")
    record: dict[str, Any] = {"schema": "edgeprune.bench-e2e/1", "settings": asdict(s), "models": {}}
    all_variants: list[Variant] = []
    checks: list[Check] = []
    if args.only in (None, "resnet8"):
        rec: dict[str, Any] = {}
        t = time.perf_counter()
        vs = run_resnet8(s, data, rec)
        rec["seconds"] = time.perf_counter() - t
        record["models"]["resnet8"] = {**rec, "variants": [variant_json(v) for v in vs]}
        all_variants += vs
        checks += checks_resnet({v.name: v for v in vs})
    if args.only in (None, "lenet300"):
        rec = {}
        t = time.perf_counter()
        vs = run_lenet300(s, data, rec)
        rec["seconds"] = time.perf_counter() - t
        record["models"]["lenet300"] = {**rec, "variants": [variant_json(v) for v in vs]}
        all_variants += vs
        checks += checks_lenet({v.name: v for v in vs})

    from edgeprune.backends.onnxruntime import cpu_name

    wall = time.perf_counter() - T0
    summary = {"wall_seconds": wall, "quick": s.quick, "test_images": len(data.test), "cpu": cpu_name(),
               "cpu_count": os.cpu_count()}
    rows = table_rows(all_variants)
    failed = [c for c in checks if not c.passed and not c.informational]
    record.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": wall,
        "checks": [asdict(c) | {"verdict": c.verdict} for c in checks],
        "all_checks_pass": not failed,
        "table": {"columns": COLUMNS, "rows": rows},
    })
    out = Path(args.out)
    stem = "e2e-quick" if s.quick else "e2e"
    write_results(out, stem, record, markdown(rows, checks, summary))
    print_results(rows, checks, summary)
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    if failed:
        log(f"{len(failed)} check(s) failed: " + "; ".join(c.name for c in failed))
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
