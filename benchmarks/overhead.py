"""Sampler loop overhead against hand-written loops (and torchsde's Euler against a hand-written EM loop).

    python benchmarks/overhead.py [--quick] [--out benchmarks/results]    # same as `sde-diffusion bench overhead`
"""
import sys

from sde_diffusion.bench.overhead import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/overhead.py"))
