"""Training throughput of the Trainer's ``train_step``: fp32 eager against bf16 autocast + torch.compile + channels_last.

Every variant is a :class:`~sde_diffusion.training.Trainer` built with the same network, initial weights and
synthetic data (uniform in [−1, 1], the range of real images), differing only in its ``TrainConfig`` switches
(``bf16``, ``channels_last``, ``compile``) and, for the fp32 rows on CUDA, in TF32. Each variant first runs
warm-up steps (compilation included, timed separately and excluded), then the variants take turns: ``rounds``
segments of ``steps`` optimizer steps each, the order rotating, the device synchronised around each segment.

    images/s   = batch · steps / median segment time
    speed-up   = median over rounds of (fp32-eager segment time / variant segment time)
    model FLOPs = forward + backward of ``dsm_loss`` counted once by ``torch.utils.flop_counter.FlopCounterMode``
                  (convolutions, matrix products and attention; the optimizer's element-wise work is not counted)
    MFU        = model FLOPs per step · steps/s / the device's dense peak for the variant's precision

Peaks used (dense, no sparsity; bf16 / TF32 tensor core, fp32 without tensor cores): H100 SXM and H200 989 / 495 /
67 TFLOP/s, H100 PCIe 756 / 378 / 51, A100 312 / 156 / 19.5. On other devices (and on CPUs) MFU is left out unless
``--peak-bf16-tflops`` / ``--peak-tf32-tflops`` / ``--peak-fp32-tflops`` give the peaks.

Peak memory on CUDA = the variant's own tensors between steps (weights, EMA, AdamW state, its copy of the data) +
the most ``torch.cuda.max_memory_allocated`` rose above that during its segments (activations, gradients,
temporaries): what the variant would take alone, although all variants live side by side. CPUs have no such
counter; the memory column is then empty.

Run ``sde-diffusion bench throughput --device cuda --config ddpmpp`` on a GPU (32×32×3, batch 128): writes
``train_throughput_<gpu name>.json`` and ``.md``. Without a GPU, ``--device cpu`` (the default) times the
``tiny`` config at 8×8×1: fp32 eager, channels_last, and channels_last + compile when ``--compile`` is given
(inductor needs minutes on a small CPU); it writes ``train_throughput_cpu.json``/``.md``. bf16 autocast is
CUDA-only in the Trainer, so the CPU rows are fp32. Target (GPU): speed-up ≥ 2.5.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._checks import positive, positive_int
from ._standalone import entry_points, torch_threads
from .._io import write_text
from ..data import Dataset
from ..losses import dsm_loss
from ..model import ScoreModel
from ..nets import CONFIGS, build, parameter_count
from ..sde import VPSDE
from ..training import TrainConfig, Trainer
from ..training.presets import net_config

TARGET_SPEEDUP = 2.5
DEFAULT_OUT = "benchmarks/results"
#: sample shape (C, H, W) each named config is benchmarked at
SHAPES: Dict[str, Tuple[int, int, int]] = {"tiny": (1, 8, 8), "small": (1, 28, 28), "ddpmpp": (3, 32, 32)}
PRECISIONS = ("bf16", "tf32", "fp32")
#: dense peak FLOP/s (bf16 and TF32 tensor core, fp32 without) by a pattern of the device name; first match wins
PEAKS: List[Tuple[str, float, float, float]] = [
    (r"H100.*PCIe", 756e12, 378e12, 51e12),
    (r"H100|H200", 989e12, 495e12, 67e12),
    (r"A100", 312e12, 156e12, 19.5e12),
]


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    tf32: bool = False  #: CUDA: TF32 tensor cores for fp32 convolutions and matrix products

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "tf32" if self.tf32 else "fp32"


BASELINE = Variant("fp32 eager")
TARGET = Variant("bf16 autocast + compile + channels_last", bf16=True, channels_last=True, compile=True)


def variants(device: torch.device, compile_on_cpu: bool = False) -> List[Variant]:
    """The rows measured on ``device``; the first is the baseline of the speed-ups."""
    if device.type == "cuda":
        return [BASELINE, Variant("fp32 eager, TF32 (cuDNN's default for convolutions)", tf32=True),
                Variant("bf16 autocast", bf16=True), Variant("bf16 autocast + channels_last", bf16=True, channels_last=True),
                TARGET]
    rows = [BASELINE, Variant("channels_last", channels_last=True)]
    if compile_on_cpu:
        rows.append(Variant("compile + channels_last", channels_last=True, compile=True))
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def file_stem(name: str) -> str:
    """``train_throughput_<device>``: "cpu", or the GPU's name in lower case with runs of other characters as "_"."""
    return "train_throughput_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def peak_flops(name: str, **given: Optional[float]) -> Dict[str, Optional[float]]:
    """The dense peaks (FLOP/s) of device ``name`` per precision (bf16, tf32, fp32); given values override the table."""
    table = next((peaks for pattern, *peaks in PEAKS if re.search(pattern, name)), (None,) * len(PRECISIONS))
    return {p: given[p] if given.get(p) is not None else value for p, value in zip(PRECISIONS, table)}


# ----- what is measured -----
def synthetic_data(shape: Sequence[int], n: int, seed: int) -> Dataset:
    return Dataset(x=torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1, name="synthetic")


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def train_step_flops(model: ScoreModel, x0: torch.Tensor, weighting: str = "eps") -> int:
    """FLOPs of one forward + backward of ``dsm_loss(model, x0)``: FlopCounterMode's count of matrix products,
    convolutions and attention (torch counts CUDA's attention kernels; CPU's flash attention is added here with the
    same formulas: 4·b·h·s²·d forward, 10·b·h·s²·d backward, which recomputes the scores)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    cpu_attention = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
                     aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops}
    generator = torch.Generator(x0.device).manual_seed(0)
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        dsm_loss(model, x0, weighting, generator=generator).backward()
    for p in model.parameters():
        p.grad = None
    return int(counter.get_total_flops())


def make_trainer(variant: Variant, net_cfg: Dict, initial: Dict, data: Dataset, batch: int, device: str, seed: int) -> Trainer:
    net = build(net_cfg)
    net.load_state_dict(initial)
    cfg = TrainConfig(steps=10**9, batch_size=batch, device=device, bf16=variant.bf16, compile=variant.compile,
                      channels_last=variant.channels_last, checkpoint_every=0, progress=False, seed=seed)
    return Trainer(ScoreModel(net, VPSDE(), prediction="eps"), data, cfg)


@contextlib.contextmanager
def tf32(enabled: bool, device: torch.device):
    """TF32 for fp32 convolutions and matrix products on CUDA inside the block (the previous settings after it)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def state_bytes(trainer: Trainer) -> int:
    """Bytes of the tensors a trainer holds between steps: weights, buffers, EMA copy, AdamW state, its data."""
    tensors = [*trainer.net.parameters(), *trainer.net.buffers(), *trainer.ema.net.parameters(), *trainer.ema.net.buffers(),
               trainer.x, *(v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    seen, total = set(), 0
    for t in tensors:
        if t.device.type == trainer.device.type and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


class Timer:
    """Seconds of ``steps`` train_steps with the device synchronised around them; on CUDA also the memory peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def segment(self, trainer: Trainer, variant: Variant, steps: int, others: Sequence[Trainer]) -> Tuple[float, Optional[int]]:
        """(seconds, bytes the allocation rose above the segment's start); every trainer's gradients are dropped
        first, as its next train_step would do anyway, so the start holds only the trainers' states."""
        for t in others:
            t.optimizer.zero_grad(set_to_none=True)
        with tf32(variant.tf32, self.device):
            self.sync()
            if self.cuda:
                start_bytes = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            self.sync()
            seconds = time.perf_counter() - start
        rise = torch.cuda.max_memory_allocated(self.device) - start_bytes if self.cuda else None
        return seconds, rise


@dataclass
class Row:
    variant: str
    bf16: bool
    channels_last: bool
    compile: bool
    tf32: bool
    warmup_s: float
    images_per_s: float
    speedup: float
    tflop_per_s: float
    peak_tflop_per_s: Optional[float]
    mfu: Optional[float]
    peak_memory_bytes: Optional[int]
    state_bytes: Optional[int]


def warmed_up_trainers(rows: Sequence[Variant], net_cfg: Dict, initial: Dict, data: Dataset, batch: int,
                       device: torch.device, warmup: int, seed: int, log=print) -> Tuple[List[Trainer], List[float]]:
    """One Trainer per variant, each after ``warmup`` steps (compilation happens there); and those seconds."""
    trainers, seconds, timer = [], [], Timer(device)
    for variant in rows:
        trainer = make_trainer(variant, net_cfg, initial, data, batch, str(device), seed)
        trainer.net.train()
        seconds.append(timer.segment(trainer, variant, warmup, [trainer])[0])
        trainers.append(trainer)
        log(f"{variant.name:<44} warm-up {warmup} steps in {seconds[-1]:.1f} s")
    return trainers, seconds


def interleaved_segments(trainers: Sequence[Trainer], rows: Sequence[Variant], device: torch.device, steps: int,
                         rounds: int) -> Tuple[List[List[float]], List[List[int]]]:
    """Per variant: the seconds of each round's segment and (CUDA) each segment's memory rise; the order rotates."""
    timer, order = Timer(device), list(range(len(rows)))
    times: List[List[float]] = [[] for _ in rows]
    rises: List[List[int]] = [[] for _ in rows]
    for r in range(rounds):
        for i in order[r % len(order):] + order[:r % len(order)]:
            seconds, rise = timer.segment(trainers[i], rows[i], steps, trainers)
            times[i].append(seconds)
            if rise is not None:
                rises[i].append(rise)
    return times, rises


def measure(config: str, shape: Sequence[int], batch: int, device: torch.device, rows: Sequence[Variant], steps: int,
            rounds: int, warmup: int, seed: int, peaks: Dict[str, Optional[float]], log=print) -> Dict:
    """FLOPs of a step, then every variant warmed up and timed in ``rounds`` interleaved segments of ``steps`` steps."""
    torch.manual_seed(seed)
    net_cfg = net_config(config, tuple(shape))
    reference = build(net_cfg).to(device)
    initial = copy.deepcopy(reference.state_dict())
    data = synthetic_data(shape, max(4 * batch, 512), seed)
    flops = train_step_flops(ScoreModel(reference, VPSDE(), prediction="eps"), data.x[:batch].to(device))
    params = parameter_count(reference)
    del reference
    trainers, warm = warmed_up_trainers(rows, net_cfg, initial, data, batch, device, warmup, seed, log)
    times, rises = interleaved_segments(trainers, rows, device, steps, rounds)
    out = []
    for i, variant in enumerate(rows):
        median = statistics.median(times[i])
        flop_rate, peak = flops * steps / median, peaks[variant.precision]
        state = state_bytes(trainers[i]) if device.type == "cuda" else None
        out.append(Row(variant.name, variant.bf16, variant.channels_last, variant.compile, variant.tf32, warm[i],
                       batch * steps / median, statistics.median(b / a for a, b in zip(times[i], times[0])),
                       flop_rate / 1e12, None if peak is None else peak / 1e12,
                       None if peak is None else flop_rate / peak,
                       state + max(rises[i]) if state is not None else None, state))
    return {"rows": out, "flops_per_step": flops, "params": params}


# ----- entry point and report -----
def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    """Measure every variant and write the reports (torch's CPU thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _resolve(args: argparse.Namespace) -> Tuple[torch.device, str, Tuple[int, ...], int, int, int, int]:
    if args.device not in ("cpu", "cuda") and not str(args.device).startswith("cuda:"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    config = args.config or ("ddpmpp" if device.type == "cuda" else "tiny")
    if config not in CONFIGS:
        raise ValueError(f"--config must be one of {sorted(CONFIGS)}, got {config!r}")
    shape = tuple(args.shape) if args.shape else SHAPES[config]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--shape must be three positive integers C H W, got {list(shape)}")
    if args.quick:
        return device, config, shape, 8, 2, 2, 1
    return (device, config, shape, positive_int(args.batch, "--batch"), positive_int(args.steps, "--steps"),
            positive_int(args.rounds, "--rounds"), positive_int(args.warmup, "--warmup"))


def _run(args: argparse.Namespace, command: str, log) -> Dict:
    device, config, shape, batch, steps, rounds, warmup = _resolve(args)
    given = {p: getattr(args, f"peak_{p}_tflops") for p in PRECISIONS}
    name = device_name(device)
    peaks = peak_flops(name, **{p: None if v is None else positive(v, f"--peak-{p}-tflops") * 1e12 for p, v in given.items()})
    if device.type == "cuda" and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    from ._standalone import machine

    where = machine()  # before the timings: it records the load other processes put on the machine
    rows = variants(device, compile_on_cpu=args.compile)
    result = measure(config, shape, batch, device, rows, steps, rounds, warmup, args.seed, peaks, log)
    for r in result["rows"]:
        log(f"{r.variant:<44} {r.images_per_s:9.1f} img/s  speed-up {r.speedup:5.2f}  {r.tflop_per_s:8.3f} TFLOP/s"
            + (f"  MFU {100 * r.mfu:5.1f} %" if r.mfu is not None else "")
            + (f"  peak {r.peak_memory_bytes / 2**20:8.1f} MiB" if r.peak_memory_bytes is not None else ""))
    meta = {"command": command, "machine": where, "device": str(device), "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "config": config, "shape": list(shape),
            "batch": batch, "steps": steps, "rounds": rounds, "warmup": warmup, "params": result["params"],
            "flops_per_step": result["flops_per_step"], "peak_flops": peaks, "target_speedup": TARGET_SPEEDUP,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
            "compile_on_cpu": bool(args.compile) if device.type == "cpu" else None}
    report = {"meta": meta, "rows": [asdict(r) for r in result["rows"]]}
    out, stem = Path(args.out), file_stem(name)
    write_text(out / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    write_text(out / f"{stem}.md", markdown(report))
    log(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')}")
    return report


def _cell(value: Optional[float], fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _peaks_used(peaks: Dict[str, Optional[float]]) -> str:
    known = [f"{p} {peaks[p] / 1e12:g}" for p in PRECISIONS if peaks.get(p) is not None]
    if not known:
        return "no peak is known for this device, so no MFU (`--peak-fp32-tflops` gives one)."
    return "peaks used (TFLOP/s): " + ", ".join(known) + " (fp32 without tensor cores)."


def markdown(report: Dict) -> str:
    m = report["meta"]
    cuda = m["device"].startswith("cuda")
    lines = [
        f"# Training throughput: {m['config']} at {'×'.join(map(str, m['shape'][1:]))}×{m['shape'][0]}, {m['device_name']}",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (device {m['device']}, torch {m['torch']}"
        + (f", CUDA {m['cuda']}" if cuda else f", {m['threads']} thread(s)") + ").",
        "",
        f"The Trainer's `train_step` (dsm_loss, backward, clipping, AdamW, EMA) on the `{m['config']}` UNet "
        f"({m['params']:,} parameters), batch {m['batch']} of synthetic images; {m['warmup']} warm-up step(s) per variant",
        f"(compilation included; inductor's on-disk cache shortens a repeated compile) excluded, then {m['rounds']} "
        f"interleaved rounds of {m['steps']} steps per variant.",
        "Speed-up = median over rounds of the fp32-eager segment time / the variant's; images/s from the median segment.",
        f"Model FLOPs per step (forward + backward, FlopCounterMode): {m['flops_per_step'] / 1e9:.2f} GFLOP. MFU = achieved / "
        "the dense peak of the variant's precision; " + _peaks_used(m["peak_flops"]),
    ]
    if cuda:
        lines += ["The baseline is strict fp32 (TF32 off); the TF32 row is PyTorch's default for convolutions.",
                  "Peak memory: the variant's own state (weights, EMA, AdamW, data) + the largest rise of",
                  "`torch.cuda.max_memory_allocated` during its segments (all variants live side by side). "
                  f"cuDNN benchmark mode: {'on' if m['cudnn_benchmark'] else 'off'}."]
    else:
        lines += ["On CPU: bf16 autocast is CUDA-only in the Trainer (every row is fp32); no memory counter; "
                  + ("compile measured." if m["compile_on_cpu"] else
                     "torch.compile skipped (inductor's C++ build of the forward and backward graphs takes minutes on a "
                     "small CPU; `--compile` measures it)."),
                  "**GPU figures are missing here**: run `python -m sde_diffusion bench throughput --device cuda --config ddpmpp`.",
                  f"The target (speed-up ≥ {m['target_speedup']}) is for bf16 + compile + channels_last on a GPU."]
    lines += ["",
              "| variant | warm-up s | images/s | speed-up | TFLOP/s | MFU | peak memory MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        memory = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(f"| {r['variant']} | {r['warmup_s']:.1f} | {r['images_per_s']:.1f} | {r['speedup']:.2f} | "
                     f"{r['tflop_per_s']:.4g} | {_cell(mfu, '.1f') + (' %' if mfu is not None else '')} | {_cell(memory, '.0f')} |")
    target = next((r for r in report["rows"] if r["variant"] == TARGET.name), None)
    default = next((r for r in report["rows"] if r["tf32"]), None)
    if target:
        met = target["speedup"] >= m["target_speedup"]
        lines += ["", f"{TARGET.name}: speed-up {target['speedup']:.2f} over fp32 eager "
                      f"({'meets' if met else '**misses**'} the target ≥ {m['target_speedup']})"
                  + (f"; ≈ {target['speedup'] / default['speedup']:.2f} over the TF32 row." if default else ".")]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--config", default=None, help=f"UNet config, one of {sorted(CONFIGS)} (default: ddpmpp on cuda, tiny on cpu)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                        help="sample shape (default per config: tiny 1 8 8, small 1 28 28, ddpmpp 3 32 32)")
    parser.add_argument("--batch", type=int, default=128, help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed segment (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved segments per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="CPU: also time torch.compile (minutes of compilation)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="CUDA: torch.backends.cudnn.benchmark = True")
    for precision in PRECISIONS:
        parser.add_argument(f"--peak-{precision}-tflops", type=float, default=None,
                            help=f"the device's dense {precision} peak in TFLOP/s, if not in the table (or to override it)")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 8, 2 rounds of 2 steps, 1 warm-up step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench throughput")


if __name__ == "__main__":
    sys.exit(main())
