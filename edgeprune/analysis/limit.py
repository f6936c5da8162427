"""How far can one-shot global magnitude pruning go? The limit of Zhang et al. (NeurIPS 2024).

METHODS.md §1. Near the trained weights w* the loss sublevel set {L(w) <= L(w*) + ε} is an
ellipsoid with semi-axes sqrt(2ε/|λ_i|) (λ_i the Hessian's eigenvalues). Pruning a fraction s by
magnitude moves w* by R(s), the L2 norm of the removed weights. The predicted limit is the fixed
point

    s* = F(R(s*)),   F(R) = E_λ[ 1 / (1 + |λ| R² / (2ε)) ],   κ* = 1 − s*  (the fraction kept)

where E_λ is taken under the Hessian's spectral density, estimated by stochastic Lanczos
quadrature (SLQ): Hessian-vector products by double backward on a fixed data subset, Lanczos
with full re-orthogonalisation in float64, Ritz values as nodes and squared first components of
the eigenvectors as weights. The band κ* ± a_η/√D (a_η = sqrt(8 log(4/η))) is the
Approximate Kinematic Formula's tolerance.

`measure_limit` gives the number this predicts (METHODS.md §1.5, our protocol): the largest
sparsity of a 101-point one-shot global magnitude sweep, no fine-tuning, whose validation
accuracy stays within δ points of dense.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from edgeprune.data import ArrayDataset
from edgeprune.errors import InputError
from edgeprune.model_io import set_mode
from edgeprune.progress import progress_bar
from edgeprune.pruning.base import _is_int
from edgeprune.pruning.magnitude import Magnitude
from edgeprune.pruning.masks import apply_masks, prunable_layers, select, weight_of
from edgeprune.training import evaluate, l1_penalty

QUADRATURES = ("nodes", "grid")
ZERO_ROW = 1e-7          # a Hessian row with L1 norm below this counts as zero curvature (authors' code)
ZERO_NODE = 1e-30        # where the zero-curvature mass sits, so no division by zero (authors' code)
GRID_BINS = 100_000      # the authors' density grid (quadrature="grid")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class LimitConfig:
    """Settings of the estimate. Defaults follow the authors' code except where METHODS.md recommends otherwise."""

    subset: int = 10_000        # fixed, non-augmented training samples for ε and the HVPs
    steps: int = 128            # Lanczos steps m per probe (the code: 128)
    probes: int = 1             # SLQ probe vectors n_v (the code: 1)
    epsilon: str = "std"        # "std": std of the batch-128 training loss (the code); or a number: that fraction of L(w*)
    eta: float = 0.01           # AKF failure probability for the band
    zero_mass: bool = False     # add the zero-curvature mass from 100 Hessian rows (the code, conv nets only)
    quadrature: str = "nodes"   # "nodes": F on the Ritz nodes; "grid": the code's 1e5-bin smoothed density
    batch_size: int = 1000      # HVP batch (only speed; the product is the subset average either way)
    loss_batch: int = 128       # batch of the per-batch losses whose std is ε
    seed: int = 0

    def validate(self) -> None:
        """InputError for a setting a user got wrong."""
        for name in ("subset", "steps", "probes", "batch_size", "loss_batch"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 < self.eta < 1.0:
            raise InputError(f"eta must be in (0, 1), got {self.eta}")
        if self.quadrature not in QUADRATURES:
            raise InputError(f"unknown quadrature {self.quadrature!r} (choose from: {', '.join(QUADRATURES)})")
        self.epsilon_fraction()

    def epsilon_fraction(self) -> float | None:
        """None for the std rule, else the fraction of L(w*) that ε is."""
        if str(self.epsilon).strip().lower() == "std":
            return None
        try:
            frac = float(self.epsilon)
        except ValueError:
            raise InputError(f"epsilon must be 'std' or a positive fraction of the loss, got {self.epsilon!r}") from None
        if not frac > 0 or math.isinf(frac):
            raise InputError(f"epsilon must be 'std' or a positive fraction of the loss, got {self.epsilon!r}")
        return frac


# ---------------------------------------------------------------- the operator
def hessian_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the Hessian is taken over: every trainable one except norm layers' affine
    parameters (the authors freeze BatchNorm; its γ/β are not pruned and have an odd curvature scale)."""
    skip = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in skip]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float) -> torch.Tensor:
    # The training loss as the model was trained: CE plus the L1 term. (|θ| has zero curvature and
    # is the same for every batch, so it changes neither H nor the std rule for ε; it does change
    # L(w*) and so the fraction-of-loss rule.)
    loss = nn.functional.cross_entropy(model(x), y)
    return loss + l1 * l1_penalty(model) if l1 > 0 else loss


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def hvp_operator(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, l1: float = 0.0,
                 batch_size: int = 1000) -> Callable[[torch.Tensor], torch.Tensor]:
    """v (float64, flat over `params`) -> H v, H the Hessian of the mean loss over all of (x, y).

    Double backward per batch, weighted by batch size, so the result is the full-subset average
    whatever the batch size: Lanczos sees one deterministic operator. The model is put in eval mode.
    """
    set_mode(model, False)
    n = len(y)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        vs = [t.reshape(s).to(p.dtype) for t, s, p in zip(v.split(sizes), shapes, params)]
        out = torch.zeros(v.numel(), dtype=torch.float64)
        for b in _batches(n, batch_size):
            grads = torch.autograd.grad(_loss(model, x[b], y[b], l1), params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            hv = torch.autograd.grad(dot, params)
            out += torch.cat([h.reshape(-1) for h in hv]).double() * ((b.stop - b.start) / n)
        return out

    return matvec


# ---------------------------------------------------------------- Lanczos and SLQ
@dataclass
class Lanczos:
    """The tridiagonal T (alpha on the diagonal, beta off it) and the orthonormal basis Q (rows)."""

    alpha: np.ndarray
    beta: np.ndarray   # len(alpha) - 1
    basis: torch.Tensor

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes θ_j (eigenvalues of T) and Gauss quadrature weights τ_j = U[0, j]² (they sum to 1)."""
        k = len(self.alpha)
        t = np.diag(self.alpha) + np.diag(self.beta, 1) + np.diag(self.beta, -1) if k > 1 else np.diag(self.alpha)
        theta, u = np.linalg.eigh(t)
        return theta, u[0] ** 2


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int,
            tick: Callable[..., None] = lambda *a, **k: None) -> Lanczos:
    """`steps` Lanczos iterations from v0, all in float64, each new vector re-orthogonalised
    against every earlier one, twice ("twice is enough": one pass leaves O(ε·κ) drift, and the
    drift is what makes plain Lanczos invent spurious copies of the extreme eigenvalues).
    Stops early when the Krylov space is invariant (β ≈ 0)."""
    dim = v0.numel()
    steps = min(steps, dim)
    q = torch.zeros(steps, dim, dtype=torch.float64)
    q[0] = v0.double() / v0.double().norm()
    alpha, beta = [], []
    for j in range(steps):
        w = matvec(q[j])
        a = float(w @ q[j])
        alpha.append(a)
        tick()
        if j == steps - 1:
            break
        w = w - a * q[j] - (beta[-1] * q[j - 1] if j else 0.0)
        for _ in range(2):
            w = w - q[:j + 1].T @ (q[:j + 1] @ w)
        b = float(w.norm())
        if b <= 1e-10 * max(abs(a), 1.0):
            tick(steps - 1 - j)   # invariant subspace: T is exact, the remaining steps are not needed
            break
        beta.append(b)
        q[j + 1] = w / b
    k = len(alpha)
    return Lanczos(np.array(alpha), np.array(beta[:k - 1]), q[:k])


@dataclass
class Spectrum:
    """A discrete spectral measure: eigenvalue nodes and weights summing to 1."""

    nodes: np.ndarray
    weights: np.ndarray

    def expect(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        return float(np.sum(self.weights * f(self.nodes)))


def slq(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int, probes: int, seed: int = 0,
        tick: Callable[..., None] = lambda *a, **k: None) -> Spectrum:
    """Stochastic Lanczos quadrature: `probes` Rademacher start vectors, their Ritz nodes and weights pooled."""
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(probes):
        v = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1
        theta, tau = lanczos(matvec, v, steps, tick).ritz()
        nodes.append(theta)
        weights.append(tau / probes)
    return Spectrum(np.concatenate(nodes), np.concatenate(weights))


def grid_spectrum(spec: Spectrum, bins: int = GRID_BINS) -> Spectrum:
    """The authors' smoothed density (PyHessian-style): Gaussians of variance 1e-10·max(1, range)
    at each node, sampled on `bins` points over [λmin − 0.01, λmax + 0.01], normalised.
    (A Gaussian narrower than a bin can fall between grid points and lose its mass; that is the
    code's behaviour, kept for comparison.)"""
    lo, hi = spec.nodes.min() - 0.01, spec.nodes.max() + 0.01
    grid = np.linspace(lo, hi, bins)
    sigma2 = 1e-10 * max(1.0, spec.nodes.max() - spec.nodes.min())
    density = np.zeros(bins)
    for node, w in zip(spec.nodes, spec.weights):
        density += w * np.exp(-((grid - node) ** 2) / (2 * sigma2)) / math.sqrt(2 * math.pi * sigma2)
    mass = density.sum()
    if mass <= 0:   # every Gaussian fell between grid points
        return spec
    return Spectrum(grid, density / mass)


# ---------------------------------------------------------------- magnitude path and fixed point
@dataclass
class MagnitudePath:
    """R(s) = ‖w* − w^k‖₂ for global magnitude pruning of a fraction s: the norm of the removed weights."""

    cumsq: np.ndarray   # cumsq[i] = sum of the i smallest w², cumsq[0] = 0

    @classmethod
    def of(cls, weights: torch.Tensor | np.ndarray) -> "MagnitudePath":
        a = np.sort(np.abs(np.asarray(weights, dtype=np.float64).reshape(-1)))
        return cls(np.concatenate([[0.0], np.cumsum(a * a)]))

    @property
    def size(self) -> int:
        return len(self.cumsq) - 1

    def __call__(self, s: float) -> float:
        k = min(self.size, max(0, math.ceil(s * self.size - 1e-9)))
        return math.sqrt(self.cumsq[k])


def bisect(g: Callable[[float], float], lo: float = 0.0, hi: float = 1.0, tol: float = 1e-7) -> float:
    """A root of a decreasing g on [lo, hi] (g(lo) >= 0 >= g(hi)); the ends when g keeps one sign."""
    if g(lo) <= 0:
        return lo
    if g(hi) >= 0:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def flat_fraction(spec: Spectrum, radius: float, epsilon: float) -> float:
    """F(R) = E_λ[1 / (1 + |λ| R² / (2ε))]: the share of directions the ellipsoid still covers at distance R."""
    c = radius * radius / (2 * epsilon)
    return spec.expect(lambda lam: 1.0 / (1.0 + np.abs(lam) * c))


def fixed_point(spec: Spectrum, path: MagnitudePath, epsilon: float) -> float:
    """s* with s* = F(R(s*)). F(R(s)) − s is strictly decreasing, so bisection finds it; the
    tolerance is below one weight's share of the path."""
    return bisect(lambda s: flat_fraction(spec, path(s), epsilon) - s, tol=min(1e-7, 0.5 / max(path.size, 1)))


def band(keep: float, d: int, eta: float) -> tuple[float, float]:
    """κ* − a_η/√D and κ* + a_η/√D + 1/D (AKF tolerance, plus the gap between δ and w²), clipped to [0, 1]."""
    half = math.sqrt(8 * math.log(4 / eta)) / math.sqrt(d)
    return max(0.0, keep - half), min(1.0, keep + half + 1.0 / d)


# ---------------------------------------------------------------- ε and the zero-curvature mass
def per_batch_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float, batch_size: int) -> np.ndarray:
    """Mean training loss of each batch of `batch_size` (eval mode)."""
    set_mode(model, False)
    with torch.no_grad():
        return np.array([float(_loss(model, x[b], y[b], l1)) for b in _batches(len(y), batch_size)])


def _flat_offsets(params: list[nn.Parameter]) -> dict[int, int]:
    offsets, at = {}, 0
    for p in params:
        offsets[id(p)] = at
        at += p.numel()
    return offsets


def zero_curvature_mass(model: nn.Module, params: list[nn.Parameter], matvec: Callable[[torch.Tensor], torch.Tensor],
                        tick: Callable[..., None] = lambda *a, **k: None, quantiles: int = 100) -> float:
    """Share p0 of Hessian rows that are zero (‖H[j, :]‖₁ < 1e-7), sampled at `quantiles` magnitude
    quantiles of the prunable weights, as the authors' code does for conv nets."""
    offsets = _flat_offsets(params)
    layers = [weight_of(m) for m in prunable_layers(model).values()]
    if any(id(w) not in offsets for w in layers):
        raise InputError("zero-mass needs every Conv/Linear weight in the Hessian (one is frozen)")
    mags = torch.cat([w.detach().abs().reshape(-1) for w in layers])
    where = torch.cat([offsets[id(w)] + torch.arange(w.numel()) for w in layers])
    order = torch.argsort(mags, stable=True)
    dim = sum(p.numel() for p in params)
    zero = 0
    for q in range(quantiles):
        j = int(where[order[min(len(order) - 1, math.ceil(q / quantiles * len(order)))]])
        e = torch.zeros(dim, dtype=torch.float64)
        e[j] = 1.0
        zero += float(matvec(e).abs().sum()) < ZERO_ROW
        tick()
    return zero / quantiles


# ---------------------------------------------------------------- the estimate
@dataclass
class LimitEstimate:
    """The predicted limit: sparsity s* (fraction removed) and keep ratio κ* = 1 − s*, with the band."""

    sparsity: float                  # s*, predicted fraction of prunable weights removable
    keep: float                      # κ* = 1 − s*
    sparsity_band: tuple[float, float]
    keep_band: tuple[float, float]
    epsilon: float
    epsilon_rule: str                # "std" or "fraction 0.01 of L(w*)"
    loss: float                      # L(w*) on the subset, L1 term included
    radius: float                    # R(s*)
    trace_bound: float               # Jensen: s* >= 1 / (1 + R(s*)² E|λ| / (2ε)) (sanity check)
    prunable: int                    # D
    hessian_dim: int                 # P, parameters the Hessian is over
    lambda_min: float
    lambda_max: float
    mean_abs_lambda: float           # E|λ| under the SLQ measure = Tr|H| / P
    zero_mass: float | None          # p0, when asked for
    l1: float                        # the L1 coefficient in the loss (from the checkpoint)
    hvps: int
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    spectrum: dict[str, list[float]] = field(default_factory=dict)   # SLQ "nodes" and "weights" (zero mass included)

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_limit(model: nn.Module, train: ArrayDataset, config: LimitConfig | None = None, *, l1: float = 0.0,
                   progress: bool = True) -> LimitEstimate:
    """Predict the one-shot global magnitude pruning limit of `model` before pruning it (METHODS.md §1.2-1.3).

    Uses a seeded subset of `config.subset` samples of `train`; the model is left unchanged (eval mode).
    """
    config = config or LimitConfig()
    config.validate()
    t0 = time.perf_counter()
    ds = train.head(config.subset)
    if len(ds) == 0:
        raise InputError("the training data is empty")
    x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    layers = prunable_layers(model)
    if not layers:
        raise InputError("the model has no Conv/Linear weights to prune")
    params = hessian_params(model)
    dim = sum(p.numel() for p in params)
    path = MagnitudePath.of(torch.cat([m.weight.detach().reshape(-1) for m in layers.values()]))
    matvec = hvp_operator(model, params, x, y, l1, config.batch_size)
    seconds: dict[str, float] = {}

    losses = per_batch_losses(model, x, y, l1, config.loss_batch)
    loss = float(np.average(losses, weights=[b.stop - b.start for b in _batches(len(y), config.loss_batch)]))
    frac = config.epsilon_fraction()
    epsilon = frac * loss if frac is not None else float(np.std(losses))
    if not epsilon > 0:
        raise InputError(f"ε is {epsilon:g}: the training loss is the same on every batch; "
                         f"use a larger --subset or --epsilon FRACTION")
    seconds["epsilon"] = time.perf_counter() - t0

    hvps = config.probes * min(config.steps, dim) + (100 if config.zero_mass else 0)
    t1 = time.perf_counter()
    with progress_bar("limit: Lanczos (Hessian-vector products)", total=hvps, enabled=progress) as tick:
        spec = slq(matvec, dim, config.steps, config.probes, config.seed, tick)
        seconds["lanczos"] = time.perf_counter() - t1
        p0 = None
        if config.zero_mass:
            t2 = time.perf_counter()
            tick(0, description="limit: zero-curvature rows")
            p0 = zero_curvature_mass(model, params, matvec, tick)
            spec = Spectrum(np.append(spec.nodes, ZERO_NODE), np.append(spec.weights * (1 - p0), p0))
            seconds["zero_mass"] = time.perf_counter() - t2
    quad = grid_spectrum(spec) if config.quadrature == "grid" else spec
    s_star = fixed_point(quad, path, epsilon)
    keep = 1.0 - s_star
    k_lo, k_hi = band(keep, path.size, config.eta)
    radius = path(s_star)
    mean_abs = spec.expect(np.abs)
    seconds["total"] = time.perf_counter() - t0
    return LimitEstimate(
        sparsity=s_star, keep=keep, sparsity_band=(1.0 - k_hi, 1.0 - k_lo), keep_band=(k_lo, k_hi),
        epsilon=epsilon, epsilon_rule="std" if frac is None else f"fraction {frac:g} of L(w*)", loss=loss,
        radius=radius, trace_bound=1.0 / (1.0 + radius * radius * mean_abs / (2 * epsilon)),
        prunable=path.size, hessian_dim=dim, lambda_min=float(spec.nodes.min()), lambda_max=float(spec.nodes.max()),
        mean_abs_lambda=mean_abs, zero_mass=p0, l1=l1, hvps=hvps, seconds=seconds,
        settings={**asdict(config), "subset": len(ds)},
        spectrum={"nodes": spec.nodes.tolist(), "weights": spec.weights.tolist()})


# ---------------------------------------------------------------- the measured limit
@dataclass
class MeasuredLimit:
    """One-shot global magnitude sweep without fine-tuning (METHODS.md §1.5, our protocol)."""

    dense_accuracy: float
    sparsities: list[float]
    accuracies: list[float]
    limits: dict[str, float]     # "0.1" -> largest s with acc >= dense − 0.1 pt, per δ
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def sweep_grid(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]


def measure_limit(model: nn.Module, val: ArrayDataset, points: int = 101, deltas: tuple[float, ...] = (0.1, 0.0),
                  progress: bool = True) -> MeasuredLimit:
    """The actual limit: the largest s on a `points`-point grid of [0, 1] whose validation accuracy
    after one-shot global magnitude pruning (no fine-tuning) is >= dense − δ, for each δ in points.
    Uses the same selection as `--method lomp`; s = 1 zeroes every prunable weight. `model` is restored."""
    if points < 2:
        raise InputError(f"the sweep needs at least 2 points, got {points}")
    t0 = time.perf_counter()
    layers = prunable_layers(model)
    saved = {n: weight_of(m).detach().clone() for n, m in layers.items()}
    scores = Magnitude().score(model, None)
    grid = sweep_grid(points)
    accs = []
    try:
        with progress_bar("limit: magnitude sweep", total=points, enabled=progress) as tick:
            for s in grid:
                masks = (select(scores, s, "global") if s < 1.0
                         else {n: torch.zeros_like(w, dtype=torch.bool) for n, w in saved.items()})
                apply_masks(model, masks)
                accs.append(evaluate(model, val))
                with torch.no_grad():
                    for n, m in layers.items():
                        m.weight.copy_(saved[n])
                tick()
    finally:
        with torch.no_grad():
            for n, m in layers.items():
                m.weight.copy_(saved[n])
    dense = accs[0]
    limits = {f"{d:g}": max(s for s, a in zip(grid, accs) if a >= dense - d) for d in deltas}
    return MeasuredLimit(dense, grid, accs, limits, time.perf_counter() - t0)
