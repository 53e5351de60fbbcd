"""Solver benchmark: error per NFE on exact-score GMMs, peers (k-diffusion, score_sde RK45) in the same run.

    python benchmarks/solvers.py [--quick] [--out benchmarks/results]     # same as `sde-diffusion bench solvers`
"""
import sys

from sde_diffusion.bench.solvers import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/solvers.py"))
