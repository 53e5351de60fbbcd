"""Command line: ``sde-diffusion train | train-classifier | sample | demo | bench …`` (also ``python -m sde_diffusion``).

Errors in the input (a bad flag value, a missing or unsafe checkpoint, a NaN during training) print one
line ``sde-diffusion: error: …`` and exit with status 2; set SDE_DIFFUSION_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sde-diffusion",
        description="Score-based generative modelling with SDEs: forward SDEs, exact-score ground truth, pluggable samplers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .cli_train import add_likelihood_arguments, add_sample_arguments, add_train_arguments

    add_train_arguments(sub.add_parser(
        "train", help="train a score network by denoising score matching (also under torchrun)",
        description="Train a score network by denoising score matching. Defaults depend on --data: "
                    "`train --data digits --out DIR` alone trains a good digits model on 2 CPU cores in ≤ 10 minutes."))
    from .cli_classifier import add_train_classifier_arguments

    add_train_classifier_arguments(sub.add_parser(
        "train-classifier", help="train a noise-conditional classifier p(y | x_t, t) for `sample --classifier`",
        description="Train a noise-conditional classifier by cross-entropy on data noised by the forward SDE, for "
                    "classifier guidance. `--like RUN` copies the SDE of the score model it will guide."))
    add_sample_arguments(sub.add_parser(
        "sample", help="draw samples from a trained checkpoint with any sampler (.npz or .png)",
        description="Draw samples from a checkpoint (EMA weights) with any sampler; under torchrun the samples are "
                    "shared out over the processes and rank 0 writes them all."))
    add_likelihood_arguments(sub.add_parser(
        "likelihood", help="exact log-likelihood through the probability-flow ODE: bits/dim of images ± 95 % CI",
        description="Exact log-likelihood of data under a checkpoint (EMA weights) by the instantaneous change of "
                    "variables along the probability-flow ODE: bits/dim for images (8-bit values, uniform "
                    "dequantisation), nats per sample for vectors; with a 95 % confidence interval."))
    demo = sub.add_parser("demo", help="run every sampler on a 2-D GMM with exact score; print a table, write a PNG")
    demo.add_argument("--out", default="demo_output", help="output folder for samples.png and table.md (default: %(default)s)")
    demo.add_argument("--n", type=int, default=2000, help="number of samples per sampler (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    bench = sub.add_parser("bench", help="benchmarks: solver accuracy per NFE against peers, sampler loop overhead",
                           description="Benchmarks; results go to benchmarks/results/ by default.")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    from .bench import guidance, interop, overhead, score_error, solvers, stochastic, train_digits, train_throughput, trainer_overhead, unet  # light: heavy imports happen when a benchmark runs

    solvers.add_arguments(targets.add_parser(
        "solvers", help="error vs NFE on exact-score GMMs, k-diffusion and score_sde peers in the same run",
        description=solvers.__doc__.split("\n\n")[0]))
    overhead.add_arguments(targets.add_parser(
        "overhead", help="each fixed-step sampler's wall time per step against a hand-written loop",
        description=overhead.__doc__.split("\n\n")[0]))
    interop.add_arguments(targets.add_parser(
        "interop", help="diffusers UNet: our samplers via from_diffusers vs diffusers' scheduler loops, per-step time",
        description=interop.__doc__.split("\n\n")[0]))
    train_digits.add_arguments(targets.add_parser(
        "train", help="train on digits with the defaults; FD, confidence and copy check per sampler",
        description=train_digits.__doc__.split("\n\n")[0]))
    unet.add_arguments(targets.add_parser(
        "unet", help="forward+backward images/s of our UNet against diffusers' UNet2DModel (CPU)",
        description=unet.__doc__.split("\n\n")[0]))
    score_error.add_arguments(targets.add_parser(
        "score_error", help="trained MLP vs exact score on a 2-D GMM: score error per t, MMD of samples",
        description=score_error.__doc__.split("\n\n")[0]))
    trainer_overhead.add_arguments(targets.add_parser(
        "trainer_overhead", help="Trainer.fit() wall time against a hand-written training loop",
        description=trainer_overhead.__doc__.split("\n\n")[0]))
    guidance.add_arguments(targets.add_parser(
        "guidance", help="guidance scale sweep and inpainting methods against exact GMM targets",
        description=guidance.__doc__.split("\n\n")[0]))
    stochastic.add_arguments(targets.add_parser(
        "stochastic", help="stochastic samplers per NFE by excess cross-entropy on exact GMMs, with its floor; knobs tuned",
        description=stochastic.__doc__.split("\n\n")[0]))
    from .bench import learned_schedule

    learned_schedule.add_arguments(targets.add_parser(
        "learned_schedule", help="digits: fixed VP vs learned (VDM) schedule, −ELBO bits/dim and its estimator's variance",
        description=learned_schedule.__doc__.split("\n\n")[0]))
    from .bench import likelihood as likelihood_bench

    likelihood_bench.add_arguments(targets.add_parser(
        "likelihood", help="PF-ODE log-likelihood: NFE to 1e-3 nats vs torchdiffeq and score_sde; digits bits/dim by 3 routes",
        description=likelihood_bench.__doc__.split("\n\n")[0]))
    train_throughput.add_arguments(targets.add_parser(
        "throughput", help="training images/s, peak memory, MFU: fp32 eager vs bf16 + compile + channels_last",
        description=train_throughput.__doc__.split("\n\n")[0]))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("SDE_DIFFUSION_DEBUG"):
        return _run(args, argv)
    from .training import CheckpointError, NonFiniteLossError

    try:
        return _run(args, argv)
    except (ValueError, TypeError, FileNotFoundError, ImportError, CheckpointError, NonFiniteLossError, RuntimeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"sde-diffusion: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sde-diffusion: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, argv: Optional[List[str]]) -> int:
    if args.command == "train":
        from .cli_train import run_train

        return run_train(args)
    if args.command == "train-classifier":
        from .cli_classifier import run_train_classifier

        return run_train_classifier(args)
    if args.command == "sample":
        from .cli_train import run_sample

        return run_sample(args)
    if args.command == "likelihood":
        from .cli_train import run_likelihood

        return run_likelihood(args)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, n=args.n, seed=args.seed)
    elif args.command == "bench":
        from .bench import guidance, interop, learned_schedule, overhead, score_error, solvers, stochastic, train_digits, train_throughput, trainer_overhead, unet
        from .bench import likelihood as likelihood_bench

        module = {"guidance": guidance, "solvers": solvers, "overhead": overhead, "interop": interop, "train": train_digits, "unet": unet, "score_error": score_error,
                  "trainer_overhead": trainer_overhead, "throughput": train_throughput, "stochastic": stochastic,
                  "learned_schedule": learned_schedule, "likelihood": likelihood_bench}[args.target]
        module.run(args, " ".join(["sde-diffusion"] + list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
