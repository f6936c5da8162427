"""Schedules: how a method's scores become a pruned model, in one shot or step by step.

A schedule wraps any registered method and either granularity; fine-tuning is a callback so this
module never owns a training loop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.pruning.base import PruneSpec, get_method
from edgeprune.pruning.masks import apply_masks, require_prunable, select
from edgeprune.pruning.semistructured import select_2to4
from edgeprune.pruning.structured import TOLERANCE, budget_count, kept_whole, prune_channels


@dataclass
class PruneStep:
    """One prune (+ fine-tune) step: the sparsity asked for, the one reached, and wall times."""

    step: int
    sparsity: float
    achieved: float
    seconds: float                # pruning alone (scoring, selection, surgery)
    finetune_seconds: float = 0.0


@dataclass
class PruneResult:
    """Masks (weight granularity) or the channel plan (channel granularity), and the step log."""

    masks: dict[str, torch.Tensor] | None
    plan: list[dict] = field(default_factory=list)
    steps: list[PruneStep] = field(default_factory=list)
    seconds: float = 0.0          # pruning alone, summed over steps; fine-tuning is in steps[i].finetune_seconds
    details: dict = field(default_factory=dict)  # the method's own report (Method.details)


# (model, masks or None, share of the fine-tune budget in (0, 1]) -> trains `model` in place.
# With masks, the callee must re-apply them after every optimizer step (masks.apply_masks).
FinetuneFn = Callable[[nn.Module, "dict[str, torch.Tensor] | None", float], None]


def targets(spec: PruneSpec) -> list[float]:
    """The sparsity to reach at each step: [s] for oneshot; cubic ramp (Zhu & Gupta 2017) for iterative.

    The cubic prunes fast while many weights are redundant and slowly near the end, where each
    removal costs more accuracy and fine-tuning needs time to recover.
    """
    spec.validate()   # a schedule left None is the method's own
    if spec.schedule == "oneshot":
        return [float(spec.sparsity)]
    n = spec.steps
    return [float(spec.sparsity) * (1 - (1 - t / n) ** 3) for t in range(1, n + 1)]


def prune(
    model: nn.Module,
    spec: PruneSpec,
    example_input: torch.Tensor,
    finetune: FinetuneFn | None = None,
    batches: Iterable[torch.Tensor] | None = None,
) -> PruneResult:
    """Prune `model` in place as `spec` says, calling `finetune` after every step.

    Weight granularity: masks only shrink across steps (a pruned weight stays pruned even if the
    method would now rank it higher), and the final masks are returned. Channel granularity:
    channels are physically removed at each step and the plan accumulates; sparsity is measured
    against the model as passed in, so step t reaches s_t of the original budget. (The per-layer
    cap of structured.MAX_LAYER_RATIO applies to each step's widths, so over several steps a layer
    can shrink further than in one shot.) A final result more than structured.TOLERANCE away from
    the target, which coarse round_to steps can cause, draws a warning; PruneStep.achieved has it.
    """
    spec.validate()
    if spec.schedule == "gated":   # e.g. activation's default: it trains while it prunes
        raise InputError("schedule 'gated' trains while it prunes: run it with edgeprune.api.compress "
                         "(or edgeprune.pruning.gated.prune_gated), or pass schedule 'oneshot' or 'iterative'")
    require_prunable(model)
    method = get_method(spec.method, seed=spec.seed, **spec.options)
    steps = targets(spec)
    share = 1.0 / len(steps)
    result = PruneResult(masks=None)
    base = budget_count(model, example_input, spec.budget) if spec.granularity == "channel" else 0.0

    for t, target in enumerate(steps, start=1):
        step_start = time.perf_counter()
        stats = method.collect(model, batches)
        scores = method.score(model, stats)
        if spec.granularity in ("weight", "2:4"):
            if result.masks is not None:
                # already-removed weights rank below everything, so masks can only shrink
                scores = {n: s.masked_fill(~result.masks[n], float("-inf")) for n, s in scores.items()}
            if spec.granularity == "2:4":
                result.masks, dense_layers = select_2to4(scores, model)
            else:
                result.masks = select(scores, target, spec.scope)
            apply_masks(model, result.masks)
            kept = sum(int(m.sum()) for m in result.masks.values())
            total = sum(m.numel() for m in result.masks.values())
            achieved = 1.0 - kept / total if total else 0.0
        else:
            current = budget_count(model, example_input, spec.budget)
            # prune_channels counts against the model it is given; convert the step's target,
            # stated against the original model, into what is left to remove now
            remaining = 1.0 - (1.0 - target) * base / current if current else 0.0
            if remaining > 0:
                result.plan.extend(prune_channels(
                    model, example_input, scores, remaining, spec.scope, spec.budget, spec.round_to,
                    filter_scores=method.filter_scores(model, stats)))
            achieved = 1.0 - budget_count(model, example_input, spec.budget) / base if base else 0.0
        pruned_at = time.perf_counter()
        if finetune is not None:
            finetune(model, result.masks, share)
        result.steps.append(PruneStep(t, target, achieved, pruned_at - step_start, time.perf_counter() - pruned_at))

    result.seconds = sum(step.seconds for step in result.steps)
    method.finish(model, batches)
    result.details = method.details
    if spec.granularity == "2:4":   # the layers the pattern could not reach, with the reason
        result.details = {**method.details, "2:4 dense layers": dense_layers}
    if spec.granularity == "channel" and kept_whole(model):
        result.details = {**method.details, "channels kept whole": kept_whole(model)}
    final = result.steps[-1].achieved
    # 2:4 misses 0.5 only by the layers it must leave dense, which details["2:4 dense layers"] names
    if spec.granularity != "2:4" and abs(final - spec.sparsity) > TOLERANCE:
        warnings.warn(
            f"pruning reached {final:.3f} of {spec.budget if spec.granularity == 'channel' else 'weights'} "
            f"removed for a target of {spec.sparsity:g}: the nearest step"
            + (f" with round_to={spec.round_to}" if spec.granularity == "channel" else ""),
            stacklevel=2,
        )
    return result
