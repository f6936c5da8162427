"""The pruning-limit estimate against exact linear algebra, on a small MLP trained on sklearn digits."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.analysis.limit import (
    LimitConfig,
    MagnitudePath,
    Spectrum,
    band,
    bisect,
    estimate_limit,
    fixed_point,
    flat_fraction,
    grid_spectrum,
    hessian_params,
    hvp_operator,
    lanczos,
    measure_limit,
    per_batch_losses,
    slq,
    zero_curvature_mass,
)
from edgeprune.data import load_dataset, train_val_split
from edgeprune.errors import InputError
from edgeprune.pruning.masks import prunable_layers
from edgeprune.training import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return train_val_split(load_dataset("digits", "train"))


@pytest.fixture(scope="module")
def trained(digits):
    """64-16-10 MLP (1,210 parameters) trained on digits: its exact Hessian is 1210 x 1210."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    train(model, digits[0], TrainConfig(epochs=15, lr=1e-2), progress=False)
    return model


@pytest.fixture(scope="module")
def exact(trained, digits):
    """The exact Hessian of the mean training loss over all parameters, float64, and the data tensors."""
    x, y = torch.from_numpy(digits[0].x), torch.from_numpy(digits[0].y)
    params = hessian_params(trained)
    names = [n for n, p in trained.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    trained.eval()

    def loss(flat):
        ps = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(trained, ps, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    h = torch.autograd.functional.hessian(loss, flat, vectorize=True).double()
    return (h + h.T) / 2, x, y, params


def test_hvp_by_double_backward_matches_the_exact_hessian(exact, trained):
    h, x, y, params = exact
    matvec = hvp_operator(trained, params, x, y, batch_size=300)   # batches must not change the operator
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(matvec(v), h @ v, rtol=1e-4, atol=1e-5 * float((h @ v).abs().max()))


def test_lanczos_basis_stays_orthonormal_and_finds_the_extreme_eigenvalues(exact):
    h = exact[0]
    v0 = torch.ones(h.shape[0], dtype=torch.float64)
    run = lanczos(lambda v: h @ v, v0, 80)
    gram = run.basis @ run.basis.T
    assert torch.allclose(gram, torch.eye(len(run.alpha), dtype=torch.float64), atol=1e-10)
    theta, tau = run.ritz()
    lam = torch.linalg.eigvalsh(h).numpy()
    assert math.isclose(theta.max(), lam.max(), rel_tol=1e-6)
    assert math.isclose(tau.sum(), 1.0, rel_tol=1e-12)


def test_lanczos_stops_at_an_invariant_subspace():
    # diag(1, 2, 3) seen from e1 + e2: the Krylov space has dimension 2
    d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    run = lanczos(lambda v: d * v, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), 3)
    assert len(run.alpha) == 2
    assert np.allclose(sorted(run.ritz()[0]), [1.0, 2.0])


def test_slq_limit_is_within_one_point_of_the_exact_spectrum(exact, trained, digits):
    h, x, y, params = exact
    lam = torch.linalg.eigvalsh(h).numpy()
    exact_spec = Spectrum(lam, np.full(len(lam), 1.0 / len(lam)))
    eps = float(np.std(per_batch_losses(trained, x, y, 0.0, 128)))
    path = MagnitudePath.of(torch.cat([m.weight.detach().reshape(-1) for m in prunable_layers(trained).values()]))
    kappa_exact = 1 - fixed_point(exact_spec, path, eps)
    spec = slq(hvp_operator(trained, params, x, y), h.shape[0], steps=64, probes=4, seed=0)
    kappa_slq = 1 - fixed_point(spec, path, eps)
    assert 0.02 < kappa_exact < 0.98          # a non-trivial limit, so the comparison means something
    assert abs(kappa_slq - kappa_exact) < 0.01
    # the authors' smoothed-grid quadrature integrates the same measure
    assert abs(1 - fixed_point(grid_spectrum(spec), path, eps) - kappa_slq) < 0.01


def test_magnitude_path_is_the_norm_of_the_removed_weights_and_monotone():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    path = MagnitudePath.of(w)
    a = np.sort(np.abs(w.double().numpy()))
    for s in (0.0, 0.1234, 0.5, 0.999, 1.0):
        assert math.isclose(path(s), math.sqrt(np.sum(a[:math.ceil(s * 1000 - 1e-9)] ** 2)), rel_tol=1e-12, abs_tol=1e-12)
    values = [path(s) for s in np.linspace(0, 1, 501)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert path(0.0) == 0.0 and math.isclose(path(1.0), float(w.double().norm()), rel_tol=1e-12)


def test_bisection_finds_the_fixed_point_of_a_known_function():
    root = bisect(lambda s: math.cos(s) - s)       # the Dottie number
    assert abs(root - 0.7390851332151607) < 1e-6
    assert bisect(lambda s: 1.0) == 1.0 and bisect(lambda s: -1.0) == 0.0


def test_fixed_point_solves_s_equals_f_of_r():
    # one eigenvalue λ = 2 and 10,000 equal weights 0.01, so R(s)² = s and F(R(s)) = 1 / (1 + 2 s / (2ε))
    path = MagnitudePath.of(torch.full((10_000,), 0.01))
    spec = Spectrum(np.array([2.0]), np.array([1.0]))
    s = fixed_point(spec, path, 0.05)
    assert abs(flat_fraction(spec, path(s), 0.05) - s) < 1e-3
    # ε = 0.05: s = 1 / (1 + 20 s)  ->  20 s² + s − 1 = 0  ->  s = 0.2
    assert abs(s - 0.2) < 1e-3


def test_band_is_the_akf_tolerance():
    lo, hi = band(0.5, 1_600_000, 0.01)
    half = math.sqrt(8 * math.log(400)) / math.sqrt(1_600_000)
    assert math.isclose(0.5 - lo, half) and math.isclose(hi - 0.5, half + 1 / 1_600_000)
    assert 0.0054 < half < 0.0056                       # METHODS.md's example: about ±0.55 points


def test_estimate_end_to_end_leaves_the_model_unchanged(trained, digits):
    before = copy.deepcopy(trained.state_dict())
    est = estimate_limit(trained, digits[0], LimitConfig(steps=32, probes=2), progress=False)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert 0 < est.sparsity < 1 and math.isclose(est.keep, 1 - est.sparsity)
    assert est.sparsity_band[0] < est.sparsity < est.sparsity_band[1]
    assert est.trace_bound <= est.sparsity + 1e-9          # Jensen's lower bound holds
    assert est.hvps == 64 and est.prunable == 64 * 16 + 16 * 10 and est.hessian_dim == 1210
    json.dumps(est.to_dict())
    frac = estimate_limit(trained, digits[0], LimitConfig(steps=16, epsilon="0.01"), progress=False)
    assert math.isclose(frac.epsilon, 0.01 * frac.loss) and frac.epsilon_rule.startswith("fraction")


def test_zero_curvature_mass_matches_the_exact_share_of_zero_rows(exact, trained):
    # Weights that read always-zero pixels or feed/leave dead ReLU units have zero Hessian rows.
    h, x, y, params = exact
    p0 = zero_curvature_mass(trained, params, lambda v: h @ v)
    rows = h.abs().sum(1)
    n1, b1 = trained[1].weight.numel(), trained[1].bias.numel()
    prunable_rows = torch.cat([rows[:n1], rows[n1 + b1:n1 + b1 + trained[3].weight.numel()]])
    share = float((prunable_rows < 1e-7).double().mean())
    assert share > 0.02 and abs(p0 - share) < 0.1      # 100 sampled rows: binomial std <= 0.05


def test_measured_limit_sweep(trained, digits):
    before = copy.deepcopy(trained.state_dict())
    m = measure_limit(trained, digits[1], points=11, deltas=(1.0, 0.0), progress=False)
    assert m.sparsities[0] == 0.0 and m.sparsities[-1] == 1.0 and len(m.accuracies) == 11
    assert m.accuracies[-1] < m.dense_accuracy - 50               # nothing left: chance level
    assert m.limits["1"] >= m.limits["0"]
    assert all(a >= m.dense_accuracy - 1.0 for s, a in zip(m.sparsities, m.accuracies) if s == m.limits["1"])
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("bad", [dict(steps=0), dict(probes=-1), dict(eta=1.5), dict(quadrature="bins"),
                                 dict(epsilon="loose"), dict(epsilon="-0.1")])
def test_bad_settings_are_input_errors(bad):
    with pytest.raises(InputError):
        LimitConfig(**bad).validate()
