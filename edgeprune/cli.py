"""The `edgeprune` command line: parse, call edgeprune.api, render with rich. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, api
from .errors import EdgepruneError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune a trained PyTorch model, export it, build an engine for an edge device, "
                       "and measure it side by side with the dense model.")
out = Console()

DataOpt = typer.Option(None, "--data", help="Data set name (fashion-mnist, mnist, digits), an .npz path, an image "
                       "folder (train/ and val/ or test/, one folder per class) or package.module:function returning "
                       "train, val, test Datasets (naming it here allows running it).")
NormalizeOpt = typer.Option(None, "--normalize", help="Image folder: per-channel normalisation after scaling to "
                            "[0, 1]: a preset (imagenet) or MEAN,../STD,.. (default: none).")
MetricOpt = typer.Option(None, "--metric", help="package.module:function(outputs, targets) -> float scoring a split, "
                         "higher is better (default: top-1 accuracy); naming it here allows running it.")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder with the IDX files (default /usr/share/datasets/NAME).")
LimitOpt = typer.Option(None, "--limit", help="Use a seeded subset of this many training samples.")
TestLimitOpt = typer.Option(None, "--test-limit", help="Use a seeded subset of this many test samples.")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing output.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
PickleOpt = typer.Option(False, "--trust-pickle", help="Allow loading a full pickle (runs code from the file).")
TrustCodeOpt = typer.Option(False, "--trust-code", help="Allow a checkpoint to import and call the architecture "
                            "factory it names, whatever it is (only for files from a source you trust).")
ArchOpt = typer.Option(None, "--arch", help="The package.module:factory you expect the checkpoint to be built from: "
                       "allows importing and calling that one (zoo: names need no consent).")
ShapeOpt = typer.Option(None, "--input-shape", help="C,H,W for TorchScript or pickled models and bare state_dicts, "
                        "e.g. 1,28,28 (and the size an image folder's images are resized and cropped to).")
ArchKwargsOpt = typer.Option(None, "--arch-kwargs", help="JSON object of keyword arguments for the --arch factory, "
                             "e.g. '{\"num_classes\": 10}' (in_channels, image_size, num_classes are passed "
                             "from the data where the factory takes them).")
DeviceOpt = typer.Option("auto", "--device", help="Where training runs: auto (CUDA when PyTorch sees a GPU), cpu or "
                         "cuda (fp16 mixed precision). Under torchrun each rank takes the GPU of its LOCAL_RANK.")
TargetOpt = typer.Option("host-cpu", "--target", help="Target name (see `edgeprune targets`) or a .toml path.")
TargetsDirOpt = typer.Option(None, "--targets-dir", help="Folder of your own target .toml files, searched before "
                             "EDGEPRUNE_TARGETS and the shipped targets (a file there wins over a shipped one).")


def _version(value: bool) -> None:
    if value:
        print(f"edgeprune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version and exit.")) -> None:
    pass


def _shape(value: Optional[str]) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"--input-shape must be comma-separated integers like 1,28,28, got '{value}'") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"--input-shape must be positive integers, got '{value}'")
    return dims


def _arch_kwargs(value: Optional[str]) -> Optional[dict]:
    if value is None:
        return None
    try:
        kwargs = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"--arch-kwargs must be a JSON object like '{{\"num_classes\": 10}}': {e}") from None
    if not isinstance(kwargs, dict):
        raise InputError(f"--arch-kwargs must be a JSON object (keyword arguments), got {type(kwargs).__name__}")
    return kwargs


def _methods_help() -> str:
    """Every registered method with the schedule and budget it runs with by default (from the registry)."""
    from .pruning.base import available_methods, method_class

    rows = [f"{n} ({method_class(n).default_schedule}, {method_class(n).default_finetune_epochs:g} epochs)"
            for n in available_methods()]
    return "Pruning method, with its default schedule and budget: " + ", ".join(rows) + "."


def _consent(trust_pickle: bool, trust_code: bool = False, arch: Optional[str] = None) -> api.Consent:
    return api.Consent(pickle=trust_pickle, code=trust_code, arch=arch)


def _data(data: Optional[str], data_dir: Optional[str], limit: Optional[int] = None,
          test_limit: Optional[int] = None, default: Optional[str] = api.DEFAULT_DATA,
          input_shape: Optional[str] = None, normalize: Optional[str] = None,
          metric: Optional[str] = None) -> Optional[api.DataOptions]:
    """``default``: the data set when none is named (None: the command finds it, e.g. in the models' metadata)."""
    if all(v is None for v in (data, data_dir, limit, test_limit, input_shape, normalize, metric)):
        return None
    return api.DataOptions(data or default, data_dir, limit, test_limit, _shape(input_shape), normalize, metric)


def _emit_json(obj) -> None:
    if is_dataclass(obj):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    print(json.dumps(obj, indent=2, default=str), file=out.file)   # rank 0 only under torchrun


def _sparsity(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise InputError(f"--sparsity must be a number in [0, 1) or auto, got '{value}'") from None
    if not 0.0 <= s < 1.0:
        raise InputError(f"--sparsity must be in [0, 1), got {s}")
    return s


def _is_auto(value: str) -> bool:
    """`--sparsity auto`: take the predicted pruning limit (method lomp)."""
    return value.strip().lower() == "auto"


def _method_options(**given) -> dict:
    """The method-specific options the user set; each method says which it takes (PruneSpec.options)."""
    return {k: v for k, v in given.items() if v is not None}


@app.command()
def train(
    arch: str = typer.Option("zoo:lenet300", "--arch", help="zoo:NAME or package.module:factory."),
    arch_kwargs: Optional[str] = ArchKwargsOpt,
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write."),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, limit: Optional[int] = LimitOpt,
    epochs: float = typer.Option(5.0, "--epochs"), lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(128, "--batch-size"),
    l1: float = typer.Option(0.0, "--l1", help="L1 penalty on every weight and bias (LOMP training)."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam, or sgd (momentum 0.9; Zhang et al.'s "
                                  "LOMP recipe with --lr 0.01 --lr-schedule constant)."),
    lr_schedule: str = typer.Option("cosine", "--lr-schedule", help="cosine (decay to zero) or constant."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Image folder: C,H,W the images are "
                                              "resized and centre-cropped to (default: the first image's own)."),
    normalize: Optional[str] = NormalizeOpt, metric: Optional[str] = MetricOpt, device: str = DeviceOpt,
    seed: int = typer.Option(0, "--seed"), force: bool = ForceOpt, as_json: bool = JsonOpt,
) -> None:
    """Train a reference model from scratch.

    Example: edgeprune train --arch zoo:lenet300 --data fashion-mnist --epochs 5 -o model.pt
    """
    r = api.train(arch, output, data=_data(data, data_dir, limit, input_shape=input_shape, normalize=normalize,
                                           metric=metric), epochs=epochs, lr=lr, batch_size=batch_size,
                  l1=l1, seed=seed, optimizer=optimizer, lr_schedule=lr_schedule, force=force,
                  progress=not as_json, arch_kwargs=_arch_kwargs(arch_kwargs), device=device)
    if as_json:
        return _emit_json(r)
    out.print(f"trained [bold]{r.arch}[/] on {r.data} for {r.epochs:g} epochs in {r.seconds:.1f} s: "
              f"val {r.val_accuracy:.2f} %, test {r.test_accuracy:.2f} %, {r.params:,} params -> {r.path}")


@app.command()
def compress(
    model: Path = typer.Argument(..., help="Model file (edgeprune checkpoint, TorchScript, .pt2, or a state_dict "
                                 "with --arch and --input-shape)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Pruned checkpoint to write (default: "
                                          "<stem>.<method>.pt beside the model; never overwritten without --force)."),
    method: str = typer.Option("magnitude", "--method", help=_methods_help()),
    sparsity: str = typer.Option("0.5", "--sparsity", help="Fraction of prunable weights removed, in [0, 1), "
                                 "or auto (lomp: the predicted pruning limit, see `edgeprune limit`)."),
    granularity: str = typer.Option("weight", "--granularity", help="weight (unstructured), channel (physical "
                                    "removal) or 2:4 (2 of every 4 along the reduction axis; sparsity 0.5)."),
    scope: Optional[str] = typer.Option(None, "--scope", help="global or layer (default: the method's; layer for "
                                        "spectral, global for the others); local (one layer per event) with "
                                        "--schedule gated."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="oneshot, iterative (cubic), or gated "
                                           "(accuracy-gated cycles with dead-neuron removal; --finetune-epochs is then "
                                           "its whole training budget). Default: the method's own (see --method)."),
    steps: int = typer.Option(5, "--steps", help="Prune steps for --schedule iterative; pruning cycles for gated."),
    budget: str = typer.Option("params", "--budget", help="Channel pruning: --sparsity counts params or macs."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Channel pruning: keep widths multiples of "
                                           "this (default: the --target's build.round_to, else 8)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target name or .toml path whose channel "
                                         "multiple (build.round_to) channel pruning keeps."),
    targets_dir: Optional[Path] = TargetsDirOpt,
    finetune_epochs: Optional[float] = typer.Option(None, "--finetune-epochs", help="Fine-tune budget (epochs, in "
                                                    "all). Default: the method's own (see --method)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Fine-tune learning rate (Adam, cosine decay); "
                                       "default: the rate of lowest validation loss after a short probe of 4 rates "
                                       "around 2e-3 (weight) or 5e-4 (channel); 8e-3 for --schedule gated."),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, limit: Optional[int] = LimitOpt,
    score: Optional[str] = typer.Option(None, "--score", help="activation: neuron or neuron_wts."),
    count: Optional[str] = typer.Option(None, "--count", help="activation: active (the paper) or inactive (the authors' later code)."),
    attenuation: Optional[float] = typer.Option(None, "--attenuation", help="spectral: attenuation a in [0, 1]."),
    width: Optional[float] = typer.Option(None, "--width", help="spectral: Gaussian width around the spectral peak."),
    target_acc: float = typer.Option(0.98, "--target-acc", help="gated: training accuracy of the last gate and the "
                                     "retraining stop (the paper's 0.98)."),
    seed: int = typer.Option(0, "--seed"), trust_pickle: bool = PickleOpt, trust_code: bool = TrustCodeOpt,
    arch: Optional[str] = ArchOpt, arch_kwargs: Optional[str] = ArchKwargsOpt, input_shape: Optional[str] = ShapeOpt,
    normalize: Optional[str] = NormalizeOpt, metric: Optional[str] = MetricOpt, device: str = DeviceOpt,
    force: bool = ForceOpt, as_json: bool = JsonOpt,
) -> None:
    """Prune a model, fine-tune it and say what it cost in accuracy.

    Example: edgeprune compress model.pt --method activation   (writes model.activation.pt)
    """
    from .pruning.base import PruneSpec

    auto = _is_auto(sparsity)
    if round_to is None and target is None:
        round_to = PruneSpec.round_to
    spec = PruneSpec(method=method, sparsity=0.0 if auto else _sparsity(sparsity), granularity=granularity, scope=scope,
                     schedule=schedule, steps=steps, budget=budget, round_to=round_to, seed=seed,
                     options=_method_options(score=score, count=count, attenuation=attenuation, width=width),
                     target_accuracy=target_acc)
    folder = data is not None and Path(data).is_dir()   # an image folder is cropped to the model's input shape
    r = api.compress(model, spec, output, data=_data(data, data_dir, limit, input_shape=input_shape if folder else None,
                                                     normalize=normalize, metric=metric),
                     finetune_epochs=finetune_epochs,
                     lr=lr, consent=_consent(trust_pickle, trust_code, arch), input_shape=_shape(input_shape),
                     arch_kwargs=_arch_kwargs(arch_kwargs), force=force, progress=not as_json,
                     auto_limit=_auto_limit() if auto else None, target=target, targets_dir=targets_dir,
                     device=device)
    if as_json:
        return _emit_json(r)
    t = Table(title=f"{r.method} {r.granularity} pruning, {r.scope} scope, {r.schedule}")
    for col in ("layer", "type", "shape", "weights", "kept", "pruned"):
        t.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for L in r.layers:
        shape = "x".join(map(str, L["shape"]))
        if L["shape"] != L["shape_before"]:
            shape = "x".join(map(str, L["shape_before"])) + " -> " + shape
        t.add_row(L["name"], L["kind"], shape, f"{L['total']:,}", f"{L['nonzero']:,}", f"{L['sparsity']:.1%}")
    out.print(t)
    s = Table(show_header=True, title="what it cost")
    for col in ("", "dense", "pruned", "ratio"):
        s.add_column(col, justify="right")
    s.add_row("val accuracy %", f"{r.dense_val_accuracy:.2f}", f"{r.finetuned_val_accuracy:.2f}",
              f"{-r.accuracy_drop_pt:+.2f} pt")
    s.add_row("params (nonzero)", f"{r.params_before:,}", f"{r.params_after:,}",
              f"{r.params_after / max(r.params_before, 1):.3f}")
    s.add_row("MACs", f"{r.macs_before:,}", f"{r.macs_after:,}", f"{r.macs_after / max(r.macs_before, 1):.3f}")
    out.print(s)
    if "predicted_limit" in r.details:
        out.print(_limit_line(r.details["predicted_limit"]))
    out.print(f"sparsity {r.sparsity:.2%} of prunable weights (target {r.target_sparsity:.2%}); "
              f"before fine-tuning val {r.pruned_val_accuracy:.2f} %; fine-tuned {r.finetune_epochs:g} epochs at lr {r.finetune_lr:g} ({r.finetune_lr_how}); "
              f"{r.total_seconds:.1f} s")
    for at in r.resumed:
        out.print(f"restarted: fine-tune {at['call']} resumed after epoch {at['epoch']} (step {at['step']})")
    out.print(f"wrote {r.path}", highlight=False, soft_wrap=True)
    if r.details.get("summary"):
        out.print(r.details["summary"])   # the method's own one-line report; --json has all of r.details


def _auto_limit():
    from .analysis.limit import LimitConfig

    return LimitConfig()


def _limit_line(e: dict) -> str:
    """The prediction in both conventions, named (METHODS.md §0: "pruning ratio" is ambiguous)."""
    (s_lo, s_hi), (k_lo, k_hi) = e["sparsity_band"], e["keep_band"]
    return (f"predicted limit: sparsity s* = {e['sparsity']:.2%} removed (band {s_lo:.2%} .. {s_hi:.2%}), "
            f"keep ratio κ* = {e['keep']:.2%} kept (band {k_lo:.2%} .. {k_hi:.2%})")


@app.command()
def limit(
    model: Path = typer.Argument(..., help="Trained model (edgeprune checkpoint, TorchScript, .pt2)."),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, limit: Optional[int] = LimitOpt,
    subset: int = typer.Option(10_000, "--subset", help="Fixed training samples for ε and the Hessian-vector products."),
    steps: int = typer.Option(128, "--steps", help="Lanczos steps per probe (the authors: 128)."),
    probes: int = typer.Option(1, "--probes", help="SLQ probe vectors (the authors: 1)."),
    epsilon: str = typer.Option("std", "--epsilon", help="std (std of the batch-128 training loss, the authors') "
                                "or a fraction of the loss, e.g. 0.01."),
    eta: float = typer.Option(0.01, "--eta", help="Failure probability of the band (κ* ± sqrt(8 log(4/η)/D))."),
    zero_mass: bool = typer.Option(False, "--zero-mass", help="Add the zero-curvature mass from 100 Hessian rows "
                                   "(the authors, for conv nets)."),
    quadrature: str = typer.Option("nodes", "--quadrature", help="nodes (F on the Ritz nodes) or grid "
                                   "(the authors' 1e5-bin smoothed density)."),
    measure: bool = typer.Option(False, "--measure", help="Also sweep 101 sparsities (one-shot, no fine-tuning) "
                                 "and report the measured limit on the validation split."),
    seed: int = typer.Option(0, "--seed"), trust_pickle: bool = PickleOpt, trust_code: bool = TrustCodeOpt,
    arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict how much one-shot global magnitude pruning can remove, before pruning (Zhang et al., NeurIPS 2024).

    Example: edgeprune limit model.pt --data fashion-mnist --measure
    """
    from .analysis.limit import LimitConfig

    config = LimitConfig(subset=subset, steps=steps, probes=probes, epsilon=epsilon, eta=eta, zero_mass=zero_mass,
                         quadrature=quadrature, seed=seed)
    r = api.limit(model, data=_data(data, data_dir, limit), config=config, measure=measure,
                  consent=_consent(trust_pickle, trust_code, arch), input_shape=_shape(input_shape), progress=not as_json)
    if as_json:
        return _emit_json(r)
    e = r.estimate
    out.print(_limit_line(e.to_dict()))
    out.print(f"  D = {e.prunable:,} prunable weights, Hessian over {e.hessian_dim:,} parameters; "
              f"ε = {e.epsilon:.4g} ({e.epsilon_rule}), L(w*) = {e.loss:.4g}, R(s*) = {e.radius:.4g}, "
              f"λ in [{e.lambda_min:.3g}, {e.lambda_max:.3g}], trace bound s* >= {e.trace_bound:.2%}"
              + (f", zero-curvature mass {e.zero_mass:.0%}" if e.zero_mass is not None else ""))
    out.print(f"  {e.hvps} Hessian-vector products on {e.settings['subset']:,} samples in {e.seconds['total']:.1f} s")
    if r.measured:
        m = r.measured
        out.print(f"measured limit (one-shot, no fine-tuning, {len(m.sparsities)}-point sweep, validation "
                  f"{m.dense_accuracy:.2f} % dense): s = {m.limits['0.1']:.2%} within 0.1 pt, "
                  f"{m.limits['0']:.2%} within 0 pt; predicted - measured = {r.error_pt:+.1f} pt")
    for note in r.notes:
        out.print(f"note: {note}")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model file to export."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    opset: int = typer.Option(17, "--opset"),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt,
    check: bool = typer.Option(True, "--check/--no-check", help="Parity check against PyTorch on real inputs."),
    trust_pickle: bool = PickleOpt, trust_code: bool = TrustCodeOpt,
    arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, force: bool = ForceOpt,
    sparse_weights: bool = typer.Option(False, "--sparse-weights", help="Store zero-rich weights as sparse "
                                        "tensors where smaller (ONNX Runtime; not TensorRT); report sizes."),
    as_json: bool = JsonOpt,
) -> None:
    """Export a model to ONNX, checked against PyTorch on real test inputs.

    Example: edgeprune export pruned.pt -o pruned.onnx
    """
    r = api.export(model, output, opset=opset, data=_data(data, data_dir), check=check,
                   consent=_consent(trust_pickle, trust_code, arch), input_shape=_shape(input_shape), force=force,
                   sparse_weights=sparse_weights)
    if as_json:
        return _emit_json(r)
    p = r.parity
    parity = (f"parity on {p.samples} test inputs: max |diff| {p.max_abs_diff:.2e}, top-1 agreement "
              f"{p.top1_agreement:.2%}" if p else "parity not checked")
    out.print(f"wrote {r.path} (opset {r.opset}, {r.size_bytes:,} bytes); {parity}")
    if r.sizes:
        out.print(_sizes_line(r.sizes))


def _sizes_line(sz) -> str:
    forms = ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in sz.forms().items())
    return (f"sizes in bytes: {forms}; {sz.sparse_tensors} tensors stored sparse; smallest: "
            f"{sz.smallest.replace('_', ' ')} ({sz.ratio(sz.smallest):.3f}x the dense file)")


@app.command()
def analyze(
    model: Path = typer.Argument(..., help="Pruned checkpoint."),
    baseline: Path = typer.Option(..., "--baseline", help="The dense model it was pruned from."),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, test_limit: Optional[int] = TestLimitOpt,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write analysis.json and singular_values.png here."),
    trust_pickle: bool = PickleOpt, trust_code: bool = TrustCodeOpt,
    arch: Optional[str] = ArchOpt, force: bool = ForceOpt, as_json: bool = JsonOpt,
) -> None:
    """Low-rank view: per hidden layer rank and singular values before and after pruning, and the PCA
    rank-reduction baseline at equal ranks.

    Example: edgeprune analyze pruned.pt --baseline model.pt -o runs/analysis
    """
    r = api.analyze(model, baseline, data=_data(data, data_dir, None, test_limit), out_dir=output,
                    consent=_consent(trust_pickle, trust_code, arch), force=force)
    if as_json:
        return _emit_json(r)
    t = Table(title=f"{r.method} ({r.arch}): rank per hidden layer, dense -> pruned")
    for col in ("layer", "shape", "zeros", "rank", "PCA rank", "top σ dense", "top σ pruned", "top-r energy"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for L in r.layers:
        shape = f"{L.kind} " + "x".join(map(str, L.dense_shape))
        if L.pruned_shape != L.dense_shape:
            shape += " -> " + "x".join(map(str, L.pruned_shape))
        t.add_row(L.name, shape, f"{L.sparsity:.1%}", f"{L.dense_rank} -> {L.pruned_rank}", str(L.pca_rank),
                  _top(L.dense_singular_values), _top(L.pruned_singular_values), f"{L.dense_energy_top_r:.1%}")
    out.print(t)
    s = Table(title=f"PCA rank reduction at the pruned ranks (no retraining), {r.test_samples} test images")
    for col in ("model", "test accuracy %"):
        s.add_column(col, justify="left" if col == "model" else "right")
    s.add_row("dense", f"{r.dense_accuracy:.2f}")
    s.add_row(f"pruned ({r.method})", f"{r.pruned_accuracy:.2f}")
    s.add_row("dense, PCA-reduced to the pruned ranks", f"{r.pca_accuracy:.2f}")
    out.print(s)
    out.print(r.rank_rule)
    if output:
        out.print(f"wrote {output / 'analysis.json'}, {output / 'singular_values.png'}")


def _top(values: list[float], n: int = 3) -> str:
    return " ".join(f"{v:.2f}" for v in values[:n])


def _show_report(report, out_dir: Optional[Path], as_json: bool) -> None:
    from .report.render import console_table

    if as_json:
        return _emit_json(report.to_dict())
    out.print(console_table(report))
    for note in report.notes:
        out.print(f"- {note}")
    if out_dir:
        out.print(f"report: {out_dir / 'report.json'}, {out_dir / 'report.md'}, {out_dir / 'latency.png'}")


@app.command()
def deploy(
    model: Path = typer.Argument(..., help="Pruned checkpoint."),
    target: str = TargetOpt, targets_dir: Optional[Path] = TargetsDirOpt,
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Dense model (default: the pruned model's source)."),
    output: Path = typer.Option(Path("runs/latest"), "-o", "--output", help="Run directory."),
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, test_limit: Optional[int] = TestLimitOpt,
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the highest the target reads, "
                                        "at most 17)."),
    trust_pickle: bool = PickleOpt, trust_code: bool = TrustCodeOpt,
    arch: Optional[str] = ArchOpt, force: bool = ForceOpt, metric: Optional[str] = MetricOpt,
    as_json: bool = JsonOpt,
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the target's)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="INT8 calibration images (.npz with x, y; "
                                              "calibration/fmnist.npz is shipped; `edgeprune calibrate` writes "
                                              "one). Default: 512 class-balanced training images of the run's data."),
    host: Optional[str] = typer.Option(None, "--host", help="Build and measure on this board over SSH (anything "
                                       "ssh takes: an alias, user@host). Default: the target's [device] ssh, else here."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (default: ~/.ssh/config)."),
    device_python: Optional[str] = typer.Option(None, "--device-python", help="The board's python (default: the "
                                                "target's [device] python, else python3)."),
) -> None:
    """Export, build and profile dense and pruned models on a target; write the run directory.

    Example: edgeprune deploy pruned.pt --target host-cpu --baseline model.pt -o runs/demo
    """
    # without --data, the data the checkpoint records (--test-limit and --metric apply to it)
    report = api.deploy(model, target, output, baseline_path=baseline,
                        data=_data(data, data_dir, None, test_limit, default=None, metric=metric),
                        opset=opset, consent=_consent(trust_pickle, trust_code, arch), force=force,
                        progress=not as_json, precision=precision, calibration=calibration, targets_dir=targets_dir,
                        host=host, ssh_config=ssh_config, device_python=device_python)
    from .backends.trt_deploy import BoardRun

    if isinstance(report, BoardRun):   # nothing measurable here: plans and scripts for the board
        return _show_board_run(report, as_json)
    _show_report(report, output, as_json)


def _show_board_run(r, as_json: bool) -> None:
    if as_json:
        return _emit_json(r)
    out.print(f"{r.target}: TensorRT {r.tensorrt} (API generation {r.generation}), {r.precision}; run directory {r.run_dir}",
              soft_wrap=True)
    for name, cmd in r.commands.items():
        out.print(f"  {name}: {cmd}", soft_wrap=True)
    for note in r.notes:
        out.print(f"- {note}", soft_wrap=True)
    out.print(f"files: {', '.join(r.files)}", soft_wrap=True)


@app.command()
def collect(
    run_dir: Path = typer.Argument(..., help="Run directory whose scripts ran on the board (trtexec outputs), or a "
                                   "job folder holding the device side's result.json."),
    as_json: bool = JsonOpt,
) -> None:
    """Turn what a board wrote into the run's report (report.json, report.md, plots), as a live run writes it.

    Example: edgeprune collect runs/orin
    """
    _show_report(api.collect(run_dir), run_dir, as_json)


@app.command()
def probe(
    host: str = typer.Option(..., "--host", help="The board (anything ssh takes: an alias, user@host)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (default: ~/.ssh/config)."),
    device_python: str = typer.Option("python3", "--device-python", help="The board's python."),
    targets_dir: Optional[Path] = TargetsDirOpt, as_json: bool = JsonOpt,
) -> None:
    """Print a board's software stack and the target files that match it.

    Example: edgeprune probe --host orin
    """
    from .run.remote import Board, matching_targets, probe_board
    from .targets import list_targets

    found = probe_board(Board(host, ssh_config, device_python))
    found["targets"] = matching_targets(found, list_targets(targets_dir))
    if as_json:
        return _emit_json(found)
    ort = found.get("onnxruntime") or {}
    for key, value in (("host", host), ("hostname", found["hostname"]), ("machine", found["machine"]),
                       ("python", found["python"]), ("numpy", found["numpy"]),
                       ("onnxruntime", ort.get("version")), ("providers", ", ".join(ort.get("providers", [])) or None),
                       ("tensorrt", found["tensorrt"]), ("l4t", found["l4t"]), ("model", found.get("model")),
                       ("power mode", found["power_mode"]),
                       ("jetson_clocks", found["jetson_clocks"]), ("cpu governor", found["cpu_governor"]),
                       ("matching targets", ", ".join(found["targets"]) or "none")):
        out.print(f"{key}: {'-' if value is None else value}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def profile(
    model: Path = typer.Argument(..., help="Pruned ONNX model."),
    baseline: Path = typer.Option(..., "--baseline", help="Dense ONNX model."),
    target: str = TargetOpt, targets_dir: Optional[Path] = TargetsDirOpt,
    data: Optional[str] = DataOpt, data_dir: Optional[str] = DataDirOpt, test_limit: Optional[int] = TestLimitOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report to this file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write report.json/.md/.png here."),
    force: bool = ForceOpt,
) -> None:
    """Measure latency, memory, size and accuracy of two ONNX models side by side.

    Example: edgeprune profile --target host-cpu --baseline model.onnx pruned.onnx --data fashion-mnist --json out.json
    """
    from .fileio import atomic_write

    if json_out is not None and json_out.exists() and not force:
        raise InputError(f"output {json_out} exists (use --force to overwrite)")
    report = api.profile(baseline, model, target, data=_data(data, data_dir, None, test_limit, None), out_dir=output,
                         force=force, targets_dir=targets_dir)
    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=2).encode()
        atomic_write(json_out, text, force=True)
    _show_report(report, output, False)
    if json_out is not None:
        out.print(f"JSON report: {json_out}")


@app.command()
def calibrate(
    data: str = typer.Option(..., "--data", help="The data to sample (as --data anywhere: name, .npz, image folder, "
                             "package.module:function)."),
    n: int = typer.Option(512, "-n", help="Images to sample, balanced over the classes."),
    output: Path = typer.Option(..., "-o", "--output", help=".npz to write (x, y)."),
    data_dir: Optional[str] = DataDirOpt,
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Image folder: C,H,W (as for train)."),
    normalize: Optional[str] = NormalizeOpt, force: bool = ForceOpt, as_json: bool = JsonOpt,
) -> None:
    """Write an INT8 calibration set from the training split of --data, to keep and pass as --calibration.

    Example: edgeprune calibrate --data ~/data/parts -n 512 -o cal.npz
    """
    r = api.calibrate(_data(data, data_dir, input_shape=input_shape, normalize=normalize), output, n=n, force=force)
    if as_json:
        return _emit_json(r)
    balance = f"balanced over {r.classes} classes" if r.classes else "a seeded random sample (labels unknown)"
    out.print(f"wrote {r.path}: {r.samples} images of {r.data} ({'x'.join(map(str, r.input_shape))}, {r.dtype}), "
              f"{balance}")


@app.command()
def targets(targets_dir: Optional[Path] = TargetsDirOpt, as_json: bool = JsonOpt) -> None:
    """List the targets (shipped, EDGEPRUNE_TARGETS, --targets-dir) with their backend, software stack,
    build policy and status.

    Example: edgeprune targets
    """
    from .backends.base import target_status
    from .targets import list_targets, stack_summary

    rows = [(t, target_status(t)) for t in list_targets(targets_dir)]
    if as_json:
        return _emit_json([{"name": t.name, "path": str(t.path), "backend": t.backend, "description": t.description,
                            "status": s,
                            "stack_summary": stack_summary(t), "precision": t.build.precision,
                            "sparsity": t.build.sparsity, "dla_core": t.build.dla_core,
                            "trt_generation": t.trt_generation, "ssh": t.ssh, "stack": t.stack,
                            "hardware": t.hardware, "build": t.build.to_dict(), "run": t.run.to_dict()}
                           for t, s in rows])
    table = Table(title="targets")
    for col in ("name", "backend", "stack", "precision", "sparsity", "DLA", "round_to", "status"):
        table.add_column(col)
    for t, s in rows:
        dla = t.hardware.get("dla_cores", 0)
        dla_text = "-" if not dla else (f"{dla} (GPU used)" if t.build.dla_core < 0 else f"core {t.build.dla_core}")
        table.add_row(t.name, t.backend, stack_summary(t), t.build.precision, t.build.sparsity, dla_text,
                      str(t.build.round_to), s)
    out.print(table)


@app.command()
def validate(
    model: Path = typer.Argument(..., help="ONNX model to check."),
    target: str = TargetOpt, targets_dir: Optional[Path] = TargetsDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check an ONNX model against a target without the device: ONNX checker and shape inference,
    opset, the TensorRT release's operator list, DLA limits, sparse initializers. One line per
    problem, naming the layer and the fix; exit code 0 when nothing stops a build, 1 otherwise.

    Example: edgeprune validate pruned.onnx --target jetson-orin-nano
    """
    from .backends import get_backend
    from .targets import load_target
    from .validation import Problem, errors, validate_onnx

    tgt = load_target(target, targets_dir)
    # the model's problems, then the target's build policy: the same checks deploy runs before exporting
    problems = validate_onnx(model, tgt) + [Problem("target", p) for p in get_backend(tgt.backend).target_problems(tgt)]
    failed = bool(errors(problems))
    if as_json:
        _emit_json({"model": str(model), "target": tgt.name, "ok": not failed, "errors": len(errors(problems)),
                    "notes": len(problems) - len(errors(problems)),
                    "problems": [p.to_dict() for p in problems]})
    else:
        for p in problems:
            out.print(str(p), markup=False, highlight=False, soft_wrap=True)
        n_err, n_note = len(errors(problems)), len(problems) - len(errors(problems))
        out.print(f"{model.name} on {tgt.name}: {'problems found' if failed else 'ok'} "
                  f"({n_err} error{'s' * (n_err != 1)}, {n_note} note{'s' * (n_note != 1)})",
                  markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("check-sparsity")
def check_sparsity(
    model: Path = typer.Argument(..., help="ONNX file or model file (edgeprune checkpoint, TorchScript, .pt2)."),
    trust_code: bool = TrustCodeOpt, arch: Optional[str] = ArchOpt, as_json: bool = JsonOpt,
) -> None:
    """Check every Conv/Linear (Gemm/MatMul) layer for the 2:4 pattern and the widths sparse kernels need.

    Example: edgeprune check-sparsity pruned.onnx
    """
    from .pruning.semistructured import MIN_WIDTH, check_2to4

    checks = check_2to4(model, _consent(False, trust_code, arch))
    if as_json:
        return _emit_json([c.to_dict() for c in checks])
    t = Table(title=f"2:4 check of {model.name}")
    for col in ("layer", "type", "weight", "2:4", f"wide (>= {MIN_WIDTH})", "x8", "note"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, c.kind, "x".join(map(str, c.shape)), "yes" if c.satisfies else "no",
                  "yes" if c.wide else "no", "yes" if c.aligned else "no", c.note)
    out.print(t)
    n_ok = sum(c.satisfies for c in checks)
    out.print(f"{n_ok} of {len(checks)} layers satisfy 2:4; {sum(c.likely_faster for c in checks)} are also wide and "
              f"aligned enough for sparse tensor-core kernels to be likely to beat dense ones")


@app.command("explain")
def explain_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory written by deploy (report.json, dense.onnx, pruned.onnx)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target name or .toml (default: the report's)."),
    targets_dir: Optional[Path] = TargetsDirOpt, as_json: bool = JsonOpt,
) -> None:
    """Say what the pruned model got and why it is (not) faster on the target.

    Example: edgeprune explain runs/demo
    """
    from .explain import explain_run

    ex = explain_run(run_dir, target, targets_dir)
    if as_json:
        return _emit_json(ex.to_dict())
    out.print(f"[bold]{ex.run_dir}[/]: pruned vs dense on {ex.target} ({ex.backend})")
    for f in ex.findings:
        out.print(f"- {f.line()}", highlight=False)


@app.command("report")
def report_cmd(
    history: Path = typer.Argument(..., help="The benchmark history (SQLite) that `edgeprune bench --history` writes."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Folder for index.html, report.md and plots/ (an earlier "
                                 "report there is replaced)."),
    force: bool = typer.Option(False, "--force", help="Replace a folder that is not an earlier report."),
) -> None:
    """Render the benchmark history as a static page: the latest run's verdict, every cell's figures, plots.

    Example: edgeprune report bench.sqlite -o report/
    """
    from .bench.htmlreport import write_report

    s = write_report(history, out_dir, force=force)
    out.print(f"{out_dir / 'index.html'}: run {s.run['id']}, {s.cells} of {s.cells_total} cells measured, "
              f"{len(s.regressions)} regressions, {len(s.suspects)} suspects, {len(s.drift)} boards drifting, "
              f"{len(s.new_segments)} new stack segments", highlight=False, soft_wrap=True)


@app.command()
def bench(
    config: Path = typer.Argument(..., help="Bench config (.toml): models, methods, sparsities, targets "
                                  "(examples/nightly.toml)."),
    history: Path = typer.Option(..., "--history", help="SQLite history file (created if missing); every run is "
                                 "recorded into it and judged against it."),
    reuse: bool = typer.Option(False, "--reuse-measurements", help="Copy a cell's last result when its compressed "
                               "model, target and stack are unchanged, instead of measuring it again."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder for compressed models and built engines "
                                         "(default: HISTORY.cache beside the history file)."),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow the config to import and run the code it "
                                    "names (an arch other than zoo:, a data function)."),
    arch: Optional[list[str]] = typer.Option(None, "--arch", help="A package.module:factory the config may name "
                                             "and you expect (repeatable): allows running that one."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure every cell of a benchmark matrix into a history and flag regressions.

    Exit code 0: no regression; 1: a regression stands; 2: bad input.
    Example: edgeprune bench examples/nightly.toml --history bench.sqlite
    """
    from .bench.config import load_config
    from .bench.runner import run_bench

    r = run_bench(load_config(config), history, trust_code=trust_code, arches=arch or (), cache_dir=cache,
                  reuse=reuse, progress=not as_json)
    if as_json:
        _emit_json(r.to_dict())
    else:
        how = [f"{r.measured} measured", f"{r.reused} reused"] + ([f"{r.already} from the interrupted run"]
                                                                    if r.resumed else [])
        out.print(f"run {r.run_id}{' (resumed)' if r.resumed else ''}: {r.cells} cells, {', '.join(how)}"
                  + (f", {len(r.remeasured)} suspects measured again" if r.remeasured else "")
                  + f"; compressions {r.compressions['hit']} cached, {r.compressions['miss']} new; {r.seconds:.0f} s")
        out.print(r.verdict.table())
    raise typer.Exit(r.exit_code)


# Click's base class of usage errors, bad values and unreadable files. Recent Typer (0.29 here) runs on a copy
# of Click in a private module (typer._click) and older Typer on the click package; both export
# Click's BadParameter as the public `typer.BadParameter`, so the base class is taken from it. An
# `import click` could name a second, unrelated Click whose classes Typer never raises.
CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


DISTRIBUTED_COMMANDS = ("train", "compress")   # the commands that train, the ones torchrun can speed up


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become `error: <one line>` and exit code 2."""
    from . import distributed

    command = typer.main.get_command(app)
    args = list(argv if argv is not None else sys.argv[1:]) or ["--help"]   # no arguments: the help, exit 0
    if distributed.rank() != 0:   # under torchrun rank 0 speaks for every rank; errors still reach stderr
        out.file = open(os.devnull, "w")
    if distributed.launched() and args[0] not in DISTRIBUTED_COMMANDS:   # each rank would write the same files
        print(f"error: under torchrun edgeprune runs {' and '.join(DISTRIBUTED_COMMANDS)}, not {args[0]}: "
              "run it as one process", file=sys.stderr)
        return 2
    try:
        rv = command.main(args=args, prog_name="edgeprune", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except EdgepruneError as e:
        print(f"error: {e}", file=sys.stderr)
    except CLICK_EXCEPTION as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    finally:
        distributed.shutdown()
    return 2


if __name__ == "__main__":
    sys.exit(main())
