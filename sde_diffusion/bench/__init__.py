"""Benchmarks: solver accuracy per network evaluation against exact-score ground truth and peer
libraries (:mod:`.solvers`, ``sde-diffusion bench solvers``), and sampler loop overhead (:mod:`.overhead`,
``sde-diffusion bench overhead``). Results go to ``benchmarks/results/``.
"""
