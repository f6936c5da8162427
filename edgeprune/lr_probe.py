"""The default fine-tune learning rate, found on the model being fine-tuned.

A constant measured on small MLPs is no default for real networks (a ResNet-18 at 50 % sparsity lost
8 pt at 2e-3 and nothing at 2e-4), so when no --lr is given the pruned model is trained briefly from
the same start at each rate of a small grid around its granularity's measured rate
(``training.finetune_lr`` x 4, 1, 1/4, 1/16) and the rate whose validation loss is lowest is kept.
Each candidate trains ``probe_steps`` steps (PROBE_STEPS, at most a quarter of the fine-tune itself)
with the fine-tune's own recipe (Adam, cosine over the probe) on a copy; the model passed in is
untouched. Under torchrun the probe is a DDP fine-tune like the real one and every rank sees rank 0's
losses, so all ranks choose the same rate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from . import distributed
from .data.stream import Data, as_arrays
from .training import TrainConfig, evaluate, finetune_lr, train

GRID = (4.0, 1.0, 0.25, 0.0625)   # multiples of the granularity's measured rate
PROBE_STEPS = 200
PROBE_VAL = 1024                  # validation samples the probe's loss is measured on


@dataclass
class LrChoice:
    """The fine-tune rate and how it was chosen (recorded in the checkpoint's meta, printed by the CLI)."""

    lr: float
    how: str                                   # "--lr", "probe", "gated default" or "no fine-tune"
    steps: int = 0                             # probe steps per candidate
    measure: str = ""                          # what the probe compared: "validation loss" or "-validation metric"
    scores: dict[str, float] = field(default_factory=dict)   # candidate rate -> that measure (lower is better)

    def describe(self) -> str:
        if self.how != "probe":
            return self.how
        return f"probe: lowest {self.measure} of {len(self.scores)} rates after {self.steps} steps each"

    def to_dict(self) -> dict:
        return asdict(self)


def probe_steps(total_steps: int) -> int:
    return max(1, min(PROBE_STEPS, math.ceil(total_steps / 4)))


def val_score(model: nn.Module, val: Data, device: torch.device) -> float:
    """Lower is better: cross-entropy on PROBE_VAL validation samples, or minus the task's own metric."""
    sample = as_arrays(val, PROBE_VAL)
    if sample.metric is not None:
        return -evaluate(model, sample, device=device)

    def loss() -> float:
        from .training import predict

        logits = torch.from_numpy(predict(model, sample.x, device=device))
        value = float(nn.functional.cross_entropy(logits, torch.from_numpy(sample.y)))
        return value if math.isfinite(value) else math.inf

    if distributed.active():
        return distributed.broadcast_object(loss() if distributed.is_main() else None)
    return loss()


def probe(model: nn.Module, train_set: Data, val_set: Data, cfg: TrainConfig, masks: dict[str, torch.Tensor] | None,
          candidates: list[float], steps: int) -> LrChoice:
    """Train a copy of ``model`` for ``steps`` steps at each rate; keep the rate of lowest validation loss."""
    per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    scores = {}
    for lr in candidates:
        m = copy.deepcopy(model)
        train(m, train_set, replace(cfg, lr=lr, epochs=steps / per_epoch), masks=masks, progress=False,
              description=f"lr probe {lr:g}")
        scores[f"{lr:g}"] = val_score(m, val_set, torch.device(cfg.device))
    best = min(candidates, key=lambda lr: scores[f"{lr:g}"])
    measure = "validation loss" if as_arrays(val_set, 1).metric is None else "-validation metric"
    return LrChoice(best, "probe", steps, measure, scores)


def choose(model: nn.Module, train_set: Data, val_set: Data, cfg: TrainConfig, masks: dict[str, torch.Tensor] | None,
           granularity: str, total_steps: int) -> LrChoice:
    """The probe over the grid around ``granularity``'s measured rate, for a fine-tune of ``total_steps``."""
    base = finetune_lr(granularity)
    return probe(model, train_set, val_set, cfg, masks, [base * k for k in GRID], probe_steps(total_steps))
