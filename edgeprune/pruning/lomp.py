"""LOMP: L1-regularised One-shot Magnitude Pruning (Zhang et al., NeurIPS 2024; METHODS.md §1.4).

Train dense with an L1 penalty (`edgeprune train --l1 5e-5`), then prune once, globally, by
magnitude: the scores and selection are global magnitude pruning's. What makes it LOMP is the
L1-trained model and the choice of the sparsity: `--sparsity auto` takes the limit predicted
before pruning (`edgeprune.analysis.limit`), which is computed for exactly this pruning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from edgeprune.errors import InputError
from edgeprune.pruning.base import PruneSpec, register
from edgeprune.pruning.magnitude import Magnitude

if TYPE_CHECKING:
    from torch import nn

    from edgeprune.analysis.limit import LimitConfig
    from edgeprune.data import ArrayDataset


@register
class LOMP(Magnitude):
    """Global one-shot magnitude pruning of an L1-trained model; masks equal `magnitude`'s at equal sparsity."""

    name = "lomp"


def check_spec(spec: PruneSpec, auto: bool) -> None:
    """InputError unless `spec` is what LOMP and the limit estimate are defined for."""
    spec.validate()   # also fills in the method's default scope
    if auto and spec.method != "lomp":
        raise InputError(f"--sparsity auto needs --method lomp (the predicted limit is for one-shot global "
                         f"magnitude pruning), not {spec.method!r}")
    if spec.method == "lomp" and (spec.granularity, spec.scope, spec.schedule) != ("weight", "global", "oneshot"):
        raise InputError("lomp is one-shot global weight pruning: use --granularity weight --scope global "
                         "--schedule oneshot")


def resolve(spec: PruneSpec, model: nn.Module, train: ArrayDataset, config: LimitConfig | None, l1: float,
            progress: bool) -> tuple[PruneSpec, dict]:
    """The spec to prune with and what LOMP reports: with `config` (--sparsity auto), the sparsity
    becomes the predicted limit s*, and the estimate goes into the details."""
    details: dict = {"l1": l1}
    if l1 <= 0:
        details["note"] = "the model was not trained with --l1; LOMP expects an L1-trained model"
    if config is None:
        return spec, details
    from edgeprune.analysis.limit import estimate_limit

    est = estimate_limit(model, train, config, l1=l1, progress=progress)
    if not est.sparsity < 1.0:
        raise InputError("the predicted limit is 100 % (the Hessian is zero on this data); give a number to --sparsity")
    details["predicted_limit"] = est.to_dict()
    return replace(spec, sparsity=est.sparsity), details
