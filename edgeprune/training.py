"""Train, fine-tune and evaluate on in-memory arrays (indexed directly: the fast path) or on a
streamed data set (DataLoader workers). Seeded and deterministic on CPU.

Masks stay enforced during fine-tuning: pruned weights are re-zeroed after every optimizer step, so
Adam's momentum cannot regrow them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

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


def _epochs(ds: Data, batch_size: int, seed: int) -> tuple[int, Callable[[], Iterable]]:
    """(batches per epoch, a function returning one epoch's shuffled (x, y) batches)."""
    if isinstance(ds, ArrayDataset):
        x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
        gen = torch.Generator().manual_seed(seed)

        def epoch() -> Iterable:
            order = torch.randperm(len(y), generator=gen)
            return ((x[idx], y[idx]) for idx in order.split(batch_size))

        return math.ceil(len(y) / batch_size), epoch
    loader = ds.loader(batch_size, shuffle=True, seed=seed)
    return len(loader), lambda: iter(loader)


def train(model: nn.Module, train_set: Data, cfg: TrainConfig, *, val_set: Data | None = None,
          masks: dict[str, torch.Tensor] | None = None, progress: bool = True, description: str = "train",
          on_epoch_end: Callable[[int, float], bool] | None = None) -> TrainLog:
    """Train ``model`` in place for ``cfg.epochs`` epochs (fractional epochs run that share of the batches).

    ``on_epoch_end(epoch, train_accuracy)`` runs after every epoch with the running training accuracy
    of that epoch (as Keras reports it, in [0, 1]); it may update ``masks`` in place (the new masks
    apply from the next step on) and returns True to stop training early.
    """
    seed_everything(cfg.seed)
    per_epoch, batches = _epochs(train_set, cfg.batch_size, cfg.seed)
    total = max(1, int(round(cfg.epochs * per_epoch)))
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.cosine else None
    loss_fn = nn.CrossEntropyLoss()
    log = TrainLog()
    t0 = time.perf_counter()
    set_mode(model, True)
    step, running, count, hits, seen, epoch = 0, 0.0, 0, 0, 0, 0
    with progress_bar(description, total=total, enabled=progress) as advance:
        while step < total:
            for xb, yb in batches():
                if step >= total:
                    break
                opt.zero_grad(set_to_none=True)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                if cfg.l1 > 0:
                    loss = loss + cfg.l1 * l1_penalty(model)
                loss.backward()
                opt.step()
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
                log.val_accuracy.append(evaluate(model, val_set))
                set_mode(model, True)
            epoch += 1
            if on_epoch_end is not None:
                stop = on_epoch_end(epoch, hits / max(seen, 1))
                hits, seen = 0, 0
                set_mode(model, True)
                if stop:
                    break
    set_mode(model, False)
    log.steps = step
    log.seconds = time.perf_counter() - t0
    return log


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits for every row of ``x`` (model switched to eval mode)."""
    set_mode(model, False)
    out = [model(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, ds: Data, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent, or the data set's own ``metric(outputs, targets)`` (``--metric``)."""
    if len(ds) == 0:
        return float("nan")
    if isinstance(ds, ArrayDataset):
        logits = predict(model, ds.x, batch_size)
        if ds.metric is None:
            return float((logits.argmax(1) == ds.y).mean() * 100.0)
        return _metric(ds.metric, torch.from_numpy(logits), torch.from_numpy(ds.y))
    set_mode(model, False)
    outs, targets = [], []
    with torch.no_grad():
        for xb, yb in ds.loader(min(batch_size, 256)):
            outs.append(model(xb))
            targets.append(yb)
    out, target = torch.cat(outs), torch.cat(targets)
    if ds.metric is None:
        return float((out.argmax(1) == target).float().mean() * 100.0)
    return _metric(ds.metric, out, target)


def _metric(fn: Callable, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    try:
        return float(fn(outputs, targets))
    except Exception as e:   # the user's metric failed: its message, not a traceback into edgeprune
        raise InputError(f"the metric {getattr(fn, '__module__', '?')}:{getattr(fn, '__name__', '?')} failed: "
                         f"{type(e).__name__}: {e}") from None
