"""Command line: ``sde-diffusion demo`` (also ``python -m sde_diffusion``)."""
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, n=args.n, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
