"""The package's likelihood solver (UniPC forward in λ with error control), checked against closed forms.

Truth as in test_likelihood.py: with the exact score of a Gaussian (mixture), log p_t0(x) and log p_T are known,
so Δ + log p_T(z) − log p_t0(x) is the solver's whole error in nats (no reference solve needed). The order
tests run the solver on fixed uniform λ grids and read the order off the error against closed forms: the single
Gaussian's probability flow for z, the mixture's log-density identity for log p.
"""
import math

import numpy as np
import pytest
import torch
from test_likelihood import ANISO, SDES, differentiable_score_model, prior_gap

import sde_diffusion as sd
from sde_diffusion.data.gmm import eight_gaussians
from sde_diffusion.likelihood import DEFAULT_TOLERANCES, _ScoreAndDivergence, log_likelihood
from sde_diffusion.likelihood_solver import (
    ForwardUniPC,
    composite_quadrature,
    integrate,
    point_at_log_snr,
    quadrature_weights,
)
from sde_diffusion.samplers.exponential import Point

F64 = torch.float64


def logp_error(gmm, sde, x, delta, z, t0=None):
    """Δ + log p_T(z) − log p_t0(x): zero for an exact solve (the prior gap does not enter)."""
    t_start = sde.eps if t0 is None else t0
    return delta + gmm.marginal_log_prob(z, sde.T, sde) - gmm.marginal_log_prob(x, t_start, sde)


def exact_evaluate(gmm, sde):
    return _ScoreAndDivergence(differentiable_score_model(gmm, sde), None, F64, None, float(sde.eps), float(sde.T))


# ----- quadrature -----
def test_quadrature_weights_integrate_polynomials_exactly():
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 6):
        nodes = np.sort(rng.uniform(-3.0, 1.0, n))
        nodes[-1] = 1.0
        weights = quadrature_weights(nodes)
        coefs = rng.normal(size=n)  # degree n − 1
        exact = np.polyval(np.polyint(coefs), 1.0) - np.polyval(np.polyint(coefs), 0.0)
        assert float(weights @ np.polyval(coefs, nodes)) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    # one degree more is not integrated exactly: the test can see a wrong rule
    nodes = [-2.0, -1.0, 0.0, 1.0]
    assert float(quadrature_weights(nodes) @ np.array(nodes) ** 4) != pytest.approx(0.2, rel=1e-3)


def test_composite_quadrature_converges_at_its_order_on_uneven_nodes():
    """∫ tanh over [2, −3] (λ runs downwards as in the solver) on geometric-ish nodes: 6-node rule, error ∝ h⁶."""
    exact = math.log(math.cosh(-3.0)) - math.log(math.cosh(2.0))
    errors = []
    for n in (20, 40, 80):
        u = np.linspace(0.0, 1.0, n + 1)
        lams = list(2.0 - 5.0 * (u + 0.3 * u * (1 - u)))  # uneven, decreasing
        values = [torch.tensor([math.tanh(lam)], dtype=F64) for lam in lams]
        errors.append(abs(float(composite_quadrature(lams, values)) - exact))
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert min(slopes) > 5.0, slopes
    assert errors[-1] < 1e-9


def test_newton_inverse_of_the_log_snr_matches_bisection():
    sde = SDES["tabulated"]()
    first, last = Point.at_time(sde, sde.eps), Point.at_time(sde, sde.T)
    for lam in (first.lam - 1e-3, 2.0, 0.0, -3.0, last.lam + 1e-3):
        ours, bisection = point_at_log_snr(sde, lam, sde.eps, sde.T), Point.at_log_snr(sde, lam)
        assert ours.t == pytest.approx(bisection.t, rel=1e-10, abs=1e-12)
        assert ours.lam == pytest.approx(lam, abs=1e-11)
    assert point_at_log_snr(sd.VPSDE(), 1.0, 0.0, 1.0) == Point.at_log_snr(sd.VPSDE(), 1.0)  # closed form used


# ----- closed forms -----
@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_logp_matches_closed_form(name):
    sde = SDES[name]()
    t0 = 0.05 if name == "tabulated" else None
    x = ANISO.sample(16, torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(differentiable_score_model(ANISO, sde), x, method="unipc", rtol=1e-5, atol=1e-5, t0=t0)
    t_start = sde.eps if t0 is None else t0
    z_exact = ANISO.flow(x, t_start, sde.T, sde)
    truth = ANISO.marginal_log_prob(x, t_start, sde)
    assert torch.allclose(res.z, z_exact, rtol=1e-4, atol=1e-4)
    assert float((res.logp - truth - prior_gap(ANISO, sde, z_exact)).abs().max()) < 1e-4
    assert float(logp_error(ANISO, sde, x, res.delta_logp, res.z, t0).abs().max()) < 1e-4
    assert float(res.delta_logp.abs().min()) > 0.5  # Δ matters: a factor 2 anywhere in it shows


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_eight_gaussians_default_tolerance_beats_dopri5(name):
    """At its default tolerance the solver is more accurate than dopri5 at 1e-5 (score_sde's setting) on the mixture,
    whose divergence depends on x (unlike a Gaussian's); at 1e-3 it is still as accurate, with far fewer NFE.
    (Sub-VP and the tabulated SDE: closed-form test above and the benchmark.)"""
    sde, gmm = SDES[name](), eight_gaussians()
    x = gmm.sample(64, torch.Generator().manual_seed(2), dtype=F64)
    model = differentiable_score_model(gmm, sde)
    ours = log_likelihood(model, x)
    dopri = log_likelihood(model, x, method="dopri5", rtol=1e-5, atol=1e-5)
    err_ours = float(logp_error(gmm, sde, x, ours.delta_logp, ours.z).abs().max())
    err_dopri = float(logp_error(gmm, sde, x, dopri.delta_logp, dopri.z).abs().max())
    assert err_ours < 1e-3 and err_ours < err_dopri / 5
    assert ours.nfe < 1.6 * dopri.nfe
    loose = log_likelihood(model, x, rtol=1e-3, atol=1e-3)  # the benchmark's regime: ≤ 1e-3 nats, far fewer NFE
    assert float(logp_error(gmm, sde, x, loose.delta_logp, loose.z).abs().max()) < min(err_dopri, 3e-3)
    assert loose.nfe < 0.8 * dopri.nfe


def test_default_method_and_tolerances():
    gmm, sde = eight_gaussians(), sd.VPSDE()
    x = gmm.sample(8, torch.Generator().manual_seed(3), dtype=F64)
    model = differentiable_score_model(gmm, sde)
    tol = DEFAULT_TOLERANCES["unipc"]
    assert torch.equal(log_likelihood(model, x).logp, log_likelihood(model, x, method="unipc", rtol=tol, atol=tol).logp)
    tol = DEFAULT_TOLERANCES["torchdiffeq"]
    assert torch.equal(log_likelihood(model, x, method="dopri5").logp,
                       log_likelihood(model, x, method="dopri5", rtol=tol, atol=tol).logp)


def test_hutchinson_matches_dopri5_with_the_same_probes():
    """Same generator seed, same probes, same ODE: both solvers converge to one answer."""
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(8, torch.Generator().manual_seed(4), dtype=F64)
    model = differentiable_score_model(gmm, sde)
    ours = log_likelihood(model, x, exact_divergence=False, generator=torch.Generator().manual_seed(5))
    ref = log_likelihood(model, x, exact_divergence=False, method="dopri5", rtol=1e-6, atol=1e-6,
                         generator=torch.Generator().manual_seed(5))
    exact = log_likelihood(model, x)
    assert float((ours.logp - ref.logp).abs().max()) < 3e-4
    assert float((ours.logp - exact.logp).abs().max()) > 1e-2  # the probes do change the answer


# ----- orders, on fixed grids -----
def _fixed(gmm, sde, x, order, steps):
    return integrate(exact_evaluate(gmm, sde), sde, x, float(sde.eps), order=order, steps=steps)


@pytest.mark.parametrize("order, expected", [(2, 3.0), (4, 5.0)])
def test_order_of_z_on_the_gaussian_flow(order, expected):
    """UniC-k is of order k + 1 (UniPC's corrector raises the order by one), forward in λ as backward."""
    sde = sd.VPSDE()
    x = ANISO.sample(16, torch.Generator().manual_seed(0), dtype=F64)
    z_exact = ANISO.flow(x, sde.eps, sde.T, sde)
    errors = [float((_fixed(ANISO, sde, x, order, n).z - z_exact).abs().max()) for n in (16, 128)]
    slope = math.log2(errors[0] / errors[1]) / 3
    assert expected - 0.4 < slope < expected + 0.6, slope


def test_order_of_logp_on_the_mixture():
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(16, torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for n in (64, 256):
        solve = _fixed(gmm, sde, x, 4, n)
        errors.append(float(logp_error(gmm, sde, x, solve.delta, solve.z).abs().max()))
    slope = math.log(errors[0] / errors[1]) / math.log(4)
    assert slope > 4.0, slope
    assert errors[1] < 1e-5


def test_the_evaluation_is_carried_to_the_corrected_state_to_first_order():
    """m joins the history as x̂_0 at x_c: (I + σ² ∂s/∂x)(x_c − x_p)/α added to x̂_0(x_p) leaves an O(|x_c − x_p|²) gap."""
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(16, torch.Generator().manual_seed(8), dtype=F64)
    solver = ForwardUniPC(exact_evaluate(gmm, sde), 2)
    start = Point.at_time(sde, 0.3)
    solver.begin(x, start)
    step = solver.attempt(x, torch.zeros(16, dtype=F64), start, Point.at_log_snr(sde, start.lam - 0.8))
    end, carried = Point.at_log_snr(sde, start.lam - 0.8), solver._pending[1]
    at_corrected = differentiable_score_model(gmm, sde).x0(step.x_corr, end.t)
    at_predicted = differentiable_score_model(gmm, sde).x0(step.x_pred, end.t)
    assert float((at_predicted - at_corrected).abs().max()) > 1e-3  # the predictor's error is not negligible here
    assert float((carried - at_corrected).abs().max()) < 0.05 * float((at_predicted - at_corrected).abs().max())


# ----- the controller and its contract -----
def test_tighter_tolerance_costs_more_and_is_more_accurate():
    sde, gmm = sd.VESDE(sigma_min=0.01, sigma_max=50.0), eight_gaussians()
    x = gmm.sample(32, torch.Generator().manual_seed(6), dtype=F64)
    solves = {tol: integrate(exact_evaluate(gmm, sde), sde, x, float(sde.eps), rtol=tol, atol=tol) for tol in (1e-3, 1e-6)}
    errors = {tol: float(logp_error(gmm, sde, x, s.delta, s.z).abs().max()) for tol, s in solves.items()}
    assert solves[1e-6].accepted > 2 * solves[1e-3].accepted
    assert errors[1e-6] < errors[1e-3] / 100


def test_nfe_counts_one_evaluation_per_attempt_plus_the_start():
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(8, torch.Generator().manual_seed(7), dtype=F64)
    evaluate = exact_evaluate(gmm, sde)
    solve = integrate(evaluate, sde, x, float(sde.eps), rtol=1e-4, atol=1e-4)
    assert evaluate.calls == 1 + solve.accepted + solve.rejected
    assert log_likelihood(differentiable_score_model(gmm, sde), x, rtol=1e-4, atol=1e-4).nfe == evaluate.calls


def test_bad_arguments():
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = torch.zeros(2, 2, dtype=F64)
    evaluate = exact_evaluate(gmm, sde)
    with pytest.raises(ValueError, match="order"):
        ForwardUniPC(evaluate, 2, order=5)
    for kwargs, match in (({"rtol": 0.0}, "rtol"), ({"h_init": -1.0}, "h_init"), ({"steps": 0}, "steps"),
                          ({"max_steps": 0}, "max_steps")):
        with pytest.raises(ValueError, match=match):
            integrate(evaluate, sde, x, float(sde.eps), **kwargs)
    with pytest.raises(RuntimeError, match="max_steps"):
        integrate(evaluate, sde, x, float(sde.eps), rtol=1e-9, atol=1e-9, max_steps=5)
    with pytest.raises(ValueError, match="method"):
        log_likelihood(differentiable_score_model(gmm, sde), x, method="unipc4")
    with pytest.raises(ValueError, match="width"):
        composite_quadrature([0.0, 1.0], [torch.zeros(1), torch.zeros(1)], width=0)
