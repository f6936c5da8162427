"""The public Python API: train, compress, export, deploy, profile. The CLI is a thin shell over it."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import __version__, distributed
from .compute import resolve_device
from .data import ArrayDataset, train_val_split
from .data.stream import Data
from .errors import InputError, first_line
from .export import DEFAULT_OPSET, ExportResult
from .export import export as export_onnx
from .model_io import (ArchRef, Checkpoint, Consent, LoadedModel, file_digest, load_model, new_checkpoint,
                       save_checkpoint)
from .pruning.masks import require_prunable, sparsity_report
from .pruning.schedule import prune
from .pruning.base import PruneSpec, method_class
from .training import Resume, TrainConfig, check_recipe, evaluate, finetune_lr, train as train_loop

if TYPE_CHECKING:
    from .analysis.limit import LimitConfig, LimitEstimate, MeasuredLimit
    from .targets import Target, TargetsDir

DEFAULT_DATA = "fashion-mnist"
PARITY_SAMPLES = 256


@dataclass
class DataOptions:
    """Where data comes from: a name (fashion-mnist, mnist, digits), an .npz path, an image folder
    (train/ and val/ or test/, one folder per class) or a ``pkg.mod:fn`` returning train/val/test
    Datasets; for `profile`, None means the data set the ONNX models record."""

    data: str | None = DEFAULT_DATA
    data_dir: str | None = None
    limit: int | None = None        # use a seeded subset of the training split (quick runs, tests)
    test_limit: int | None = None
    input_shape: tuple[int, ...] | None = None   # image folder: C,H,W to resize/crop to (default: the first image's)
    normalize: str | None = None                 # image folder: a preset (imagenet) or MEAN,../STD,..
    metric: str | None = None                    # pkg.mod:fn scoring a split (default: top-1 accuracy)
    preprocess: dict | None = None               # an image folder's preprocessing as a checkpoint recorded it

    def _preprocess(self):
        from .data.imagefolder import default_preprocess, is_image_folder
        from .data.preprocess import Preprocess

        if not is_image_folder(str(self.data)):
            return None
        if self.preprocess is not None and self.input_shape is None and self.normalize is None:
            return Preprocess.from_dict(self.preprocess)
        return default_preprocess(str(self.data), self.input_shape, self.normalize)

    def _open(self, split: str, limit: int | None):
        from .data import open_split
        from .data.factory import load_metric

        ds = open_split(str(self.data), split, self.data_dir, limit, self._preprocess())
        if ds is not None and self.metric:
            ds.metric = load_metric(self.metric)
        return ds

    def train_val(self) -> tuple[Data, Data]:
        """The training split and a validation split: the source's own, else carved from training data."""
        tr, val = self._open("train", self.limit), self._open("val", self.limit)
        return (tr, val) if val is not None else train_val_split(tr)

    def train_split(self) -> Data:
        return self._open("train", None)

    def test(self) -> Data:
        return self._open("test", self.test_limit)

    def recorded(self) -> dict:
        """What a checkpoint records so later commands (export, deploy, calibration) reuse this data as it was."""
        from .data.imagefolder import is_image_folder

        folder = is_image_folder(str(self.data))
        pre = self._preprocess() if folder else None
        return {"data": str(Path(str(self.data)).resolve()) if folder else self.data,
                "preprocess": pre.to_dict() if pre else None, "metric": self.metric}


# Test images read into memory for accuracy on a runtime (ONNX Runtime, TensorRT take numpy) when
# the data set is streamed from disk; --test-limit sets another bound.
STREAMED_TEST_SAMPLES = 2000


def _data_for(meta: dict, given: DataOptions | None, consent: Consent | None, source: str) -> DataOptions:
    """The data a command uses for a model: ``given`` (--data), completed by what the checkpoint
    recorded (preprocessing, metric), else the recorded data. Recorded code (a data factory, a
    metric) runs only with the user's consent, as recorded architectures do."""
    from .data.factory import check_consent, is_ref

    if given is None or given.data is None:   # options given without --data apply to the recorded data
        given = replace(given or DataOptions(), data=str(meta.get("data") or DEFAULT_DATA),
                        preprocess=(given and given.preprocess) or meta.get("preprocess"))
        if is_ref(given.data):
            check_consent(given.data, "--data", consent, source)
    elif given.preprocess is None and given.input_shape is None and given.normalize is None and meta.get("preprocess"):
        given = replace(given, preprocess=meta["preprocess"])
    if given.metric is None and meta.get("metric"):
        check_consent(str(meta["metric"]), "--metric", consent, source)
        given = replace(given, metric=str(meta["metric"]))
    return given


def _test_arrays(data: DataOptions) -> ArrayDataset:
    """The test split in memory; a streamed one bounded to STREAMED_TEST_SAMPLES unless --test-limit says."""
    from .data.stream import as_arrays

    te = data.test()
    return as_arrays(te, None if isinstance(te, ArrayDataset) or data.test_limit else STREAMED_TEST_SAMPLES)


def _check_output(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output {out} exists (use --force to overwrite)")
    return out


def _check_fits(loaded: LoadedModel, ds: Data) -> None:
    want = tuple(loaded.checkpoint.input_shape)
    if tuple(ds.input_shape) != want:
        raise InputError(f"data set {ds.name} has inputs of shape {tuple(ds.input_shape)} but the model expects {want}")


# ---------------------------------------------------------------- train
@dataclass
class TrainResult:
    path: str
    arch: str
    data: str
    epochs: float
    val_accuracy: float
    test_accuracy: float
    params: int
    seconds: float


def train(arch: str, out: Path, *, data: DataOptions | None = None, epochs: float = 5, lr: float = 1e-3,
          batch_size: int = 128, l1: float = 0.0, seed: int = 0, arch_kwargs: dict[str, Any] | None = None,
          optimizer: str = "adam", lr_schedule: str = "cosine", device: str = "auto",
          force: bool = False, progress: bool = True) -> TrainResult:
    """Train a reference architecture from scratch and save an edgeprune checkpoint.

    The default is Adam with a cosine decay; ``optimizer="sgd", lr=0.01, lr_schedule="constant"`` is
    the recipe of Zhang et al.'s L1 (LOMP) models, the one the pruning-limit estimate was made for.
    ``device``: auto (CUDA when PyTorch sees one), cpu or cuda. Under torchrun every rank trains its
    share of each batch (DDP) and rank 0 writes the checkpoint."""
    data = data or DataOptions()
    out = _check_output(out, force)
    dev = resolve_device(device)
    distributed.setup(dev)
    progress = progress and distributed.is_main()
    if epochs <= 0:
        raise InputError("--epochs must be positive")
    check_recipe(optimizer, lr_schedule)
    tr, val = data.train_val()
    te = data.test()
    consent = Consent(arch=arch)   # the user named it: that is the consent
    # the factory gets those of these it accepts, then the user's arch_kwargs as they are
    shape_kwargs = {"in_channels": tr.input_shape[0], "image_size": tr.input_shape[1],
                    "num_classes": max(tr.num_classes or 0, te.num_classes or 0)}
    ref = ArchRef.fitted(arch, consent, shape_kwargs, arch_kwargs)
    torch.manual_seed(seed)
    model = ref.build(consent, "--arch")
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, l1=l1, seed=seed, optimizer=optimizer,
                      cosine=lr_schedule == "cosine", device=str(dev))
    resume = _resume_for(out, ["train", arch, arch_kwargs, asdict(cfg), data.recorded(), data.limit])
    log = train_loop(model, tr, cfg, val_set=val, progress=progress, description=f"train {ref.ref}", resume=resume)
    val_acc, test_acc = evaluate(model, val, device=dev), evaluate(model, te, device=dev)
    meta = {"method": "dense", "sparsity": 0.0, **data.recorded(), "epochs": epochs, "l1": l1, "seed": seed,
            "optimizer": optimizer, "lr": lr, "lr_schedule": lr_schedule, **_compute_meta(dev, resume),
            "val_accuracy": val_acc, "test_accuracy": test_acc, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_once(lambda: save_checkpoint(new_checkpoint(model, ref, tr.input_shape, meta), out, force=force), resume)
    return TrainResult(str(out), ref.ref, data.data, epochs, val_acc, test_acc,
                       sum(p.numel() for p in model.parameters()), log.seconds)


# ---------------------------------------------------------------- compress
@dataclass
class CompressResult:
    path: str
    method: str
    granularity: str
    scope: str
    schedule: str
    target_sparsity: float
    sparsity: float                      # achieved fraction of prunable weights removed
    dense_val_accuracy: float
    pruned_val_accuracy: float           # at the target sparsity, before its fine-tune
    finetuned_val_accuracy: float
    accuracy_drop_pt: float              # dense - fine-tuned, validation split
    finetune_epochs: float
    finetune_lr: float
    finetune_lr_how: str                 # "--lr", or the probe that chose it (lr_probe)
    params_before: int
    params_after: int                    # nonzero parameters
    macs_before: int
    macs_after: int
    prune_seconds: float                 # pruning alone, fine-tuning excluded
    total_seconds: float
    layers: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)   # the method's own report (Method.details)
    resumed: list[dict] = field(default_factory=list)   # torchrun restarts: the fine-tune epochs resumed from


def default_output(model_path: Path, method: str) -> Path:
    """Where ``compress`` writes when no output is named: ``<stem>.<method>.pt`` beside the input."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.{method}.pt")


def compress(model_path: Path, spec: PruneSpec, out: Path | None = None, *, data: DataOptions | None = None,
             finetune_epochs: float | None = None, lr: float | None = None, batch_size: int = 128,
             consent: Consent | None = None, input_shape: tuple[int, ...] | None = None,
             arch_kwargs: dict[str, Any] | None = None, force: bool = False,
             progress: bool = True, auto_limit: LimitConfig | None = None, target: str | Path | None = None,
             targets_dir: TargetsDir = None, device: str = "auto") -> CompressResult:
    """Prune ``model_path`` with ``spec``, fine-tune on the training split, save a pruned checkpoint.

    ``out`` defaults to ``default_output`` (``model.activation.pt`` beside ``model.pt``); an existing
    file is kept unless ``force``. ``spec.schedule`` None and ``finetune_epochs`` None are the method's
    own (``Method.default_schedule``, ``Method.default_finetune_epochs``). A bare state_dict is built
    from ``consent.arch`` with ``arch_kwargs`` and ``input_shape`` (``model_io.load_model``).

    ``target`` (a name or .toml path) sets ``spec.round_to`` to the target's ``build.round_to``
    unless ``spec.round_to`` is None (the CLI passes None when ``--round-to`` is not given and a
    target is); a round_to the caller set stays as it is.

    ``device``: where fine-tuning runs (auto: CUDA when PyTorch sees one). Under torchrun every rank
    prunes, rank 0's masks are broadcast and checked (``distributed.agree``), the fine-tune is DDP and
    its state is saved each epoch beside ``out`` so a restarted run resumes; rank 0 writes ``out``.

    ``lr`` None: the gated schedule's measured rate, else the rate ``lr_probe.choose`` finds on the
    pruned model (the lowest validation loss over a short run at each rate of a small grid). ``auto_limit`` (method lomp only,
    the CLI's ``--sparsity auto``) replaces ``spec.sparsity`` by the predicted pruning limit s*,
    estimated on the training split before pruning; ``details["predicted_limit"]`` says what it was.
    """
    t0 = time.perf_counter()
    target_name = None
    if target is not None:
        from .targets import load_target

        tgt = load_target(target, targets_dir)
        target_name = tgt.name
        if spec.round_to is None:
            spec = replace(spec, round_to=tgt.build.round_to)
    spec.validate()
    dev = resolve_device(device)
    if spec.schedule == "gated":
        # its events act on activation counts and training accuracy each rank sees on its own share
        distributed.refuse("the accuracy-gated schedule (--schedule gated)")
    distributed.setup(dev)
    progress = progress and distributed.is_main()
    if spec.method == "lomp" or auto_limit is not None:
        from .pruning.lomp import check_spec

        check_spec(spec, auto_limit is not None)
    from .lr_probe import LrChoice

    # no --lr: the gated schedule has its own measured rate; the others probe it on the pruned model
    chosen = [LrChoice(lr, "--lr")] if lr is not None else []
    if not chosen and spec.schedule == "gated":
        chosen = [LrChoice(finetune_lr(spec.granularity, "gated"), "gated default")]
    out = _check_output(default_output(model_path, spec.method) if out is None else out, force)
    if finetune_epochs is None:
        finetune_epochs = method_class(spec.method).default_finetune_epochs
    if finetune_epochs < 0:
        raise InputError("--finetune-epochs must be >= 0")
    loaded = load_model(model_path, consent=consent, input_shape=input_shape, arch_kwargs=arch_kwargs)
    ckpt = loaded.checkpoint
    data = _data_for(ckpt.meta, data, consent, str(model_path))
    tr, val = data.train_val()
    _check_fits(loaded, tr)
    if spec.granularity == "channel" and ckpt.kind != "module" and ckpt.kind != "pickle":
        raise InputError(f"channel pruning needs an nn.Module (zoo:, package.module:factory or a pickle); "
                         f"this {ckpt.kind} model supports --granularity weight")
    model, example = loaded.model, loaded.example_input
    require_prunable(model, f"this {ckpt.kind} model")   # before the MAC counter hooks a ScriptModule
    if data.metric is None:   # a task metric scores whatever the model outputs; top-1 needs one score per class
        _check_classifier(model, example, tr)
    before = sparsity_report(model, example)
    dense_val = evaluate(model, val, device=dev)
    lomp_details: dict = {}
    if spec.method == "lomp":
        from .pruning.lomp import resolve

        spec, lomp_details = resolve(spec, model, tr, auto_limit, float(ckpt.meta.get("l1", 0.0)), progress)

    pruned_acc: list[float] = []   # validation accuracy after each prune step, before its fine-tune

    resume = _resume_for(out, ["compress", file_digest(Path(model_path)), asdict(spec), finetune_epochs, lr,
                               batch_size, data.recorded(), data.limit])

    def finetune(m: torch.nn.Module, masks: dict[str, torch.Tensor] | None, share: float) -> None:
        _same_on_every_rank(m, masks, len(pruned_acc) + 1)
        pruned_acc.append(evaluate(m, val, device=dev))
        if finetune_epochs * share > 0:
            cfg = TrainConfig(epochs=finetune_epochs * share, batch_size=batch_size, seed=spec.seed, device=str(dev))
            if not chosen:   # probed once, on the model as the first prune step left it
                from .lr_probe import choose

                steps = round(finetune_epochs * -(-len(tr) // batch_size))
                chosen.append(choose(m, tr, val, cfg, masks, spec.granularity, steps))
            train_loop(m, tr, replace(cfg, lr=chosen[0].lr), masks=masks, progress=progress,
                       description="fine-tune", resume=resume)

    if spec.method == "lomp" and not isinstance(tr, ArrayDataset):
        raise InputError("method lomp estimates its limit on in-memory data (a built-in set or .npz), "
                         f"not on {tr.name}")
    first = tr.x[:2048] if isinstance(tr, ArrayDataset) else tr.take(np.arange(min(len(tr), 2048))).arrays().x
    calib = [torch.from_numpy(first[i:i + 256]) for i in range(0, len(first), 256)]
    if spec.schedule == "gated":
        # the accuracy-gated schedule trains itself: finetune_epochs is its whole budget
        from .pruning.gated import prune_gated

        result = prune_gated(model, spec, example, tr, TrainConfig(epochs=finetune_epochs, lr=chosen[0].lr,
                                                                   batch_size=batch_size,
                                                                   seed=spec.seed, device=str(dev)),
                             calib=calib, val_set=val, progress=progress)
        pruned_acc.append(result.details["val_accuracy_before_retraining"])
    else:
        result = prune(model, spec, example, finetune=finetune, batches=calib)
    result.details.update(lomp_details)
    _check_runs(model, example, spec)
    after = sparsity_report(model, example)
    # One definition for both granularities: prunable weights gone, whether zeroed or physically removed.
    sparsity = 1.0 - after.nonzero / max(before.total, 1)
    ft_val = evaluate(model, val, device=dev)
    choice = chosen[0] if chosen else LrChoice(finetune_lr(spec.granularity), "no fine-tune")
    meta = {**{k: v for k, v in ckpt.meta.items() if k not in ("report",)},
            "method": spec.method, "sparsity": sparsity, "target_sparsity": spec.sparsity,
            "granularity": spec.granularity, "scope": spec.scope, "schedule": spec.schedule, **data.recorded(),
            "finetune_epochs": finetune_epochs, "finetune_lr": choice.lr,
            "finetune_lr_choice": choice.to_dict(), "source_path": str(Path(model_path).resolve()),
            "source_sha256": file_digest(Path(model_path)), "dense_val_accuracy": dense_val,
            "val_accuracy": ft_val, "spec": asdict(spec), "report": after.to_dict(), "details": result.details,
            "target": target_name,   # whose build.round_to set the channel multiple, if a target was given
            **_compute_meta(dev, resume),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "edgeprune_version": __version__}
    new = Checkpoint(kind=ckpt.kind, input_shape=ckpt.input_shape, arch=ckpt.arch, program=ckpt.program,
                     plan=list(ckpt.plan) + list(result.plan), masks=result.masks,
                     state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, meta=meta)
    _write_once(lambda: save_checkpoint(new, out, force=force), resume)
    return CompressResult(
        path=str(out), method=spec.method, granularity=spec.granularity, scope=spec.scope, schedule=spec.schedule,
        target_sparsity=spec.sparsity, sparsity=sparsity, dense_val_accuracy=dense_val,
        pruned_val_accuracy=pruned_acc[-1] if pruned_acc else ft_val, finetuned_val_accuracy=ft_val,
        accuracy_drop_pt=dense_val - ft_val, finetune_epochs=finetune_epochs, finetune_lr=choice.lr,
        finetune_lr_how=choice.describe(),
        params_before=before.params_nonzero, params_after=after.params_nonzero, macs_before=before.macs,
        macs_after=after.macs, prune_seconds=result.seconds, total_seconds=time.perf_counter() - t0,
        layers=_layer_rows(before, after), details=result.details, resumed=resume.resumed if resume else [])


def _resume_for(out: Path, run: list) -> Resume | None:
    """Under torchrun, the folder beside ``out`` where each epoch's training state is kept for a
    restart (``--max-restarts``); ``run`` names the run, so state of another run is never resumed."""
    if not distributed.launched():
        return None
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([*run, distributed.world_size()], sort_keys=True, default=str).encode()).hexdigest()
    return Resume(Path(out).with_name(f".{Path(out).name}.resume"), key)


def _write_once(write, resume: Resume | None) -> None:
    """Rank 0 writes (every rank holds the same model); the run's resume state goes once it has."""
    if distributed.is_main():
        write()
        if resume is not None:
            shutil.rmtree(resume.folder, ignore_errors=True)
    distributed.barrier()


def _compute_meta(dev: torch.device, resume: Resume | None) -> dict:
    """Where it ran, recorded with the checkpoint: device, ranks, and any epoch a restart resumed from."""
    meta: dict[str, Any] = {"device": dev.type, "mixed_precision": dev.type == "cuda",
                            "world_size": distributed.world_size()}
    if resume is not None and resume.resumed:
        meta["resumed"] = resume.resumed
    return meta


def _same_on_every_rank(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None, step: int) -> None:
    """Under torchrun: rank 0's masks replace every rank's (all computed them from the same weights and
    data), then every rank checks it holds the same masks and layer widths before fine-tuning."""
    from .pruning.masks import apply_masks

    if masks:
        distributed.broadcast_masks(masks)
        apply_masks(model, masks)
    distributed.agree(f"masks after prune step {step}", distributed.tensor_digest(masks))
    distributed.agree(f"widths after prune step {step}",
                      distributed.tensor_digest({n: torch.tensor(p.shape) for n, p in model.named_parameters()}))


def _check_classifier(model: torch.nn.Module, example: torch.Tensor, ds) -> None:
    """Without --metric, compress measures top-1 accuracy against one label per image: a model
    predicting per position (a segmentation head: one score map per class) cannot be scored so."""
    with torch.no_grad():
        out = model(example)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model's output per sample is {shape}, not one score per class, and {ds.name} has one "
                         "class label per image: accuracy on it cannot be measured (pass --metric pkg.mod:fn, the task's own metric)")


def _check_runs(model: torch.nn.Module, example: torch.Tensor, spec: PruneSpec) -> None:
    # Nothing is saved that cannot run: a shape left inconsistent by pruning surfaces here.
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as e:
        raise InputError(f"the model pruned by {spec.method} ({spec.granularity}) no longer runs, so it was not saved: "
                         f"{first_line(e)}") from None


def _layer_rows(before, after) -> list[dict]:
    """Per prunable layer, against its original shape, so removed channels count as pruned weights."""
    orig = {L.name: L for L in before.layers}
    rows = []
    for L in after.layers:
        b = orig.get(L.name, L)
        rows.append({"name": L.name, "kind": L.kind, "shape_before": b.shape, "shape": L.shape,
                     "total": b.total, "nonzero": L.nonzero, "sparsity": 1.0 - L.nonzero / max(b.total, 1)})
    return rows


# ---------------------------------------------------------------- export
def export(model_path: Path, out: Path, *, opset: int = DEFAULT_OPSET, data: DataOptions | None = None,
           check: bool = True, consent: Consent | None = None, input_shape: tuple[int, ...] | None = None,
           force: bool = False, sparse_weights: bool = False) -> ExportResult:
    """Export a model file to ONNX; parity-checked on real test inputs unless ``check`` is False.

    ``sparse_weights`` stores zero-rich weights sparse and reports dense/sparse/compressed sizes."""
    loaded = load_model(model_path, consent=consent, input_shape=input_shape)
    x = None
    given = data.recorded() if data else {}
    if check:
        from dataclasses import replace

        data = _data_for(loaded.checkpoint.meta, data, consent, str(model_path))
        x = _parity_inputs(loaded, replace(data, test_limit=PARITY_SAMPLES).test())
    return export_onnx(loaded, Path(out), opset=opset, check_inputs=x, force=force, sparse_weights=sparse_weights,
                       data=given.get("data"), preprocess=given.get("preprocess"))


def _parity_inputs(loaded: LoadedModel, test: Data) -> np.ndarray:
    """PARITY_SAMPLES real test images the model accepts."""
    from .data.stream import as_arrays

    _check_fits(loaded, test)
    return as_arrays(test, PARITY_SAMPLES).x


# ---------------------------------------------------------------- analyze (low-rank view)
def analyze(pruned_path: Path, baseline_path: Path, *, data: DataOptions | None = None, out_dir: Path | None = None,
            consent: Consent | None = None, force: bool = False):
    """Per hidden layer rank and singular values of a pruned model against its dense baseline, and the
    PCA rank-reduction baseline at equal ranks (METHODS.md §2.5); returns a LowRankAnalysis.

    With ``out_dir``, also writes analysis.json and singular_values.png there.
    """
    from .analysis.lowrank import JSON_NAME, PLOT_NAME, write_analysis
    from .analysis.lowrank import analyze as lowrank_view

    if out_dir is not None:   # refuse before the work, not after it
        for name in (JSON_NAME, PLOT_NAME):
            _check_output(Path(out_dir) / name, force)
    pruned = load_model(pruned_path, consent=consent)
    pc = pruned.checkpoint
    dense = load_model(baseline_path, consent=consent, input_shape=pc.input_shape)
    dc = dense.checkpoint
    if pc.arch and dc.arch and (pc.arch.ref, pc.arch.kwargs) != (dc.arch.ref, dc.arch.kwargs):
        raise InputError(f"baseline {baseline_path} is {dc.arch.ref} {dc.arch.kwargs or ''} but {pruned_path} was "
                         f"pruned from {pc.arch.ref} {pc.arch.kwargs or ''}: pass the dense model it came from")
    if tuple(pc.input_shape) != tuple(dc.input_shape):
        raise InputError(f"baseline takes inputs of shape {tuple(dc.input_shape)}, the pruned model {tuple(pc.input_shape)}")
    data = _data_for(pc.meta, data, consent, str(pruned_path))
    te = _test_arrays(data)
    _check_fits(pruned, te)
    src = pc.meta.get("source_sha256")
    result = lowrank_view(pruned.model, dense.model, te, pruned_path=str(pruned_path), baseline_path=str(baseline_path),
                          arch=pc.arch.ref if pc.arch else pc.kind, method=str(pc.meta.get("method", "unknown")),
                          sparsity=pc.meta.get("sparsity"),
                          baseline_is_source=None if src is None else src == file_digest(Path(baseline_path)))
    if out_dir is not None:
        write_analysis(result, Path(out_dir), force=force)
    return result


# ---------------------------------------------------------------- deploy / profile
def _prepare_dir(out_dir: Path, force: bool) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise InputError(f"run directory {out_dir} is not empty (use --force to overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def profile(baseline_onnx: Path, pruned_onnx: Path, target: str, *, data: DataOptions | None = None,
            out_dir: Path | None = None, method: str | None = None, sparsity: float | None = None,
            force: bool = False, progress: bool = True, targets_dir: TargetsDir = None):
    """Measure dense and pruned ONNX models side by side on ``target``; returns a Report.

    Without a data set (``data`` None, or its ``data`` None) the one the models' metadata records is used.
    ``targets_dir``: folders searched for a target name before the shipped targets."""
    from .targets import load_target

    tgt = load_target(target, targets_dir)
    _check_measurable(tgt)
    for p in (baseline_onnx, pruned_onnx):
        if not Path(p).is_file():
            raise InputError(f"ONNX file not found: {p}")
    if data is None or data.data is None:
        from dataclasses import replace

        name, pre = recorded_data(Path(baseline_onnx), Path(pruned_onnx))
        data = replace(data or DataOptions(), data=name, preprocess=pre)
    return _profile(Path(baseline_onnx), Path(pruned_onnx), tgt, _test_arrays(data), out_dir,
                    method=method, sparsity=sparsity, force=force, progress=progress)


def _check_measurable(tgt: Target) -> None:
    """Refuse, before any work, a target this machine cannot build and time (e.g. TensorRT without it)."""
    from .backends import get_backend

    problems = get_backend(tgt.backend).host_problems(tgt)
    if problems:
        raise InputError(f"target {tgt.name} cannot be measured on this machine: {problems[0]}")


def recorded_data(*onnx_paths: Path) -> tuple[str, dict | None]:
    """The data set the ONNX models' metadata says they expect (`export` records it) and an image
    folder's preprocessing, checked against the preprocessing edgeprune's loader of it applies; a
    one-line error where they record none or disagree. A recorded data factory is code: it is not
    run from a file's say-so (pass --data)."""
    import json

    from .data import preprocessing
    from .data.factory import check_consent, is_ref
    from .onnx_stats import read_metadata

    metas = {p: read_metadata(p) for p in onnx_paths}
    names = {m["edgeprune.data"] for m in metas.values() if m.get("edgeprune.data")}
    if not names:
        raise InputError(f"{' and '.join(p.name for p in onnx_paths)} record no data set (exported by an older "
                         "edgeprune or another tool): pass --data")
    if len(names) > 1:
        raise InputError(f"the models record different data sets ({', '.join(sorted(names))}): pass --data")
    name = names.pop()
    if is_ref(name):
        check_consent(name, "--data", None, " and ".join(p.name for p in onnx_paths))
    pres = {m["edgeprune.preprocess"].partition("; json ")[2] for m in metas.values() if m.get("edgeprune.preprocess")}
    pre = json.loads(pres.pop()) if len(pres) == 1 and "" not in pres else None
    for p, m in metas.items():
        want = m.get("edgeprune.preprocess")
        if want and want != preprocessing(name, pre):
            raise InputError(f"{p.name} expects inputs preprocessed as '{want}', which edgeprune's loader of {name} "
                             f"does not do ('{preprocessing(name, pre)}'): pass --data with inputs prepared that way (.npz)")
    return name, pre


def _profile(baseline_onnx: Path, pruned_onnx: Path, tgt: Target, te: ArrayDataset, out_dir: Path | None, *,
             method: str | None, sparsity: float | None, force: bool, progress: bool, engine_cache: Path | None = None):
    from .profiling import profile_pair
    from .report.write import write_report

    if out_dir:
        work = _prepare_dir(out_dir, force)
        report = profile_pair(Path(baseline_onnx), Path(pruned_onnx), tgt, te.x, te.y, work,
                              method=method, sparsity=sparsity, progress=progress, metric=te.metric,
                              engine_cache=engine_cache)
        write_report(report, work)
        return report
    work = Path(tempfile.mkdtemp(prefix="edgeprune-"))   # engines are built somewhere, then thrown away
    try:
        return profile_pair(Path(baseline_onnx), Path(pruned_onnx), tgt, te.x, te.y, work,
                            method=method, sparsity=sparsity, progress=progress, metric=te.metric)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deploy(pruned_path: Path, target: str, out_dir: Path, *, baseline_path: Path | None = None,
           data: DataOptions | None = None, opset: int | None = None, consent: Consent | None = None,
           force: bool = False, progress: bool = True, precision: str | None = None,
           calibration: str | None = None, targets_dir: TargetsDir = None, host: str | None = None,
           ssh_config: str | Path | None = None, device_python: str | None = None,
           engine_cache: Path | None = None):
    """Export dense and pruned models, build engines for ``target``, profile both, write the run directory.

    ``opset`` defaults to the highest the target reads, at most DEFAULT_OPSET; above what it reads is an
    error. ``precision`` and ``calibration`` (an .npz, or the name of a shipped one such as
    ``calibration/fmnist.npz``) override the target's build policy; without ``calibration``, INT8
    calibrates on a class-balanced sample of the run's training split (`calibration.npz` in
    ``out_dir``), whatever set the target names. Every check that can fail (the target's build policy,
    the calibration set's shape, the opset) runs before the first export. Every measured run returns
    the one ``Report``; a TensorRT target that cannot be measured here (no TensorRT, no ``host``)
    returns a ``BoardRun``: the engine plans, trtexec scripts and calibration inputs for the board,
    whose outputs `collect` turns into the report.
    ``host`` (or the target's ``[device] ssh``): build and measure on that board over SSH
    (`edgeprune.run.remote`); a repeated call after a fault resumes at the first unfinished stage.
    ``engine_cache``: a folder where engines built here are kept and reused (a board keeps its own).
    """
    from dataclasses import replace

    from .backends import get_backend
    from .quantize import calibration_path
    from .targets import load_target

    if calibration is not None:
        calibration = str(calibration_path(calibration))
    if host:
        target = _family_member(target, targets_dir, host, ssh_config, device_python)
    tgt = _override_build(load_target(target, targets_dir), precision, calibration)
    host = host or tgt.ssh
    if host:
        tgt = replace(tgt, ssh=host)   # the board's stack is checked there, not this machine's
    backend = get_backend(tgt.backend)
    pruned = load_model(pruned_path, consent=consent)
    if baseline_path is None:
        src = pruned.checkpoint.meta.get("source_path")
        if not src or not Path(src).exists():
            raise InputError("no dense baseline: pass --baseline model.pt")
        baseline_path = Path(src)
    dense = _load_baseline(Path(baseline_path), pruned, consent)
    data = _data_for(pruned.checkpoint.meta, data, consent, str(pruned_path))
    te = _test_arrays(data)   # read once: parity inputs for both exports, then the accuracy measurement
    parity = {name: _parity_inputs(loaded, te) for name, loaded in (("dense", dense), ("pruned", pruned))}
    staging = None
    if tgt.build.precision == "int8" and calibration is None:
        # INT8 calibrates on the user's data unless --calibration says otherwise: a target's shipped set
        # is one data set's images (Fashion-MNIST), of one input shape. It is written aside first, so the
        # target's checks see it before anything lands in the run directory.
        staging = Path(tempfile.mkdtemp(prefix="edgeprune-cal-"))
        tgt = _override_build(tgt, None, str(_calibration_set(data, staging)))
    try:
        problems = backend.target_problems(tgt, tuple(pruned.checkpoint.input_shape))
        if problems:
            raise InputError(f"target {tgt.name}: {problems[0]}")
        opset = _target_opset(backend.max_opset(tgt), opset, tgt.name)
        batch = backend.export_batch(tgt)
        stages = None
        if host:
            from .run.remote import RunStages, run_key

            key = run_key(file_digest(Path(pruned_path)), file_digest(Path(baseline_path)), tgt, host, opset,
                          data.data, data.data_dir, data.test_limit)
            stages = None if force else RunStages.resume(Path(out_dir), key)
            stages = stages or RunStages(_prepare_dir(out_dir, force), key)
        else:
            out_dir = _prepare_dir(out_dir, force)
        out_dir = Path(out_dir)
        if staging is not None:
            calibration = str(out_dir / "calibration.npz")
            shutil.move(tgt.build.calibration, calibration)
            tgt = _override_build(tgt, None, calibration)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if stages is not None and "exported" in stages:
        onnx = {name: out_dir / f"{name}.onnx" for name in ("dense", "pruned")}
    else:
        recorded = data.recorded()
        with _EXPORT_LOCK:
            exports = {name: export_onnx(loaded, out_dir / f"{name}.onnx", opset=opset, check_inputs=parity[name],
                                         force=True, data=recorded["data"], preprocess=recorded["preprocess"],
                                         batch=batch)
                       for name, loaded in (("dense", dense), ("pruned", pruned))}
        onnx = {k: e.path for k, e in exports.items()}
    meta = pruned.checkpoint.meta
    if stages is not None:
        from .profiling import check_models
        from .run.remote import Board, deploy_remote

        plans = None
        if tgt.backend == "tensorrt":    # planned (and checked) here: the board has no onnx to plan with
            from .backends.trt_deploy import prepare_tensorrt

            plans = prepare_tensorrt(onnx, tgt, out_dir, calibration=calibration).plans
        else:
            check_models(onnx["dense"], onnx["pruned"], tgt)
        stages.mark("exported")
        board = Board(host, ssh_config, device_python or tgt.device.python, tgt.device.workdir)
        return deploy_remote(onnx, tgt, te.x, te.y, out_dir, stages, board, method=str(meta.get("method", "dense")),
                             sparsity=float(meta.get("sparsity", 0.0)), plans=plans)
    method, sparsity = str(meta.get("method", "dense")), float(meta.get("sparsity", 0.0))
    if tgt.backend == "tensorrt":
        from .backends.tensorrt import build_plans
        from .backends.trt_deploy import prepare_tensorrt
        from .profiling import profile_pair
        from .report.write import write_report

        prepared = prepare_tensorrt(onnx, tgt, out_dir, calibration=calibration)
        if backend.host_problems(tgt):
            return prepared     # nothing can be measured here: the board runs the scripts, `collect` reads them
        report = profile_pair(onnx["dense"], onnx["pruned"], tgt, te.x, te.y, out_dir, method=method,
                              sparsity=sparsity, progress=progress, metric=te.metric,
                              engines=build_plans(prepared.plans, out_dir, tgt))
        write_report(report, out_dir)
        return report
    return _profile(onnx["dense"], onnx["pruned"], tgt, te, out_dir, method=method, sparsity=sparsity,
                    force=True, progress=progress, engine_cache=engine_cache)


# torch's exporter traces under process-wide state (dynamo, fake tensor modes): `edgeprune bench`
# deploys to several boards from threads, and their exports take turns.
_EXPORT_LOCK = threading.Lock()


def _load_baseline(path: Path, pruned: LoadedModel, consent: Consent | None) -> LoadedModel:
    """The dense model; a bare state_dict (the usual source of a compressed state_dict) is built as the
    pruned model's base was: its architecture reference and recorded arguments, under the consent that
    already let the pruned model be built."""
    from .model_io import is_bare_state_dict

    arch, shape = pruned.checkpoint.arch, pruned.checkpoint.input_shape
    if arch is None or not is_bare_state_dict(path):
        return load_model(path, consent=consent, input_shape=shape)
    return load_model(path, consent=replace(consent or Consent(), arch=arch.ref), input_shape=shape,
                      arch_kwargs=dict(arch.kwargs))


def _family_member(target: str, targets_dir: TargetsDir, host: str, ssh_config: str | Path | None,
                   device_python: str | None) -> str:
    """``target`` itself, or, for a family name (``jetson``), the one member whose stack the board has
    (probed over SSH); where several have it, the one the board's model names. A one-line error otherwise."""
    from .run.remote import Board, probe_board, target_mismatch
    from .targets import family_members, load_target

    names = family_members(target, targets_dir)
    if not names or str(target).endswith(".toml"):
        return target
    members = [load_target(n, targets_dir) for n in names]
    first = members[0].device
    found = probe_board(Board(host, ssh_config, device_python or first.python, first.workdir))
    fits = [t for t in members if not target_mismatch(found, t)]
    if len(fits) > 1:
        # the same stack on several modules (Orin Nano and Orin NX on JetPack 6): the board's model decides
        model = set(re.findall(r"[a-z0-9]+", str(found.get("model") or "").lower()))
        named = [t for t in fits if model and set(t.name.lower().split("-")) <= model]
        fits = named or fits
    if len(fits) == 1:
        return fits[0].name
    if fits:
        raise InputError(f"{host} has the stack of several members of family '{target}': "
                         f"{', '.join(t.name for t in fits)} — pass one as --target")
    why = "; ".join(f"{t.name}: {target_mismatch(found, t)}" for t in members)
    raise InputError(f"no member of family '{target}' matches {host} ({found.get('hostname')}): {why}")


def collect(run_dir: Path):
    """The report of a run measured on a board by hand (the trtexec scripts deploy wrote, or the device
    side's result.json), written into ``run_dir`` as a live run writes it; see `edgeprune.run.collect`."""
    from .run.collect import collect_run

    return collect_run(Path(run_dir))


def _target_opset(ceiling: int | None, opset: int | None, target: str) -> int:
    """The opset to export at: the one asked for, or the highest the target reads up to DEFAULT_OPSET."""
    if opset is None:
        return min(DEFAULT_OPSET, ceiling) if ceiling else DEFAULT_OPSET
    if ceiling and opset > ceiling:
        raise InputError(f"--opset {opset} is above {ceiling}, the highest opset target {target} reads")
    return opset


def _calibration_set(data: DataOptions, out_dir: Path) -> Path:
    """A class-balanced sample of the run's training split, saved in the run directory."""
    return calibrate(data, out_dir / "calibration.npz", force=True).path


@dataclass
class CalibrationResult:
    path: Path
    data: str
    samples: int
    input_shape: tuple[int, ...]
    dtype: str
    classes: int | None           # classes sampled (None: the labels were unknown, a random sample)


def calibrate(data: DataOptions, out: Path, *, n: int = 512, force: bool = False) -> CalibrationResult:
    """Write an INT8 calibration set: ``n`` class-balanced images of the training split of ``data``
    (x uint8, or float16 for normalised inputs; y the labels), to keep and pass as --calibration."""
    from .data import calibration_sample
    from .fileio import atomic_write

    if n <= 0:
        raise InputError("-n must be positive")
    out = _check_output(out, force)
    tr = data.train_split()
    x, y = calibration_sample(tr, n)
    atomic_write(out, lambda f: np.savez_compressed(f, x=x, y=y), force=force)
    labels = y if isinstance(tr, ArrayDataset) else tr.labels
    return CalibrationResult(out, str(data.data), len(x), tuple(x.shape[1:]), str(x.dtype),
                             None if labels is None else int(len(np.unique(y))))


def _override_build(tgt: Target, precision: str | None, calibration: str | None) -> Target:
    """``--precision`` / ``--calibration`` replace the target's build policy values."""
    from dataclasses import replace

    from .targets import PRECISIONS

    changes: dict[str, str] = {}
    if precision is not None:
        if precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        changes["precision"] = precision
    if calibration is not None:
        if not Path(calibration).is_file():
            raise InputError(f"calibration file not found: {calibration}")
        changes["calibration"] = str(calibration)
    return replace(tgt, build=replace(tgt.build, **changes)) if changes else tgt


# ---------------------------------------------------------------- limit
@dataclass
class LimitResult:
    """The predicted pruning limit of a model (and, with ``measure``, the one measured by a sweep)."""

    path: str
    data: str
    estimate: LimitEstimate
    measured: MeasuredLimit | None = None
    error_pt: float | None = None        # predicted s* minus measured s (δ = 0.1 pt), in points
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": self.path, "data": self.data, "estimate": self.estimate.to_dict(),
                "measured": self.measured.to_dict() if self.measured else None, "error_pt": self.error_pt,
                "notes": self.notes}


def limit_notes(meta: dict) -> list[str]:
    """What the checkpoint's recorded training says about how far to trust the estimate
    (benchmarks/results/limit.md: fc5 on Fashion-MNIST; nothing is said when the recipe is unknown)."""
    notes = []
    if meta.get("method") == "dense" and float(meta.get("l1", 0.0) or 0.0) == 0.0:
        notes.append("trained without L1: on fc5 the estimate overshot the measured limit by 4-47 pt without "
                     "L1 and came within 2 pt with it (train --l1 5e-5)")
    if meta.get("optimizer") == "adam":
        notes.append("trained with Adam: on fc5 with L1 the estimate overshot by 5 pt after Adam and came within "
                     "2 pt after the authors' recipe (train --optimizer sgd --lr 0.01 --lr-schedule constant)")
    return notes


def limit(model_path: Path, *, data: DataOptions | None = None, config: LimitConfig | None = None,
          measure: bool = False, points: int = 101, consent: Consent | None = None,
          input_shape: tuple[int, ...] | None = None, progress: bool = True) -> LimitResult:
    """Predict how much of ``model_path`` one-shot global magnitude pruning can remove (Zhang et al.,
    METHODS.md §1), from a fixed subset of the training split; ``measure`` also sweeps ``points``
    sparsities without fine-tuning and finds the actual limit on the validation split (§1.5)."""
    from .analysis.limit import LimitConfig, estimate_limit, measure_limit

    config = config or LimitConfig()
    config.validate()
    loaded = load_model(model_path, consent=consent, input_shape=input_shape)
    data = _data_for(loaded.checkpoint.meta, data, consent, str(model_path))
    tr, val = data.train_val()
    if not isinstance(tr, ArrayDataset):
        raise InputError(f"the limit estimate runs on in-memory data (a built-in set or .npz), not on {tr.name}")
    _check_fits(loaded, tr)
    est = estimate_limit(loaded.model, tr, config, l1=float(loaded.checkpoint.meta.get("l1", 0.0)), progress=progress)
    measured = measure_limit(loaded.model, val, points, progress=progress) if measure else None
    error = 100.0 * (est.sparsity - measured.limits["0.1"]) if measured else None
    return LimitResult(str(model_path), data.data, est, measured, error, limit_notes(loaded.checkpoint.meta))
