"""Inpainting a 2-D Gaussian mixture: observe x1, sample x2 | x1 with each method, compare to the exact posterior.

The mixture's score is exact (no training) and so is the posterior p(x2 | x1), again a Gaussian mixture
(`GaussianMixture.condition`). Every method gets the same number of network evaluations (NFE): replacement,
predictor-corrector replacement, RePaint with r = 1, 2, 4 resampling steps and DPS (norm form).

    python examples/gmm_posterior.py --x1 0.0 --nfe 200 --out gmm_posterior.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sde_diffusion as sd  # noqa: E402
from sde_diffusion.bench.guidance import inpainting, labelled_mixture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--x1", type=float, default=0.0, help="the observed first coordinate")
    parser.add_argument("--n", type=int, default=2000, help="samples per method")
    parser.add_argument("--nfe", type=int, default=200, help="network evaluations per sample, for every method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gmm_posterior.png", help="figure path")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sde, gmm = sd.VPSDE(), labelled_mixture()
    rows, reference, samples, posterior = inpainting(gmm, sde, args.x1, args.n, args.nfe, args.seed, log=lambda *a: None)

    print(f"x2 | x1 = {args.x1:g}: MMD² to exact posterior draws (n = {args.n})")
    print(f"  {'data vs data (floor)':<48} {reference['floor_mmd']:9.2e}")
    print(f"  {'unconditional x2 (negative control)':<48} {reference['control_mmd']:9.2e}")
    for r in rows:
        print(f"  {r.method:<48} {r.mmd:9.2e}  ({r.mmd_over_floor:5.1f}× floor, NFE {r.nfe})")

    fig, (joint, marginal) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    data = gmm.sample(args.n, torch.Generator().manual_seed(args.seed + 2))
    joint.scatter(data[:, 0], data[:, 1], s=2, c="lightgray", lw=0, label="data")
    joint.axvline(args.x1, c="black", lw=0.5, zorder=0, label=f"observed x1 = {args.x1:g}")
    exact = posterior.sample(400, torch.Generator().manual_seed(args.seed + 3))
    joint.scatter(torch.full_like(exact[:, 0], args.x1), exact[:, 0], s=4, c="tab:red", lw=0, label="exact x2 | x1")
    joint.set_xlabel("x1"), joint.set_ylabel("x2"), joint.set_aspect("equal"), joint.legend(fontsize=7)
    grid = torch.linspace(-4, 4, 400, dtype=torch.float64)
    marginal.plot(grid, posterior.log_prob(grid[:, None]).exp(), c="black", lw=2, label="exact p(x2 | x1)")
    for name, values in samples.items():
        marginal.hist(values.double().numpy(), bins=60, range=(-4, 4), density=True, histtype="step", lw=0.9, label=name)
    marginal.set_xlabel("x2"), marginal.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
