"""The low-rank view of a pruned model (METHODS.md §2.5): per hidden layer, rank and singular values
before (the dense baseline) and after pruning, and the PCA rank-reduction baseline at equal ranks.

A layer's weight is read as a matrix out x (in·k·k) (Conv kernels flattened per output channel).
Hidden layers are every Conv/Linear but the classifier; layers are matched by qualified name, so a
compacted layer (fewer rows, and fewer columns where its input was compacted) is compared with the
dense layer it came from.

The PCA baseline follows the authors' `pca_analysis.py`: for each hidden layer with pruned rank r,
fit `PCA(n_components=r)` on the dense weight in Keras layout (in x out: input units are the
samples), replace the weight by the reconstruction (which adds the mean back, so its rank is at
most r + 1), and measure test accuracy with no retraining.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from edgeprune.data import ArrayDataset
from edgeprune.errors import InputError, ShapeError
from edgeprune.fileio import atomic_write
from edgeprune.pruning.masks import PRUNABLE_TYPES, prunable_layers
from edgeprune.training import evaluate

SCHEMA = "edgeprune.lowrank/1"
# Weights are float32: singular values below this relative level are rounding noise, whatever
# precision the SVD itself runs in.
EPS = float(np.finfo(np.float32).eps)
RANK_RULE = (f"numerical rank = number of singular values > s_max * max(rows, cols) * eps, eps = {EPS:.3g} "
             "(float32; numpy.linalg.matrix_rank's rule for float32 matrices)")
JSON_NAME, PLOT_NAME = "analysis.json", "singular_values.png"


@dataclass
class LayerRank:
    """One hidden layer, dense vs pruned. Shapes are of the weight matrix out x (in·k·k)."""

    name: str
    kind: str
    dense_shape: list[int]
    pruned_shape: list[int]
    sparsity: float                  # weights of the dense layer that are zero or removed in the pruned one
    dense_rank: int
    pruned_rank: int
    pca_rank: int                    # rank of the dense weight's PCA reconstruction with pruned_rank components
    dense_tol: float                 # the rank tolerances (RANK_RULE)
    pruned_tol: float
    dense_energy_top_r: float        # share of the dense layer's sum of s^2 in its top pruned_rank values
    dense_singular_values: list[float] = field(repr=False)
    pruned_singular_values: list[float] = field(repr=False)


@dataclass
class LowRankAnalysis:
    """Ranks and singular values per hidden layer, and test accuracy of dense, pruned and PCA models."""

    pruned: str
    baseline: str
    arch: str
    method: str
    sparsity: float | None
    data: str
    test_samples: int
    dense_accuracy: float
    pruned_accuracy: float
    pca_accuracy: float              # dense model, every hidden layer PCA-reduced to the pruned rank, no retraining
    layers: list[LayerRank]
    rank_rule: str = RANK_RULE
    baseline_is_source: bool | None = None   # the baseline file is the one the pruned model was made from

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}


def weight_matrix(module: nn.Module) -> np.ndarray:
    """The layer's weight as a float32 matrix out x (in·k·k)."""
    w = module.weight.detach().cpu().float()
    return w.reshape(w.shape[0], -1).numpy()


def singular_values(w: np.ndarray) -> np.ndarray:
    """Singular values, largest first (SVD in float64 so the float32 rounding level stays visible)."""
    return np.linalg.svd(w.astype(np.float64), compute_uv=False)


def numerical_rank(sv: np.ndarray, shape: tuple[int, ...]) -> tuple[int, float]:
    """(rank, tolerance) by RANK_RULE."""
    if sv.size == 0:
        return 0, 0.0
    tol = float(sv[0]) * max(shape) * EPS
    return int(np.sum(sv > tol)), tol


def pca_reduce(w: np.ndarray, rank: int) -> np.ndarray:
    """`w` (out x in) replaced by its PCA reconstruction with `rank` components, fitted with the
    input units as samples (Keras layout in x out) and the mean added back: rank <= rank + 1."""
    from sklearn.decomposition import PCA

    samples = w.T.astype(np.float64)
    if rank <= 0:
        rec = np.broadcast_to(samples.mean(axis=0), samples.shape)   # no components: the mean alone
    else:
        rank = min(rank, *samples.shape)
        pca = PCA(n_components=rank, svd_solver="full").fit(samples)
        rec = pca.inverse_transform(pca.transform(samples))
    return np.ascontiguousarray(rec.T, dtype=np.float32)


def hidden_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear layers except the classifier, by qualified name (attention has no one output to rank)."""
    return {n: m for n, m in prunable_layers(model, exclude_output=True).items() if isinstance(m, PRUNABLE_TYPES)}


def analyze(pruned: nn.Module, dense: nn.Module, test: ArrayDataset, *, pruned_path: str = "",
            baseline_path: str = "", arch: str = "", method: str = "", sparsity: float | None = None,
            baseline_is_source: bool | None = None) -> LowRankAnalysis:
    """Compare every hidden layer of `pruned` with the same-named layer of `dense` and measure the
    PCA rank-reduction baseline at the pruned ranks on `test`."""
    p_layers, d_layers = hidden_layers(pruned), hidden_layers(dense)
    if not d_layers:
        raise InputError("the baseline has no hidden Conv/Linear layers to analyse")
    if list(p_layers) != list(d_layers):
        raise InputError(f"pruned and baseline models have different hidden layers "
                         f"({_names(p_layers)} vs {_names(d_layers)}): pass the dense model it was pruned from")
    pca_model = copy.deepcopy(dense)
    pca_layers = hidden_layers(pca_model)
    rows = []
    for name, dm in d_layers.items():
        pm = p_layers[name]
        wd, wp = weight_matrix(dm), weight_matrix(pm)
        if type(pm) is not type(dm) or any(a > b for a, b in zip(wp.shape, wd.shape)):
            raise ShapeError(f"layer {name}: pruned {type(pm).__name__} {wp.shape[0]}x{wp.shape[1]} does not fit in "
                             f"baseline {type(dm).__name__} {wd.shape[0]}x{wd.shape[1]}: not the model it was pruned from")
        sd, sp = singular_values(wd), singular_values(wp)
        rd, tol_d = numerical_rank(sd, wd.shape)
        rp, tol_p = numerical_rank(sp, wp.shape)
        rec = pca_reduce(wd, rp)
        with torch.no_grad():
            target = pca_layers[name].weight
            target.copy_(torch.from_numpy(rec).reshape(target.shape))
        energy = sd ** 2
        rows.append(LayerRank(
            name=name, kind=type(dm).__name__, dense_shape=list(wd.shape), pruned_shape=list(wp.shape),
            sparsity=1.0 - int(np.count_nonzero(wp)) / wd.size, dense_rank=rd, pruned_rank=rp,
            pca_rank=numerical_rank(singular_values(rec), rec.shape)[0], dense_tol=tol_d, pruned_tol=tol_p,
            dense_energy_top_r=float(energy[:rp].sum() / energy.sum()) if energy.sum() > 0 else 0.0,
            dense_singular_values=sd.tolist(), pruned_singular_values=sp.tolist()))
    return LowRankAnalysis(
        pruned=pruned_path, baseline=baseline_path, arch=arch, method=method, sparsity=sparsity, data=test.name,
        test_samples=len(test), dense_accuracy=evaluate(dense, test), pruned_accuracy=evaluate(pruned, test),
        pca_accuracy=evaluate(pca_model, test), layers=rows, baseline_is_source=baseline_is_source)


def _names(layers: dict[str, nn.Module]) -> str:
    return ", ".join(layers) or "none"


def singular_value_png(result: LowRankAnalysis, out: BinaryIO) -> None:
    """Singular values per hidden layer, dense and pruned, on a log scale; a dashed line at the pruned rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.layers)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False)
    for ax, L in zip(axes.flat, result.layers):
        for values, tol, label, color in ((L.dense_singular_values, L.dense_tol, f"dense (rank {L.dense_rank})", "#4c72b0"),
                                          (L.pruned_singular_values, L.pruned_tol, f"pruned (rank {L.pruned_rank})", "#dd8452")):
            v = np.asarray(values)
            keep = v > tol   # values under the rank tolerance are rounding noise (and zeros have no log)
            ax.semilogy(np.arange(1, v.size + 1)[keep], v[keep], ".-", ms=3, lw=1, label=label, color=color)
        ax.axvline(max(L.pruned_rank, 0.5), color="#888888", ls="--", lw=0.8)
        shape = "x".join(map(str, L.dense_shape))
        ax.set_title(f"{L.name} ({L.kind} {shape}), top-r energy {L.dense_energy_top_r:.1%}", fontsize=8)
        ax.set_xlabel("index i", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    sparsity = "" if result.sparsity is None else f" at {result.sparsity:.1%} sparsity"
    fig.suptitle(f"{result.method}{sparsity}: test acc pruned {result.pruned_accuracy:.2f} %, PCA at equal ranks "
                 f"{result.pca_accuracy:.2f} %, dense {result.dense_accuracy:.2f} %", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=110)
    finally:
        plt.close(fig)


def write_analysis(result: LowRankAnalysis, out_dir: Path, force: bool = False) -> list[Path]:
    """Write analysis.json and singular_values.png into `out_dir` (refused if they exist, unless `force`)."""
    out_dir = Path(out_dir)
    paths = [out_dir / JSON_NAME, out_dir / PLOT_NAME]
    for p in paths:
        if p.exists() and not force:
            raise InputError(f"output {p} exists (use --force to overwrite)")
    atomic_write(paths[0], (json.dumps(result.to_dict(), indent=2) + "\n").encode(), force=True)
    atomic_write(paths[1], lambda f: singular_value_png(result, f), force=True)
    return paths
