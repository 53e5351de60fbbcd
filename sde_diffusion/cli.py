"""Command line: ``sde-diffusion demo | bench {solvers,overhead}`` (also ``python -m sde_diffusion``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sde-diffusion",
        description="Score-based generative modelling with SDEs: forward SDEs, exact-score ground truth, pluggable samplers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run every sampler on a 2-D GMM with exact score; print a table, write a PNG")
    demo.add_argument("--out", default="demo_output", help="output folder for samples.png and table.md (default: %(default)s)")
    demo.add_argument("--n", type=int, default=2000, help="number of samples per sampler (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    bench = sub.add_parser("bench", help="benchmarks: solver accuracy per NFE against peers, sampler loop overhead",
                           description="Benchmarks; results go to benchmarks/results/ by default.")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    from .bench import overhead, solvers  # light: heavy imports happen when a benchmark runs

    solvers.add_arguments(targets.add_parser(
        "solvers", help="error vs NFE on exact-score GMMs, k-diffusion and score_sde peers in the same run",
        description=solvers.__doc__.split("\n\n")[0]))
    overhead.add_arguments(targets.add_parser(
        "overhead", help="each fixed-step sampler's wall time per step against a hand-written loop",
        description=overhead.__doc__.split("\n\n")[0]))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, n=args.n, seed=args.seed)
    elif args.command == "bench":
        from .bench import overhead, solvers

        module = solvers if args.target == "solvers" else overhead
        module.run(args, " ".join(["sde-diffusion"] + list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
