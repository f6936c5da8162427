"""Train, fine-tune and evaluate on in-memory arrays (indexed directly: the fast path) or on a
streamed data set (DataLoader workers). Seeded and deterministic on CPU.

Masks stay enforced during fine-tuning: pruned weights are re-zeroed after every optimizer step, so
Adam's momentum cannot regrow them.

On CUDA (``TrainConfig.device``) the loop runs under fp16 autocast with loss scaling (``compute``);
under torchrun the model is DDP-wrapped, each rank reads its ``DistributedSampler`` share of every
global batch, and with ``resume`` each epoch's state is saved so a restarted run continues from it.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import distributed
from .compute import autocast, grad_scaler
from .data import ArrayDataset
from .data.stream import Data
from .errors import InputError
from .pruning.masks import apply_masks
from .model_io import set_mode
from .progress import progress_bar


@dataclass
class TrainConfig:
    """How to train: Adam with a cosine decay to zero over the whole run (fine-tuning too) by default;
    SGD with momentum 0.9 and a constant rate is Zhang et al.'s recipe (METHODS.md section 1.4)."""

    epochs: float = 5.0
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    l1: float = 0.0          # L1 penalty on every weight and bias (LOMP training, see l1_penalty)
    seed: int = 0
    cosine: bool = True
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9, no weight decay unless weight_decay is set)
    device: str = "cpu"      # a torch device ("cpu", "cuda:0"); compute.resolve_device turns --device into one


OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
LR_SCHEDULES = ("cosine", "constant")


def check_recipe(optimizer: str, lr_schedule: str = "cosine") -> None:
    """An unknown optimizer or learning-rate schedule is an InputError naming the choices."""
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r} (choose from: {', '.join(OPTIMIZERS)})")
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {lr_schedule!r} (choose from: {', '.join(LR_SCHEDULES)})")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    check_recipe(cfg.optimizer)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=SGD_MOMENTUM, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# Fine-tune learning rates (Adam, cosine decay to zero), measured on Fashion-MNIST validation splits:
# unstructured pruning leaves few weights that must move far (lenet300 at 90 %, 2 epochs: val 87.1 %
# at 5e-4, 88.6 % at 2e-3); channel pruning keeps dense BatchNorm blocks that a gentle rate
# preserves (resnet8 at 50 % MACs, 0.5 epoch: val 91.0 % at 5e-4, 90.8 % at 2e-3, 89.3 % at 5e-3).
FINETUNE_LR = {"weight": 2e-3, "channel": 5e-4}
# The accuracy-gated schedule trains through its pruning events and then retrains a much smaller
# network: fc5 activation pruning, 14 epochs, seed 0, val % at 2e-3 / 4e-3 / 8e-3 / 1.6e-2:
# 94x 84.5 / 85.3 / 86.4 / 86.2 (the faster rate also retires more neurons), 20x 89.1 / 89.3 / 89.2 / 89.0.
GATED_LR = 8e-3


def finetune_lr(granularity: str, schedule: str | None = None) -> float:
    """Default fine-tune learning rate for a pruning granularity (and schedule: gated has its own)."""
    if schedule == "gated":
        return GATED_LR
    return FINETUNE_LR.get(granularity, 1e-3)


@dataclass
class TrainLog:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)   # mean loss per epoch (or per partial epoch)
    val_accuracy: list[float] = field(default_factory=list)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |θ| over every parameter named *.weight or *.bias, norm layers included.

    This is the L1 term of Zhang et al.'s LOMP training (their code, METHODS.md §1.4): wider than
    the pruned pool (Conv/Linear weights), and the same term enters the pruning-limit loss.
    """
    terms = [p.abs().sum() for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _epochs(ds: Data, batch_size: int, seed: int, device: torch.device) -> tuple[int, Callable[[int], Iterable]]:
    """(batches per epoch, a function returning epoch e's shuffled (x, y) batches on ``device``).

    ``batch_size`` is the global batch: under torchrun each of the W ranks takes batch_size / W of it
    (its DistributedSampler share), so a recipe (and its learning rate) means the same on any number
    of ranks."""
    world = distributed.world_size() if distributed.active() else 1
    sampler = None
    if world > 1:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(ds)), num_replicas=world, rank=distributed.rank(), shuffle=True,
                                     seed=seed)
        batch_size = max(1, batch_size // world)
    if isinstance(ds, ArrayDataset):
        x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
        if device.type != "cpu":   # in-memory sets are small by construction: held on the GPU whole
            x, y = x.to(device), y.to(device)
        gen = torch.Generator().manual_seed(seed)

        def epoch(e: int) -> Iterable:
            if sampler is not None:
                sampler.set_epoch(e)
                order = torch.tensor(list(sampler), device=x.device)
            else:
                order = torch.randperm(len(y), generator=gen).to(x.device)
            return ((x[idx], y[idx]) for idx in order.split(batch_size))

        n = len(sampler) if sampler is not None else len(y)
        return math.ceil(n / batch_size), epoch
    loader = ds.loader(batch_size, shuffle=True, seed=seed, sampler=sampler, pin_memory=device.type == "cuda")

    def stream(e: int) -> Iterable:
        if sampler is not None:
            sampler.set_epoch(e)
        return ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)) for xb, yb in loader)

    return len(loader), stream


@dataclass
class Resume:
    """Where ``train`` keeps its state after every epoch, so that a restarted run (torchrun
    --max-restarts) continues where it stopped. Each ``train`` call of a run has its own file (a
    schedule fine-tunes once per step); ``key`` names the run, so a stale folder is never resumed."""

    folder: Path
    key: str
    calls: int = 0
    resumed: list[dict] = field(default_factory=list)   # {"call", "epoch", "step"} of every resumed call

    def next_file(self) -> Path:
        self.calls += 1
        return self.folder / f"train-{self.calls}.pt"


def _load_state(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("key") == key else None


def _save_state(path: Path, state: dict) -> None:
    from .fileio import atomic_write

    if distributed.is_main():   # every rank holds the same weights: one writer
        atomic_write(path, lambda f: torch.save(state, f), force=True)
    distributed.barrier()


def train(model: nn.Module, train_set: Data, cfg: TrainConfig, *, val_set: Data | None = None,
          masks: dict[str, torch.Tensor] | None = None, progress: bool = True, description: str = "train",
          on_epoch_end: Callable[[int, float], bool] | None = None, resume: Resume | None = None) -> TrainLog:
    """Train ``model`` in place for ``cfg.epochs`` epochs (fractional epochs run that share of the batches).

    ``on_epoch_end(epoch, train_accuracy)`` runs after every epoch with the running training accuracy
    of that epoch (as Keras reports it, in [0, 1]; over all ranks under torchrun); it may update
    ``masks`` in place (the new masks apply from the next step on) and returns True to stop training early.
    The model is on ``cfg.device`` while it trains and back on the CPU when this returns.
    """
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    per_epoch, batches = _epochs(train_set, cfg.batch_size, cfg.seed, device)
    total = max(1, int(round(cfg.epochs * per_epoch)))
    model.to(device)
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.cosine else None
    scaler = grad_scaler(device)
    loss_fn = nn.CrossEntropyLoss()
    log = TrainLog()
    t0 = time.perf_counter()
    step, running, count, hits, seen, epoch, done = 0, 0.0, 0, 0, 0, 0, False
    state_file = resume.next_file() if resume is not None else None
    state = _load_state(state_file, resume.key) if state_file is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched:
            sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, done = state["step"], state["epoch"], state["done"]
        log.losses, log.val_accuracy = list(state["losses"]), list(state["val_accuracy"])
        resume.resumed.append({"call": resume.calls, "epoch": epoch, "step": step})
    set_mode(model, True)
    with progress_bar(description, total=total, enabled=progress and distributed.is_main()) as advance:
        advance(step)
        while step < total and not done:
            for xb, yb in batches(epoch):
                if step >= total:
                    break
                opt.zero_grad(set_to_none=True)
                with autocast(device):
                    logits = net(xb)
                    loss = loss_fn(logits, yb)
                    if cfg.l1 > 0:
                        loss = loss + cfg.l1 * l1_penalty(model)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched:
                    sched.step()
                if masks:
                    apply_masks(model, masks)
                running += loss.item()
                count += 1
                if on_epoch_end is not None:
                    hits += int((logits.detach().argmax(1) == yb).sum())
                    seen += len(yb)
                step += 1
                advance(1)
            log.losses.append(running / max(count, 1))
            running, count = 0.0, 0
            if val_set is not None:
                log.val_accuracy.append(evaluate(model, val_set, device=device))
                set_mode(model, True)
            epoch += 1
            if on_epoch_end is not None:
                hits, seen = distributed.all_sum(hits, seen)
                stop = on_epoch_end(epoch, hits / max(seen, 1))
                hits, seen = 0, 0
                set_mode(model, True)
                done = bool(stop)
            done = done or step >= total
            if state_file is not None:
                _save_state(state_file, {
                    "key": resume.key, "step": step, "epoch": epoch, "done": done, "losses": log.losses,
                    "val_accuracy": log.val_accuracy, "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched else {}, "scaler": scaler.state_dict(),
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
    set_mode(model, False)
    model.to("cpu")
    log.steps = step
    log.seconds = time.perf_counter() - t0
    return log


@contextlib.contextmanager
def _on(model: nn.Module, device: torch.device | str):
    """``model`` on ``device`` for the block, then back on the device it came from: a model that
    `train` holds on a GPU stays there through its per-epoch validation."""
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1024, device: torch.device | str = "cpu") -> np.ndarray:
    """Logits for every row of ``x`` (model switched to eval mode, on ``device`` while it runs)."""
    set_mode(model, False)
    with _on(model, device):
        out = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
               for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, ds: Data, batch_size: int = 1024, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent, or the data set's own ``metric(outputs, targets)`` (``--metric``).
    Under torchrun rank 0 evaluates (every rank holds the same weights) and the others receive its figure."""
    if distributed.active():
        return distributed.broadcast_object(_evaluate(model, ds, batch_size, device) if distributed.is_main() else None)
    return _evaluate(model, ds, batch_size, device)


def _evaluate(model: nn.Module, ds: Data, batch_size: int, device: torch.device | str) -> float:
    if len(ds) == 0:
        return float("nan")
    if isinstance(ds, ArrayDataset):
        logits = predict(model, ds.x, batch_size, device)
        if ds.metric is None:
            return float((logits.argmax(1) == ds.y).mean() * 100.0)
        return run_metric(ds.metric, torch.from_numpy(logits), torch.from_numpy(ds.y))
    set_mode(model, False)
    outs, targets = [], []
    with _on(model, device), torch.no_grad():
        for xb, yb in ds.loader(min(batch_size, 256), pin_memory=torch.device(device).type == "cuda"):
            outs.append(model(xb.to(device, non_blocking=True)).float().cpu())
            targets.append(yb)
    out, target = torch.cat(outs), torch.cat(targets)
    if ds.metric is None:
        return float((out.argmax(1) == target).float().mean() * 100.0)
    return run_metric(ds.metric, out, target)


def run_metric(fn: Callable, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    try:
        return float(fn(outputs, targets))
    except Exception as e:   # the user's metric failed: its message, not a traceback into edgeprune
        raise InputError(f"the metric {getattr(fn, '__module__', '?')}:{getattr(fn, '__name__', '?')} failed: "
                         f"{type(e).__name__}: {e}") from None
