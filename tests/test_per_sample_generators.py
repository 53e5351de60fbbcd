"""Per-sample generators (diffusers' list of generators; k-diffusion issue 25): with one generator per sample,
a sample does not depend on the batch it is drawn in."""
from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd

SAMPLERS = {
    "euler_maruyama": lambda: sd.samplers.EulerMaruyama(steps=20),
    "ddpm": lambda: sd.samplers.DDPM(steps=20),
    "ddim_eta1": lambda: sd.samplers.DDIM(steps=10, eta=1.0),
    # (the Langevin corrector is left out: its step size uses batch-averaged norms, as score_sde's does)
    "predictor_corrector_no_corrector": lambda: sd.samplers.PredictorCorrector(steps=10, corrector="none"),
    "sde_dpm_solver": lambda: sd.samplers.DPMSolver(steps=10, order=2, eta=1.0),
    "heun_churn": lambda: sd.samplers.Heun(steps=8, s_churn=5.0),
}


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_sample_does_not_depend_on_its_batch(name):
    model = sd.data.eight_gaussians().score_model(sd.VPSDE())
    sampler = SAMPLERS[name]()
    batch = sampler.sample(model, shape=(5, 2), generator=gens([10, 11, 12, 13, 14])).x
    for i, seed in enumerate([10, 11, 12, 13, 14]):
        alone = sampler.sample(model, shape=(1, 2), generator=gens([seed])).x
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)
    # a single generator of the same seed gives the same first sample (the list is not a different stream)
    single = sampler.sample(model, shape=(1, 2), generator=torch.Generator().manual_seed(10)).x
    torch.testing.assert_close(single[0], batch[0], rtol=1e-5, atol=1e-6)
    # and other samples of the batch differ from a batch drawn with one shared generator
    shared = sampler.sample(model, shape=(5, 2), generator=torch.Generator().manual_seed(10)).x
    assert not torch.allclose(shared[1:], batch[1:])


def test_langevin_corrector_is_batch_dependent_by_design():
    """score_sde's step size ε = 2α(snr‖z‖/‖s‖)² averages the norms over the batch: documented, and pinned here."""
    model = sd.data.eight_gaussians().score_model(sd.VPSDE())
    sampler = sd.samplers.PredictorCorrector(steps=10)
    batch = sampler.sample(model, shape=(3, 2), generator=gens([1, 2, 3])).x
    alone = sampler.sample(model, shape=(1, 2), generator=gens([1])).x
    assert not torch.allclose(alone[0], batch[0], atol=1e-4)


def test_generator_list_errors():
    model = sd.data.eight_gaussians().score_model(sd.VPSDE())
    with pytest.raises(ValueError, match="list of 2 generators, but the batch has 3"):
        sd.samplers.EulerMaruyama(steps=3).sample(model, shape=(3, 2), generator=gens([0, 1]))
    with pytest.raises(ValueError, match="one Brownian path"):
        sd.samplers.TorchSDE(method="euler", steps=3).sample(model, shape=(2, 2), generator=gens([0, 1]))
    with pytest.raises(ValueError, match="one Brownian path"):
        sd.samplers.AdaptiveSDE().sample(model, shape=(2, 2), generator=gens([0, 1]))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sd.samplers.EulerMaruyama(steps=3).sample(model, shape=(2, 2), generator=7)
