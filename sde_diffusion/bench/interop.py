"""diffusers interop overhead: our samplers on a diffusers ``UNet2DModel`` (``ScoreModel.from_diffusers``) against
diffusers' own scheduler loops, per step, on CPU.

A small randomly initialised ``UNet2DModel`` (16×16×3, channels 32/64, one residual block per level, batch 8;
``--quick``: 8×8×3, 8/16, batch 2) is sampled three ways from the same x_T under ``torch.inference_mode()``:
diffusers' loop ``for k in sch.timesteps: x = sch.step(unet(x, k).sample, k, x).prev_sample`` (its
``set_timesteps`` inside the timed call, as the pipelines do); ours, ``DDIM(eta=0)`` ≡ ``DDIMScheduler(η = 0,
set_alpha_to_one=True)`` and DPM-Solver++ 2M (``lower_order_final=False``) ≡ ``DPMSolverMultistepScheduler()``
on ``diffusers_grid(sch)``; and "net only", the same number of bare ``unet(x, k).sample`` calls. Both schedulers
share one beta config (DDPM linear betas, 1000 steps). Calls are interleaved (the order rotating each round); the
ratio ours / diffusers and the net share (net only / ours) are medians of the per-round ratios. The gap
max |ours − diffusers| / max |x| checks that both loops compute the same samples (an error above 1e-4).

Run ``sde-diffusion bench interop [--quick] [--out DIR]``; writes ``interop.md`` and ``interop.json``.
The target is a ratio ≤ 1.1; these are benchmark figures, not timed tests.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import Tensor

from .. import samplers as S
from ._standalone import entry_points, jsonable, machine, torch_threads
from .overhead import keep_freed_memory
from .._io import write_text
from ..interop import diffusers_grid
from ..model import ScoreModel

TARGET_RATIO = 1.1
MAX_REL_DIFF = 1e-4
DEFAULT_OUT = "benchmarks/results"
BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
FULL = dict(size=16, channels=(32, 64), groups=8, batch=8)
QUICK = dict(size=8, channels=(8, 16), groups=4, batch=2)


def make_unet(cfg: Dict, seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)  # the weights' random initialisation
    net = UNet2DModel(sample_size=cfg["size"], in_channels=3, out_channels=3, block_out_channels=cfg["channels"],
                      layers_per_block=1, norm_num_groups=cfg["groups"], down_block_types=("DownBlock2D",) * 2,
                      up_block_types=("UpBlock2D",) * 2)
    return net.eval().requires_grad_(False)


def schedulers() -> Dict[str, tuple]:
    """label → (diffusers scheduler, ours on a grid, ours as a label): pairs tests/test_interop.py shows to agree."""
    import diffusers

    return {
        "DDIMScheduler": (diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **BETAS),
                          lambda grid: S.DDIM(eta=0.0, grid=grid), "DDIM(eta=0)"),
        "DPMSolverMultistepScheduler": (
            diffusers.DPMSolverMultistepScheduler(**BETAS),
            lambda grid: S.DPMSolver(order=2, solver_type="midpoint", grid=grid, lower_order_final=False),
            "DPMSolver(2M, midpoint, lower_order_final=False)"),
    }


@dataclass
class Row:
    scheduler: str
    sampler: str
    steps: int
    nfe: int
    diffusers_ms_per_step: float
    ours_ms_per_step: float
    net_only_ms_per_step: float
    ratio: float
    net_fraction: float
    max_rel_diff: float
    met: bool


def diffusers_loop(unet, sch, x: Tensor, steps: int) -> Tensor:
    sch.set_timesteps(steps)
    for k in sch.timesteps:
        x = sch.step(unet(x, k).sample, k, x).prev_sample
    return x


def net_only_loop(unet, timesteps: Tensor, x_T: Tensor) -> List[Tensor]:
    return [unet(x_T, k).sample for k in timesteps]


def measure(loops: Dict[str, Callable[[], Tensor]], repeats: int) -> Dict[str, List[float]]:
    """Each loop once untimed (warm-up), then ``repeats`` rounds of all loops, the order rotating each round."""
    names, times = list(loops), {name: [] for name in loops}
    for name in names:
        loops[name]()
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            loops[name]()
            times[name].append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    """Time each (scheduler, steps) and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict:
    import diffusers

    if args.repeats < 1 or any(s < 2 for s in args.steps):
        raise ValueError("--repeats must be positive and every --steps at least 2")
    cfg = QUICK if args.quick else FULL
    steps_list = [10] if args.quick else list(args.steps)
    repeats = 3 if args.quick else args.repeats
    allocator = keep_freed_memory() if not args.system_malloc else "default allocator"
    where = machine()  # before the timings: it records the load average other processes put on the machine
    unet = make_unet(cfg, args.seed)
    shape = (cfg["batch"], 3, cfg["size"], cfg["size"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    rows: List[Row] = []
    with torch.inference_mode():
        for name, (sch, make_ours, label) in schedulers().items():
            model = ScoreModel.from_diffusers(unet, sch)
            for steps in steps_list:
                sch.set_timesteps(steps)
                grid, timesteps = diffusers_grid(sch), sch.timesteps.clone()
                theirs, out = diffusers_loop(unet, sch, x_T, steps), make_ours(grid).sample(model, x_T=x_T)
                diff = float((out.x.double() - theirs.double()).abs().max() / theirs.double().abs().max())
                if not diff <= MAX_REL_DIFF:
                    raise RuntimeError(f"{name}, {steps} steps: max |ours - diffusers| / max |x| = {diff:.2e} > "
                                       f"{MAX_REL_DIFF:g}: the two loops do not compute the same samples")
                t = measure({"diffusers": lambda: diffusers_loop(unet, sch, x_T, steps),
                             "ours": lambda: make_ours(grid).sample(model, x_T=x_T).x,
                             "net": lambda: net_only_loop(unet, timesteps, x_T)}, repeats)
                ratio = statistics.median(a / b for a, b in zip(t["ours"], t["diffusers"]))
                share = statistics.median(a / b for a, b in zip(t["net"], t["ours"]))
                ms = {k: 1e3 * statistics.median(v) / steps for k, v in t.items()}
                rows.append(Row(name, label, steps, out.nfe, ms["diffusers"], ms["ours"], ms["net"], ratio, share, diff,
                                ratio <= TARGET_RATIO))
                log(f"{name:<28} {steps:3d} steps  diffusers {ms['diffusers']:8.3f}  ours {ms['ours']:8.3f}  net "
                    f"{ms['net']:8.3f} ms/step  ratio {ratio:5.3f}  net share {share:5.3f}  max rel diff {diff:.1e}")
    meta = {"command": command, "machine": where, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(), "shape": list(shape), "unet": cfg, "parameters": sum(p.numel() for p in
            unet.parameters()), "repeats": repeats, "target_ratio": TARGET_RATIO, "max_rel_diff_allowed": MAX_REL_DIFF,
            "betas": BETAS, "allocator": allocator}
    report = {"meta": meta, "rows": [asdict(r) for r in rows]}
    out_dir = Path(args.out)
    write_text(out_dir / "interop.json", json.dumps(jsonable(report), indent=1) + "\n")
    write_text(out_dir / "interop.md", markdown(report))
    log(f"wrote {out_dir / 'interop.md'}, {out_dir / 'interop.json'}")
    return report


def markdown(report: Dict) -> str:
    m, u, rows = report["meta"], report["meta"]["unet"], report["rows"]
    lines = [
        "# diffusers interop: our samplers vs diffusers' scheduler loops", "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, diffusers {m['diffusers']}, "
        f"{m['threads']} thread(s)).", "",
        f"Random `UNet2DModel` ({u['size']}×{u['size']}×3, channels {tuple(u['channels'])}, {m['parameters']:,} parameters), "
        f"batch {m['shape'][0]}, CPU, `torch.inference_mode()`, DDPM linear betas ({m['betas']['num_train_timesteps']} "
        "steps). diffusers: `set_timesteps`, then `x = sch.step(unet(x, k).sample, k, x).prev_sample` per timestep; ours: "
        "`ScoreModel.from_diffusers(unet, sch)` sampled on `diffusers_grid(sch)`; net only: as many bare "
        f"`unet(x, k).sample` calls. Medians of {m['repeats']} interleaved rounds; ratio = per-round ours / diffusers "
        f"(target ≤ {m['target_ratio']}); net share = per-round net only / ours (our wall time inside the UNet); "
        f"max rel diff = max |ours − diffusers| / max |x| from the same x_T (fails above {m['max_rel_diff_allowed']:g}). "
        f"Allocator: {m['allocator']}.", "",
        "| diffusers | ours | steps | NFE | diffusers ms/step | ours ms/step | net only ms/step | ratio | ≤ 1.1 "
        "| net share | max rel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['scheduler']} | `{r['sampler']}` | {r['steps']} | {r['nfe']} | {r['diffusers_ms_per_step']:.3f} | "
              f"{r['ours_ms_per_step']:.3f} | {r['net_only_ms_per_step']:.3f} | {r['ratio']:.3f} | "
              f"{'yes' if r['met'] else '**no**'} | {r['net_fraction']:.3f} | {r['max_rel_diff']:.1e} |" for r in rows]
    lines += ["", f"Within {m['target_ratio']}× of diffusers' loop: {sum(r['met'] for r in rows)} of {len(rows)}.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: 8×8 UNet, batch 2, 10 steps, 3 repeats")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for interop.md/.json (default: %(default)s)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="sampling steps (default: 10 20)")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds per case (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the UNet's weights and x_T (default: %(default)s)")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is (default: keep freed "
                        "memory, so page faults do not swamp the timings)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench interop")


if __name__ == "__main__":
    sys.exit(main())
