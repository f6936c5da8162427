"""Pruning: methods (collect / score), shared selection, schedules and physical channel removal."""

from edgeprune.pruning.base import Method, PruneSpec, available_methods, get_method, method_class, register
from edgeprune.pruning.magnitude import Magnitude, Random
from edgeprune.pruning.masks import (
    LayerSparsity,
    SparsityReport,
    apply_masks,
    masks_from_model,
    prunable_layers,
    select,
    sparsity_report,
)
from edgeprune.pruning.schedule import FinetuneFn, PruneResult, PruneStep, prune
from edgeprune.pruning.structured import ScoreImportance, prune_channels, replay_plan

__all__ = [
    "FinetuneFn",
    "LayerSparsity",
    "Magnitude",
    "Method",
    "PruneResult",
    "PruneSpec",
    "PruneStep",
    "Random",
    "ScoreImportance",
    "SparsityReport",
    "apply_masks",
    "available_methods",
    "get_method",
    "masks_from_model",
    "method_class",
    "prunable_layers",
    "prune",
    "prune_channels",
    "register",
    "select",
    "sparsity_report",
    "replay_plan",
]
