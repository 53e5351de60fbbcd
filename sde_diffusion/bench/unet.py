"""UNet training speed: forward+backward images/s of our :class:`~sde_diffusion.nets.UNet` against diffusers'
``UNet2DModel`` at matched widths, on CPU.

Two image sizes, each with the widths of one named config: 8×8×1 ("tiny": 32/64 channels, one residual block
per level, attention at 4×4) and 28×28×1 ("small": 32/64/64 channels, two blocks per level, attention at 7×7).
diffusers is configured to the same widths, depths, GroupNorm groups, single-head attention at the same
level, scale-shift time conditioning and no dropout. Two rows of ours per size: the named config as the
trainer uses it (parameter-free average-pool / nearest resampling), and the same with 3×3-conv resampling,
which is diffusers' (``downsample_type="conv"``), so the parameter counts are closest; both counts are reported.
Calls are interleaved (ours, diffusers, diffusers, ours, …, alternating the order); a call is one
forward + backward of an MSE loss on a fixed batch; speed-up = median over the pairs of diffusers time / ours.

Run ``sde-diffusion bench unet [--quick] [--out DIR]``; writes ``unet.md`` and ``unet.json``. Target: speed-up ≥ 1.0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ._standalone import entry_points, torch_threads
from .._io import write_text
from ..nets import CONFIGS, UNet, parameter_count

TARGET_SPEEDUP = 1.0
DEFAULT_OUT = "benchmarks/results"


@dataclass
class Case:
    name: str
    size: int
    config: str
    diffusers_blocks: Dict


CASES = [
    Case("8×8×1", 8, "tiny", dict(block_out_channels=(32, 64), layers_per_block=1,
                                   down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                   up_block_types=("AttnUpBlock2D", "UpBlock2D"))),
    Case("28×28×1", 28, "small", dict(block_out_channels=(32, 64, 64), layers_per_block=2,
                                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))),
]


def ours(case: Case, resample: Optional[str] = None) -> nn.Module:
    overrides = {} if resample is None else {"resample": resample}
    return UNet.from_config(case.config, in_channels=1, dropout=0.0, **overrides)


def diffusers_unet(case: Case) -> nn.Module:
    from diffusers import UNet2DModel

    net = UNet2DModel(sample_size=case.size, in_channels=1, out_channels=1, norm_num_groups=CONFIGS[case.config]["groups"],
                      resnet_time_scale_shift="scale_shift", attention_head_dim=None, dropout=0.0,
                      **case.diffusers_blocks)
    return _SampleOutput(net)


class _SampleOutput(nn.Module):
    """diffusers returns an output object; the timed call needs the tensor (t: DDPM step scale)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t * 999).sample


def train_step_seconds(net: nn.Module, x: Tensor, t: Tensor, target: Tensor) -> float:
    """Wall time of one forward + backward of the MSE loss (gradients dropped first, as zero_grad(set_to_none) does)."""
    for p in net.parameters():
        p.grad = None
    start = time.perf_counter()
    loss = (net(x, t) - target).pow(2).mean()
    loss.backward()
    return time.perf_counter() - start


def interleaved(a: nn.Module, b: nn.Module, batch: Callable[[], tuple], repeats: int, warmup: int) -> Dict[str, float]:
    """Median times of a and b, and the median per-pair ratio b/a; the order inside a pair alternates."""
    x, t, target = batch()
    for _ in range(warmup):
        train_step_seconds(a, x, t, target)
        train_step_seconds(b, x, t, target)
    ta, tb = [], []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        s1, s2 = train_step_seconds(first, x, t, target), train_step_seconds(second, x, t, target)
        ta.append(s1 if first is a else s2)
        tb.append(s2 if first is a else s1)
    return {"a": statistics.median(ta), "b": statistics.median(tb),
            "ratio": statistics.median(y / x for x, y in zip(ta, tb))}


@dataclass
class Row:
    size: str
    ours: str
    ours_params: int
    diffusers_params: int
    batch: int
    ours_images_per_s: float
    diffusers_images_per_s: float
    speedup: float
    met: bool


def measure(case: Case, batch: int, repeats: int, warmup: int, seed: int) -> List[Row]:
    torch.manual_seed(seed)
    theirs = diffusers_unet(case).train()
    g = torch.Generator().manual_seed(seed)
    make_batch = lambda: (torch.randn(batch, 1, case.size, case.size, generator=g), torch.rand(batch, generator=g),  # noqa: E731
                          torch.randn(batch, 1, case.size, case.size, generator=g))
    rows = []
    for label, resample in [(f'"{case.config}" config', None), (f'"{case.config}", conv resampling', "conv")]:
        mine = ours(case, resample).train()
        r = interleaved(mine, theirs, make_batch, repeats, warmup)
        rows.append(Row(case.name, label, parameter_count(mine), parameter_count(theirs), batch, batch / r["a"],
                        batch / r["b"], r["ratio"], r["ratio"] >= TARGET_SPEEDUP))
    return rows


def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    """Time every case and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict:
    if args.batch < 1 or args.repeats < 1:
        raise ValueError("--batch and --repeats must be positive")
    batch = 8 if args.quick else args.batch
    repeats = 3 if args.quick else args.repeats
    warmup = 1 if args.quick else 3
    from ._standalone import machine

    where = machine()  # before the timings: it records the load other processes put on the machine
    rows: List[Row] = []
    for case in CASES:
        for row in measure(case, batch, repeats, warmup, args.seed):
            rows.append(row)
            log(f"{row.size:<8} {row.ours:<28} {row.ours_params:>9,d} params {row.ours_images_per_s:8.1f} img/s   "
                f"diffusers {row.diffusers_params:>9,d} params {row.diffusers_images_per_s:8.1f} img/s   "
                f"speed-up {row.speedup:5.2f}")
    import diffusers

    meta = {"command": command, "machine": where, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(), "batch": batch, "repeats": repeats, "warmup": warmup,
            "target_speedup": TARGET_SPEEDUP}
    report = {"meta": meta, "rows": [asdict(r) for r in rows]}
    out = Path(args.out)
    write_text(out / "unet.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "unet.md", markdown(report))
    log(f"wrote {out / 'unet.md'}, {out / 'unet.json'}")
    return report


def markdown(report: Dict) -> str:
    m = report["meta"]
    lines = [
        "# UNet training speed: ours against diffusers' UNet2DModel",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, diffusers {m['diffusers']}, "
        f"{m['threads']} thread(s)).",
        "",
        f"One call = forward + backward of an MSE loss, batch {m['batch']}, train mode, no dropout; {m['repeats']} "
        f"interleaved pairs after {m['warmup']} warm-up call(s) each.",
        "diffusers is configured to the same widths, blocks per level, GroupNorm groups, single-head attention level",
        "and scale-shift conditioning. Speed-up = median over pairs of diffusers time / our time; images/s from the",
        f"median times. Target: speed-up ≥ {m['target_speedup']}. Layout difference: diffusers' AttnUpBlock2D attends",
        "after each up-path resnet of its level, ours once per level (score_sde's ncsnpp). The machine is shared: the",
        "paired ratio is robust to other processes' load, the absolute images/s are not.",
        "",
        "| size | ours | our params | diffusers params | our img/s | diffusers img/s | speed-up | ≥ 1.0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['size']} | {r['ours']} | {r['ours_params']:,} | {r['diffusers_params']:,} | "
                     f"{r['ours_images_per_s']:.1f} | {r['diffusers_images_per_s']:.1f} | {r['speedup']:.2f} | "
                     f"{'yes' if r['met'] else '**no**'} |")
    lines += ["", f"Rows at or above the target: {sum(r['met'] for r in report['rows'])} of {len(report['rows'])}.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 8, 3 pairs, 1 warm-up")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for unet.md/.json (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="images per call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed pairs per row (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench unet")


if __name__ == "__main__":
    sys.exit(main())
