"""Sampler loop overhead: each fixed-step sampler against a hand-written loop doing the same arithmetic.

The model is trivial (an ε-network returning 0.1·x) and the state image-like ((64, 3, 32, 32) by
default), so the time is the sampler's own: its arithmetic plus its bookkeeping (grid and schedule
set-up, prediction conversions, finiteness checks, callbacks). Each hand-written loop uses the same
float64 coefficients (computed inside the timed call, as the sampler does), the same number of network
calls, the same noise draws, and no checks; its result is compared with the sampler's as a check that
both do the same thing. Calls are interleaved (sampler, hand loop, sampler, …); the ratio is the median of
the per-pair time ratios.
torchsde (``TorchSDE(method="euler")``) is timed against the hand-written Euler–Maruyama loop.

Run ``sde-diffusion bench overhead [--quick] [--out DIR]``; writes ``overhead.md`` and ``overhead.json``.
The issue's target is a ratio ≤ 1.1; these are benchmark figures, not timed tests.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import Tensor

from .. import samplers
from ._standalone import entry_points, torch_threads
from .._io import write_text
from ..model import ScoreModel
from ..samplers.grids import make_grid
from ..samplers.unipc import _weights as unipc_weights, solve
from ..sde import VPSDE, LinearSDE, randn

TARGET_RATIO = 1.1
DEFAULT_OUT = "benchmarks/results"


def trivial_net(x: Tensor, t: Tensor) -> Tensor:
    """ε_θ(x, t) = 0.1 x: costs one elementwise product, so the loop's own time dominates."""
    return 0.1 * x


class Schedule:
    """The float64 schedule along a grid, as plain Python floats (what a hand-written loop precomputes)."""

    def __init__(self, sde: LinearSDE, ts: Tensor):
        log_alpha, log_sigma = sde._log_alpha(ts), sde._log_sigma(ts)
        self.t = ts.tolist()
        self.alpha = log_alpha.exp().tolist()
        self.sigma = log_sigma.exp().tolist()
        self.lam = (log_alpha - log_sigma).tolist()
        self.f = sde._f(ts).tolist()
        self.g2 = sde._g2(ts).tolist()
        self.n = len(self.t) - 1

    def alpha_ts(self, i: int) -> float:
        return self.alpha[i] / self.alpha[i + 1]

    def var_ts(self, i: int) -> float:
        return max(self.sigma[i] ** 2 - self.alpha_ts(i) ** 2 * self.sigma[i + 1] ** 2, 0.0)


def _t(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _denoise(net, x: Tensor, s: Schedule) -> Tensor:
    eps = net(x, _t(x, s.t[-1]))
    return (x - s.sigma[-1] * eps) / s.alpha[-1]


# ----- hand-written loops (same arithmetic as the samplers, no checks) -----
def hand_euler_maruyama(net, sde, x, steps, generator, grid="uniform"):
    s = Schedule(sde, make_grid(grid, sde, steps))
    for i in range(s.n):
        dt = s.t[i + 1] - s.t[i]
        score = net(x, _t(x, s.t[i])) / -s.sigma[i]
        x = x + (s.f[i] * x - s.g2[i] * score) * dt
        x = x + math.sqrt(s.g2[i] * -dt) * randn(x.shape, generator, x.device, x.dtype)
    return _denoise(net, x, s)


def hand_reverse_diffusion(net, sde, x, steps, generator, grid="uniform"):
    s = Schedule(sde, make_grid(grid, sde, steps))
    for i in range(s.n):
        score = net(x, _t(x, s.t[i])) / -s.sigma[i]
        x = (2.0 - s.alpha_ts(i)) * x + s.var_ts(i) * score
        x = x + math.sqrt(s.var_ts(i)) * randn(x.shape, generator, x.device, x.dtype)
    return _denoise(net, x, s)


def hand_ddpm(net, sde, x, steps, generator, grid="uniform"):
    s = Schedule(sde, make_grid(grid, sde, steps))
    for i in range(s.n):
        eps = net(x, _t(x, s.t[i]))
        x = (x - (s.var_ts(i) / s.sigma[i]) * eps) / s.alpha_ts(i)
        post = s.var_ts(i) * s.sigma[i + 1] ** 2 / s.sigma[i] ** 2
        if post > 0:
            x = x + math.sqrt(post) * randn(x.shape, generator, x.device, x.dtype)
    return _denoise(net, x, s)


def hand_ddim(net, sde, x, steps, generator, grid="uniform"):
    s = Schedule(sde, make_grid(grid, sde, steps))
    for i in range(s.n):
        eps = net(x, _t(x, s.t[i]))
        x0 = (x - s.sigma[i] * eps) / s.alpha[i]
        x = s.alpha[i + 1] * x0 + s.sigma[i + 1] * eps
    return _denoise(net, x, s)


def _phi1(z: float) -> float:
    return math.expm1(z) / z if z != 0 else 1.0


def _phi2(z: float) -> float:
    return (_phi1(z) - 1.0) / z if abs(z) > 1e-4 else 0.5 + z / 6.0


def hand_dpm_solver_2m(net, sde, x, steps, generator, grid="log_snr", lower_order_final=True):
    """DPM-Solver++(2M), Taylor form: x_s = (σ_s/σ_t) x + α_s h φ₁(−h) x̂_0 + α_s h² φ₂(−h) D₁."""
    s = Schedule(sde, make_grid(grid, sde, steps))
    prev = None
    for i in range(s.n):
        eps = net(x, _t(x, s.t[i]))
        x0 = (x - s.sigma[i] * eps) / s.alpha[i]
        h = s.lam[i + 1] - s.lam[i]
        order = 1 if prev is None or (lower_order_final and steps < 15 and i == s.n - 1) else 2
        x = (s.sigma[i + 1] / s.sigma[i]) * x + (s.alpha[i + 1] * h * _phi1(-h)) * x0
        if order == 2:
            d1 = (x0 - prev) / (s.lam[i] - s.lam[i - 1])
            x = x + (s.alpha[i + 1] * h * h * _phi2(-h)) * d1
        prev = x0
    return _denoise(net, x, s)


def hand_unipc(net, sde, x, steps, generator, grid="log_snr", order=3, lower_order_final=True):
    """UniPC-p bh2 with the UniC corrector; all scalar weights precomputed in float64 before the loop."""
    s = Schedule(sde, make_grid(grid, sde, steps))
    orders = []
    for i in range(s.n):
        k = min(order, i + 1)
        if lower_order_final and steps < 15:
            k = min(k, steps - i)
        orders.append(k)

    def weights(i_start: int, i_end: int, k: int, corrector: bool):
        h = s.lam[i_end] - s.lam[i_start]
        rks = [(s.lam[i_start - j] - s.lam[i_start]) / h for j in range(1, k)] + [1.0]
        R, b, b_h, h_phi_1 = unipc_weights(rks, h, k, "bh2")
        if corrector:
            rhos = [0.5] if k == 1 else solve(R, b)
        else:
            rhos = [] if k == 1 else ([0.5] if k == 2 else solve([row[:-1] for row in R[:-1]], b[:-1]))
        return rks[:-1], rhos, b_h, h_phi_1

    pred = [weights(i, i + 1, orders[i], False) for i in range(s.n)]
    corr = [weights(i - 1, i, orders[i - 1], True) for i in range(1, s.n)]
    history: List[Tensor] = []
    x_prev = None
    for i in range(s.n):
        eps = net(x, _t(x, s.t[i]))
        m = (x - s.sigma[i] * eps) / s.alpha[i]
        if i > 0:  # UniC: correct the last step with the new evaluation
            rks, rhos, b_h, h_phi_1 = corr[i - 1]
            m0 = history[0]
            res = rhos[-1] * (m - m0)
            for r, rk, mk in zip(rhos[:-1], rks, history[1:]):
                res = res + r * ((mk - m0) / rk)
            x = (s.sigma[i] / s.sigma[i - 1]) * x_prev - (s.alpha[i] * h_phi_1) * m0 - (s.alpha[i] * b_h) * res
        history.insert(0, m)
        del history[order:]
        x_prev = x
        rks, rhos, b_h, h_phi_1 = pred[i]  # UniP
        m0 = history[0]
        x = (s.sigma[i + 1] / s.sigma[i]) * x - (s.alpha[i + 1] * h_phi_1) * m0
        if rhos:
            acc = 0
            for r, rk, mk in zip(rhos, rks, history[1:]):
                acc = acc + r * ((mk - m0) / rk)
            x = x - (s.alpha[i + 1] * b_h) * acc
    return _denoise(net, x, s)


def hand_heun(net, sde, x, steps, generator, grid="karras"):
    """EDM Heun in σ̃ = σ/α on x̃ = x/α (no churn): D(x̃, σ̃) = x̂_0(α x̃, t)."""
    s = Schedule(sde, make_grid(grid, sde, steps))
    for i in range(s.n):
        a_t, a_s = s.alpha[i], s.alpha[i + 1]
        sig_t, sig_s = s.sigma[i] / a_t, s.sigma[i + 1] / a_s
        xs = x / a_t
        xa = a_t * xs
        d = (xs - (xa - s.sigma[i] * net(xa, _t(x, s.t[i]))) / a_t) / sig_t
        xe = xs + (sig_s - sig_t) * d
        xb = a_s * xe
        d2 = (xe - (xb - s.sigma[i + 1] * net(xb, _t(x, s.t[i + 1]))) / a_s) / sig_s
        x = a_s * (xs + (sig_s - sig_t) * 0.5 * (d + d2))
    return _denoise(net, x, s)


@dataclass
class Case:
    name: str
    make: Callable[[int], samplers.Sampler]
    hand: Callable
    steps_per_nfe: float = 1.0


def cases() -> List[Case]:
    out = [
        Case("EulerMaruyama", lambda n: samplers.EulerMaruyama(steps=n), hand_euler_maruyama),
        Case("ReverseDiffusion", lambda n: samplers.ReverseDiffusion(steps=n), hand_reverse_diffusion),
        Case("DDPM", lambda n: samplers.DDPM(steps=n), hand_ddpm),
        Case("DDIM", lambda n: samplers.DDIM(steps=n), hand_ddim),
    ]
    reg = samplers.REGISTRY
    if "dpm_solver" in reg:
        out.append(Case("DPMSolver (2M, x0)", lambda n: reg["dpm_solver"](steps=n, order=2), hand_dpm_solver_2m))
    if "unipc" in reg:
        out.append(Case("UniPC (3, bh2)", lambda n: reg["unipc"](steps=n, order=3), hand_unipc))
    if "heun" in reg:
        out.append(Case("Heun (EDM)", lambda n: reg["heun"](steps=n), hand_heun))
    return out


@dataclass
class Row:
    sampler: str
    baseline: str
    steps: int
    nfe: int
    sampler_ms_per_step: float
    baseline_ms_per_step: float
    ratio: float
    max_abs_diff: float
    met: bool


def _timed(fn: Callable[[], Tensor], sync: Callable[[], None]):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def measure(make_sampler: Callable[[], samplers.Sampler], hand: Callable[[torch.Generator], Tensor], model: ScoreModel,
            x_T: Tensor, repeats: int, seed: int, sync) -> Dict[str, float]:
    """Interleaved timings; returns medians (s) and the result gap (same seed, same noise)."""
    gen = lambda: torch.Generator(device=x_T.device).manual_seed(seed)  # noqa: E731
    run_sampler = lambda: make_sampler().sample(model, x_T=x_T, generator=gen())  # noqa: E731
    with torch.no_grad():
        out = run_sampler()  # warm-up (and the outputs for the check)
        ref = hand(gen())
        t_s, t_h = [], []
        for _ in range(repeats):
            t_s.append(_timed(lambda: run_sampler().x, sync)[0])
            t_h.append(_timed(lambda: hand(gen()), sync)[0])
    # the ratio is the median of the per-pair ratios: a pair runs back to back, so load from other
    # processes mostly cancels (the medians of the two time series are reported beside it)
    return {"sampler": statistics.median(t_s), "hand": statistics.median(t_h), "nfe": out.nfe,
            "ratio": statistics.median(a / b for a, b in zip(t_s, t_h)),
            "diff": float((out.x.double() - ref.double()).abs().max())}


def keep_freed_memory() -> str:
    """Ask glibc's malloc to keep freed blocks instead of unmapping them (as PyTorch's CUDA caching allocator does).

    A state of (64, 3, 32, 32) floats is 786 kB, above glibc's mmap threshold, so by default each temporary is
    a fresh mmap whose page faults cost more than the arithmetic; how many depends on the order of
    allocations, which differs between any two loops and swamps the overhead being measured (one probe:
    the same hand-written DDIM loop took 0.19 and 0.55 ms/step). Returns what was done, for the report.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        if libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30):
            return "glibc malloc keeps freed memory (mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 1 GiB)"
    except (OSError, AttributeError):
        pass
    return "default allocator (mallopt unavailable)"


def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    """Time every case and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict:
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if args.steps < 1 or args.repeats < 1:
        raise ValueError("--steps and --repeats must be positive")
    shape = (8, 3, 16, 16) if args.quick else tuple(args.shape)
    steps = 10 if args.quick else args.steps
    repeats = 3 if args.quick else args.repeats
    sde = VPSDE()
    model = ScoreModel(trivial_net, sde, prediction="eps")
    x_T = sde.prior_sample(shape, torch.Generator().manual_seed(args.seed)).to(device)
    from ._standalone import machine

    allocator = keep_freed_memory() if device.type == "cpu" and not args.system_malloc else "default allocator"
    where = machine()  # before the timings: it records the load average other processes put on the machine
    rows: List[Row] = []
    em_hand_ms = None
    for case in cases():
        r = measure(lambda: case.make(steps), lambda g: case.hand(trivial_net, sde, x_T, steps, g), model, x_T,
                    repeats, args.seed, sync)
        row = Row(case.name, "hand-written loop", steps, r["nfe"], 1e3 * r["sampler"] / steps, 1e3 * r["hand"] / steps,
                  r["ratio"], r["diff"], r["ratio"] <= TARGET_RATIO)
        if case.name == "EulerMaruyama":
            em_hand_ms = row.baseline_ms_per_step
        rows.append(row)
        log(f"{case.name:<22} {row.sampler_ms_per_step:8.3f} ms/step  hand {row.baseline_ms_per_step:8.3f} ms/step  "
            f"ratio {row.ratio:5.2f}  max|diff| {row.max_abs_diff:.1e}")
    if "torchsde" in samplers.REGISTRY:
        # torchsde draws its own Brownian increments: timing only, no result check
        r = measure(lambda: samplers.REGISTRY["torchsde"](method="euler", steps=steps),
                    lambda g: hand_euler_maruyama(trivial_net, sde, x_T, steps, g), model, x_T, repeats, args.seed, sync)
        row = Row("TorchSDE (euler)", "hand-written EM loop", steps, r["nfe"], 1e3 * r["sampler"] / steps,
                  1e3 * r["hand"] / steps, r["ratio"], math.nan, r["ratio"] <= TARGET_RATIO)
        rows.append(row)
        log(f"{row.sampler:<22} {row.sampler_ms_per_step:8.3f} ms/step  hand {row.baseline_ms_per_step:8.3f} ms/step  ratio {row.ratio:5.2f}")
    meta = {"command": command, "machine": where, "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "shape": list(shape), "steps": steps, "repeats": repeats,
            "target_ratio": TARGET_RATIO, "em_hand_ms_per_step": em_hand_ms, "allocator": allocator}
    report = {"meta": meta, "rows": [asdict(r) for r in rows]}
    out = Path(args.out)
    write_text(out / "overhead.json", json.dumps(report, indent=1, default=lambda v: None) + "\n")
    write_text(out / "overhead.md", markdown(report))
    log(f"wrote {out / 'overhead.md'}, {out / 'overhead.json'}")
    return report


def markdown(report: Dict) -> str:
    m = report["meta"]
    lines = [
        "# Sampler overhead",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (device {m['device']}, torch {m['torch']}, {m['threads']} thread(s)).",
        "",
        f"Trivial model ε_θ(x, t) = 0.1·x on a state of shape {tuple(m['shape'])}, {m['steps']} steps, median of "
        f"{m['repeats']} interleaved calls each. The hand-written loop does the same arithmetic with the same float64",
        "coefficients (computed inside the timed call), the same network calls and noise draws, and no checks;",
        "`max |diff|` is the largest gap between the two results (same seed). Ratio = median over the interleaved pairs of",
        "sampler time / hand-written time (robust to load from other processes); the ms/step columns are medians;",
        f"the issue's target is ≤ {m['target_ratio']}. torchsde's Euler is timed against the hand-written Euler–Maruyama loop.",
        f"Allocator: {m.get('allocator', 'default allocator')} (`--system-malloc` leaves it as it is).",
        "",
        "| sampler | baseline | NFE | sampler ms/step | baseline ms/step | ratio | ≤ 1.1 | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        diff = "—" if r["max_abs_diff"] is None or not math.isfinite(r["max_abs_diff"]) else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {r['sampler']} | {r['baseline']} | {r['nfe']} | {r['sampler_ms_per_step']:.3f} | "
                     f"{r['baseline_ms_per_step']:.3f} | {r['ratio']:.2f} | {'yes' if r['met'] else '**no**'} | {diff} |")
    met = [r for r in report["rows"] if r["sampler"] != "TorchSDE (euler)"]
    lines += ["", f"Fixed-step samplers within {m['target_ratio']}×: {sum(r['met'] for r in met)} of {len(met)}.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: small state, 10 steps, 3 repeats")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for overhead.md/.json (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="steps per sampler call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved timed calls per sampler (default: %(default)s)")
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 3, 32, 32], help="state shape (default: 64 3 32 32)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default freed memory is kept, so page faults do not swamp the timings)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench overhead")


if __name__ == "__main__":
    sys.exit(main())
