"""Trainer overhead: wall time of ``Trainer.fit()`` for K steps against a hand-written loop doing the same work.

Each optimizer step of either loop is the algorithm of :mod:`sde_diffusion.training.loop`:

    lr ← lr₀ · min(1, (step + 1)/warmup);   x₀ ← x[perm_epoch[k B:(k + 1) B]]
    g ← ∇_θ dsm_loss(model, x₀);   clip ‖g‖ ≤ grad_clip;   AdamW step;   θ_ema ← lerp(θ_ema, θ, 1 − β_n)

with the same network, initial weights, data, seeds and generators, so both end on bit-identical weights (the
report states the largest gap). The hand-written loop has no checks, no finite-loss test, no logging and no
wrappers. Two cases: the "tiny" UNet on digits (8×8, batch 128; the network dominates) and the MLP on a 2-D toy
set (batch 512: the per-step bookkeeping shows most). Runs are interleaved (Trainer, progress-bar Trainer,
hand-written, rotating the order), every run starting from the same initial state (built outside the timing);
ratio = median over the repetitions of Trainer time / hand-written time, which cancels most of the load other
processes put on a shared machine. The main Trainer row has ``progress=False`` and no ``out_dir`` (no
checkpoints, no samples); the progress-bar row (tqdm, drawn to /dev/null) is reported beside it.

Run ``sde-diffusion bench trainer_overhead [--quick] [--out DIR]``; writes ``trainer_overhead.md`` and
``trainer_overhead.json``. Target: ratio ≤ 1.05.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .._checks import positive_int
from ._standalone import entry_points, torch_threads
from .._io import write_text
from ..data import Dataset, digits, load
from ..losses import dsm_loss
from ..model import ScoreModel
from ..nets import build, parameter_count
from ..sde import VPSDE
from ..training import TrainConfig, Trainer
from ..training.presets import PRESETS, net_config

TARGET_RATIO = 1.05
DEFAULT_OUT = "benchmarks/results"
VARIANTS = ("trainer", "trainer + progress bar", "hand-written")


@dataclass
class Case:
    """One benchmark case: a network config on a data set, with one preset's training settings."""

    name: str
    net: str  #: "mlp" or a named UNet config
    data: str  #: a data set name for :func:`sde_diffusion.data.load`
    preset: str  #: the :data:`PRESETS` entry whose training settings are used
    batch: int
    steps: int  #: K, optimizer steps per timed run
    n: Optional[int] = None  #: toy data sets: samples drawn (None: ``load``'s default, 100,000)


def cases(quick: bool = False) -> List[Case]:
    if quick:
        return [Case("tiny UNet, digits 8×8", "tiny", "digits", "digits", 16, 2),
                Case("MLP, moons 2-D", "mlp", "moons", "vector", 64, 5, n=2048)]
    return [Case("tiny UNet, digits 8×8", "tiny", "digits", "digits", 128, 8),
            Case("MLP, moons 2-D", "mlp", "moons", "vector", 512, 40)]


def dataset(case: Case) -> Dataset:
    ds = digits() if case.data == "digits" else load(case.data, n=case.n)
    return Dataset(x=ds.x, name=ds.name)  # unconditional: the labels play no part


def train_config(case: Case, seed: int = 0, progress: bool = False) -> TrainConfig:
    """The preset's settings for K steps, no checkpoints; ``progress`` draws the bar."""
    settings = dict(PRESETS[case.preset]["train"])
    settings.update(steps=case.steps, batch_size=case.batch, checkpoint_every=0, progress=progress, seed=seed)
    return TrainConfig(**settings)


class Setup:
    """What every timed run starts from: the data, one network's initial weights, the SDE."""

    def __init__(self, case: Case, seed: int = 0):
        self.case, self.data = case, dataset(case)
        torch.manual_seed(seed)
        self.net_config = net_config(case.net, tuple(self.data.x.shape[1:]))
        self.initial = copy.deepcopy(build(self.net_config).state_dict())
        self.sde = VPSDE()
        self.seed = seed

    def model(self) -> ScoreModel:
        net = build(self.net_config)
        net.load_state_dict(self.initial)
        return ScoreModel(net, self.sde, prediction="eps")


# ----- the loops: each keeps its state, and ``fit(k)`` trains k more steps -----
class _Run:
    """A loop's own stream of torch's global RNG (dropout): interleaved loops must not draw from each other's."""

    def fit(self, steps: int) -> None:
        torch.set_rng_state(self.rng)
        self._fit(steps)
        self.rng = torch.get_rng_state()


class TrainerRun(_Run):
    """``Trainer.fit()`` continued for k more steps per call (tqdm drawn to /dev/null when ``progress``)."""

    def __init__(self, setup: Setup, progress: bool = False):
        self.trainer = Trainer(setup.model(), setup.data, train_config(setup.case, setup.seed, progress))
        self.net, self.ema_net, self.rng = self.trainer.net, self.trainer.ema.net, torch.get_rng_state()

    def _fit(self, steps: int) -> None:
        self.trainer.config.steps = self.trainer.step + steps
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            self.trainer.fit()


class HandWrittenRun(_Run):
    """The Trainer's algorithm as a plain loop: same data order, generators, dropout RNG, clipping, AdamW and EMA."""

    def __init__(self, setup: Setup):
        self.cfg, self.model = train_config(setup.case, setup.seed), setup.model()
        torch.manual_seed(self.cfg.seed)
        self.x = setup.data.x
        self.image = self.x.dim() == 4 and self.cfg.channels_last
        self.net = self.model.net.to(memory_format=torch.channels_last) if self.image else self.model.net
        self.params = list(self.net.parameters())
        self.detached = [p.detach() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                           betas=self.cfg.adam_betas)
        self.ema_net = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.ema_params = list(self.ema_net.parameters())
        self.buffers = list(zip(self.ema_net.buffers(), self.net.buffers()))
        self.generator = torch.Generator().manual_seed(self.cfg.seed * 1000)
        self.per_epoch = len(self.x) // self.cfg.batch_size
        self.step, self.perm, self.rng = 0, None, torch.get_rng_state()

    def _fit(self, steps: int) -> None:
        cfg = self.cfg
        self.net.train()
        for step in range(self.step, self.step + steps):
            epoch, k = divmod(step, self.per_epoch)
            if k == 0 or self.perm is None:
                self.perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            x0 = self.x[self.perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
            if self.image:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            self.optimizer.zero_grad(set_to_none=True)
            dsm_loss(self.model, x0, cfg.weighting, t_sampling=cfg.t_sampling, generator=self.generator).backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, self.detached, 1.0 - min(cfg.ema_decay, (1 + step) / (10 + step)))
                for b_ema, b in self.buffers:
                    b_ema.copy_(b)
        self.step += steps


RUNS: Dict[str, Callable] = {"trainer": TrainerRun, "trainer + progress bar": lambda s: TrainerRun(s, progress=True),
                             "hand-written": HandWrittenRun}


def max_gap(a: nn.Module, b: nn.Module) -> float:
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ----- interleaved timing -----
def interleaved(runs: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, List[float]]:
    """Seconds of each callable per repetition; a repetition calls every one once, the order rotating."""
    names, times = list(runs), {name: [] for name in runs}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: Dict[str, List[float]], name: str, baseline: str) -> float:
    """Median over repetitions of times[name] / times[baseline] (a repetition's runs are back to back)."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline]))


@dataclass
class Row:
    case: str
    net_params: int
    batch: int
    steps: int
    trainer_ms_per_step: float
    progress_ms_per_step: float
    hand_ms_per_step: float
    ratio: float
    progress_ratio: float
    max_weight_gap: float
    max_ema_gap: float
    met: bool


def measure(case: Case, repeats: int, seed: int = 0) -> Row:
    """Interleaved runs of K steps each, after one warm-up run each; then the gap between the weights reached."""
    setup = Setup(case, seed)
    loops = {name: make(setup) for name, make in RUNS.items()}
    for loop in loops.values():  # warm-up: allocator, AdamW's state, oneDNN kernels
        loop.fit(case.steps)
    times = interleaved({name: (lambda loop=loop: loop.fit(case.steps)) for name, loop in loops.items()}, repeats)
    ms = {name: 1e3 * statistics.median(t) / case.steps for name, t in times.items()}
    ratio = paired_ratio(times, "trainer", "hand-written")
    ours, hand = loops["trainer"], loops["hand-written"]
    return Row(case.name, parameter_count(ours.net), case.batch, case.steps, ms["trainer"], ms["trainer + progress bar"],
               ms["hand-written"], ratio, paired_ratio(times, "trainer + progress bar", "hand-written"),
               max_gap(ours.net, hand.net), max_gap(ours.ema_net, hand.ema_net), ratio <= TARGET_RATIO)


# ----- entry point and report -----
def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    """Time every case and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict:
    repeats = 3 if args.quick else positive_int(args.repeats, "--repeats")
    from .overhead import keep_freed_memory
    from ._standalone import machine

    allocator = keep_freed_memory() if not args.system_malloc else "default allocator"
    where = machine()  # before the timings: it records the load other processes put on the machine
    rows = []
    for case in cases(args.quick):
        if args.steps is not None:
            case = replace(case, steps=positive_int(args.steps, "--steps"))
        row = measure(case, repeats, args.seed)
        rows.append(row)
        log(f"{row.case:<24} trainer {row.trainer_ms_per_step:8.3f} ms/step  hand {row.hand_ms_per_step:8.3f} ms/step  "
            f"ratio {row.ratio:5.3f}  (progress bar {row.progress_ratio:5.3f})  max|Δθ| {row.max_weight_gap:.1e}")
    meta = {"command": command, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeats": repeats, "target_ratio": TARGET_RATIO, "allocator": allocator}
    report = {"meta": meta, "rows": [asdict(r) for r in rows]}
    out = Path(args.out)
    write_text(out / "trainer_overhead.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "trainer_overhead.md", markdown(report))
    log(f"wrote {out / 'trainer_overhead.md'}, {out / 'trainer_overhead.json'}")
    return report


def markdown(report: Dict) -> str:
    m = report["meta"]
    lines = [
        "# Trainer overhead",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, {m['threads']} thread(s)).",
        "",
        "`Trainer.fit()` for K steps (`progress=False`, no `out_dir`: no checkpoints or samples) against a hand-written",
        "loop doing the same work: batch indexing by the epoch's permutation, `dsm_loss`, backward, gradient clipping,",
        "AdamW with the warm-up schedule, EMA lerp, same network, initial weights, seeds and generators. Both end on the",
        "same weights (`max |Δθ|`, `max |Δθ_ema|`). Each loop keeps its state and every run trains K more steps (so per-epoch",
        "costs show at their real rate); the runs are interleaved (Trainer, Trainer with a tqdm bar drawn to /dev/null,",
        f"hand-written; the order rotates), {m['repeats']} repetitions after one warm-up run each. Ratio = median over",
        "repetitions of Trainer time / hand-written time (robust to load from other processes); ms/step are medians.",
        f"Allocator: {m['allocator']}. Target: ratio ≤ {m['target_ratio']}.",
        "",
        "| case | params | batch | K | Trainer ms/step | + progress bar ms/step | hand-written ms/step | ratio | "
        "ratio with bar | max abs Δθ | max abs Δθ_ema | ≤ 1.05 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['case']} | {r['net_params']:,} | {r['batch']} | {r['steps']} | {r['trainer_ms_per_step']:.3f} | "
                     f"{r['progress_ms_per_step']:.3f} | {r['hand_ms_per_step']:.3f} | {r['ratio']:.3f} | "
                     f"{r['progress_ratio']:.3f} | {r['max_weight_gap']:.1e} | {r['max_ema_gap']:.1e} | "
                     f"{'yes' if r['met'] else '**no**'} |")
    lines += ["", f"Cases within {m['target_ratio']}×: {sum(r['met'] for r in report['rows'])} of {len(report['rows'])}.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: small batches, few steps, 3 repetitions")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for trainer_overhead.md/.json (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repetitions per case (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run (default: 8 UNet, 40 MLP)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default freed memory is kept, so page faults do not swamp the timings)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench trainer_overhead")


if __name__ == "__main__":
    sys.exit(main())
